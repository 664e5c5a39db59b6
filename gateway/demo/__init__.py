"""`gateway demo`: a built-in demo upstream and the command that runs the gateway before it."""
