"""Identity: who is calling.

- `keys`        — the `ApiKey` record, secret generation and hashing (pure)
- `registry`    — keys stored in Redis by the hash of their secret
- `cache`       — the in-process cache the hot path resolves keys through
- `credentials` — the API key a request carries, from its raw headers (pure)
- `forwarded`   — the client address and trusted identity headers behind proxies (pure)
- `commands`    — `gateway keys create|list|revoke`
"""
