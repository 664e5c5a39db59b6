"""The store: Redis (single, Cluster or Sentinel) or the embedded in-process store.

Both run the same Lua scripts; the rest of the gateway sees only `Store`.
"""

from gateway.store.connect import Store, open_store

__all__ = ["Store", "open_store"]
