"""API keys in the store, found by the hash of their secret.

Layout (the secret itself is never written):

    gw:key:h:<sha256>   hash  id, user, workspace, role, test, revoked, created, limit, window
    gw:key:id:<id>      string → <sha256>   (admin operations address keys by id)
    gw:keys             set of ids          (listing)

The hot path needs one command, `HGETALL gw:key:h:<sha256>`. Revoked keys keep their
record (revoked=1) so a client can be told `KEY_REVOKED` rather than "unknown key".

Creation writes three keys: one MULTI/EXEC on a single Redis. Redis Cluster cannot run a
transaction across slots, so there the writes go in an order that is safe if interrupted:
the record first and the listing index last, so a half-made key is at worst an unlisted
record nobody holds the secret for. Revocation writes one field of one hash.
"""

from __future__ import annotations

import builtins
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from gateway.errors import GatewayError
from gateway.identity.keys import ROLES, ApiKey, generate_secret, hash_secret, key_id
from gateway.store import Store

RECORD_PREFIX = "gw:key:h:"
ID_PREFIX = "gw:key:id:"
INDEX = "gw:keys"

_NAME = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
_KEY_ID = re.compile(r"key_[0-9a-f]{16}")
# A key's own throughput limit: units per window, as the rules' windows allow.
MAX_KEY_LIMIT = 2**53 - 1
MAX_KEY_WINDOW_S = 366 * 86_400


def valid_name(value: object) -> bool:
    """Whether `value` is an acceptable user or workspace id (1-128 of `[A-Za-z0-9._:@-]`)."""
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


class KeyRegistry:
    """Create, list, revoke and look up API keys in a `Store`."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self._clock = clock

    async def create(
        self,
        user: str,
        workspace: str | None = None,
        role: str = "member",
        test: bool = False,
        limit: int | None = None,
        window_s: int | None = None,
    ) -> tuple[ApiKey, str]:
        """Store a new key; return it and its secret (the only time the secret exists).

        Raises GatewayError BAD_REQUEST on invalid input.
        """
        _validate(user, workspace, role, test, limit, window_s)
        secret = generate_secret(test)
        digest = hash_secret(secret)
        key = ApiKey(id=key_id(), user=user, workspace=workspace, role=role, test=test,
                     revoked=False, created_at=int(self._clock()), limit=limit,
                     window_s=window_s)
        record = _encode(key)
        client = self.store.client
        if self.store.cluster:
            await self.store.call(client.hset(RECORD_PREFIX + digest, mapping=record))
            await self.store.call(client.set(ID_PREFIX + key.id, digest))
            await self.store.call(client.sadd(INDEX, key.id))
        else:
            async with client.pipeline(transaction=True) as pipe:
                pipe.hset(RECORD_PREFIX + digest, mapping=record)
                pipe.set(ID_PREFIX + key.id, digest)
                pipe.sadd(INDEX, key.id)
                await self.store.call(pipe.execute())
        return key, secret

    async def lookup(self, secret: str) -> ApiKey | None:
        """The key with this secret (also when revoked: check `.revoked`), or None."""
        return await self.lookup_digest(hash_secret(secret))

    async def lookup_digest(self, digest: str) -> ApiKey | None:
        """The key whose secret hashes to `digest`, or None. One store round trip."""
        raw = await self.store.read(lambda: self.store.client.hgetall(RECORD_PREFIX + digest))
        return _decode(raw) if raw else None

    async def get(self, id: str) -> ApiKey | None:
        """The key with this id, or None."""
        digest = await self._digest_of(id)
        return await self.lookup_digest(digest) if digest else None

    async def list(self) -> builtins.list[ApiKey]:
        """All keys (revoked ones included), oldest first."""
        client = self.store.client
        ids = sorted(_text(i) for i in await self.store.call(client.smembers(INDEX)))
        if not ids:
            return []
        # Non-transactional pipelines batch reads on a single Redis and on a Cluster alike.
        async with client.pipeline(transaction=False) as pipe:
            for id_ in ids:
                pipe.get(ID_PREFIX + id_)
            digests = await self.store.call(pipe.execute())
        found = [_text(d) for d in digests if d]
        async with client.pipeline(transaction=False) as pipe:
            for digest in found:
                pipe.hgetall(RECORD_PREFIX + digest)
            records = await self.store.call(pipe.execute())
        keys = [_decode(r) for r in records if r]
        return sorted(keys, key=lambda k: (k.created_at, k.id))

    async def revoke(self, id: str) -> bool:
        """Mark the key revoked; False if there is no such key. Idempotent.

        Caches elsewhere keep the old record for at most their TTL (see KeyCache).
        """
        digest = await self._digest_of(id)
        if digest is None:
            return False
        # The id index is written after the record, so the record exists: HSET cannot
        # create a partial one here.
        await self.store.call(self.store.client.hset(RECORD_PREFIX + digest, "revoked", "1"))
        return True

    async def _digest_of(self, id: str) -> str | None:
        if _KEY_ID.fullmatch(id) is None:
            return None  # not one of our ids: no need to ask the store
        raw = await self.store.call(self.store.client.get(ID_PREFIX + id))
        return _text(raw) if raw else None


def _validate(
    user: object, workspace: object, role: object, test: object, limit: object,
    window_s: object,
) -> None:
    if not valid_name(user):
        raise GatewayError("BAD_REQUEST", "user must be 1-128 characters of A-Z a-z 0-9 . _ : @ -")
    if workspace is not None and not valid_name(workspace):
        raise GatewayError("BAD_REQUEST",
                           "workspace must be 1-128 characters of A-Z a-z 0-9 . _ : @ -")
    if role not in ROLES:
        raise GatewayError("BAD_REQUEST", f"role must be one of {', '.join(ROLES)}")
    if not isinstance(test, bool):
        raise GatewayError("BAD_REQUEST", "test must be true or false")
    if (limit is None) != (window_s is None):
        raise GatewayError("BAD_REQUEST", "limit and window_s go together: give both or neither")
    for name, value, most in (("limit", limit, MAX_KEY_LIMIT),
                              ("window_s", window_s, MAX_KEY_WINDOW_S)):
        if value is not None and (type(value) is not int or not 0 < value <= most):
            raise GatewayError("BAD_REQUEST", f"{name} must be an integer from 1 to {most}")


def _encode(key: ApiKey) -> dict[str, str]:
    # Redis hashes hold strings: "" stands for None, "1"/"0" for booleans.
    return {
        "id": key.id,
        "user": key.user,
        "workspace": key.workspace or "",
        "role": key.role,
        "test": "1" if key.test else "0",
        "revoked": "1" if key.revoked else "0",
        "created": str(key.created_at),
        "limit": "" if key.limit is None else str(key.limit),
        "window": "" if key.window_s is None else str(key.window_s),
    }


def _decode(raw: Mapping[Any, Any]) -> ApiKey:
    f = {_text(k): _text(v) for k, v in raw.items()}
    return ApiKey(
        id=f["id"],
        user=f["user"],
        workspace=f.get("workspace") or None,
        role=f.get("role") or "member",
        test=f.get("test") == "1",
        revoked=f.get("revoked") == "1",
        created_at=int(f.get("created") or 0),
        limit=int(f["limit"]) if f.get("limit") else None,
        window_s=int(f["window"]) if f.get("window") else None,
    )


def _text(value: bytes | str) -> str:
    # The client may or may not decode responses; accept both.
    return value.decode() if isinstance(value, bytes) else value
