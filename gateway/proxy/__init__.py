"""The reverse proxy: path normalisation, headers, upstream transport, forwarding."""
