"""KeyRegistry against a real Redis and the embedded store (the `store` fixture)."""

from __future__ import annotations

import pytest

from gateway.errors import GatewayError
from gateway.identity.keys import generate_secret
from gateway.identity.registry import KeyRegistry
from gateway.store import Store


async def test_create_lookup_list_revoke_round_trip(store: Store) -> None:
    registry = KeyRegistry(store)
    ann, ann_secret = await registry.create(user="ann", workspace="acme", role="billing",
                                            limit=10, window_s=60)
    bob, bob_secret = await registry.create(user="bob")

    found = await registry.lookup(ann_secret)
    assert found == ann
    assert (found.user, found.workspace, found.role, found.limit, found.window_s) == (
        "ann", "acme", "billing", 10, 60)
    assert not found.revoked and not found.test
    assert await registry.lookup(bob_secret) == bob
    assert bob.workspace is None and bob.role == "member" and bob.limit is None
    assert await registry.get(ann.id) == ann

    assert [k.id for k in await registry.list()] == sorted(
        [ann.id, bob.id], key=lambda i: (ann.created_at if i == ann.id else bob.created_at, i))

    assert await registry.revoke(ann.id) is True
    revoked = await registry.lookup(ann_secret)
    assert revoked is not None and revoked.revoked and revoked.id == ann.id
    assert (await registry.get(ann.id)).revoked  # type: ignore[union-attr]
    assert await registry.revoke(ann.id) is True  # idempotent
    assert {k.id: k.revoked for k in await registry.list()} == {ann.id: True, bob.id: False}
    assert (await registry.lookup(bob_secret)) == bob


async def test_list_is_sorted_by_creation_time(store: Store) -> None:
    times = iter([300.0, 100.0, 200.0])
    registry = KeyRegistry(store, clock=lambda: next(times))
    made = [(await registry.create(user=f"u{i}"))[0] for i in range(3)]
    listed = await registry.list()
    assert [k.created_at for k in listed] == [100, 200, 300]
    assert [k.id for k in listed] == [made[1].id, made[2].id, made[0].id]


async def test_unknown_keys(store: Store) -> None:
    registry = KeyRegistry(store)
    assert await registry.lookup(generate_secret()) is None
    assert await registry.get("key_0000000000000000") is None
    assert await registry.get("not-an-id") is None
    assert await registry.revoke("key_0000000000000000") is False
    assert await registry.revoke("../../etc") is False
    assert await registry.list() == []
    assert await store.client.keys("*") == []  # revoking nothing wrote nothing


async def test_test_keys_are_flagged(store: Store) -> None:
    registry = KeyRegistry(store)
    key, secret = await registry.create(user="dev", test=True)
    assert secret.startswith("gw_test_") and key.test
    assert (await registry.lookup(secret)).test  # type: ignore[union-attr]
    live, live_secret = await registry.create(user="dev")
    assert live_secret.startswith("gw_live_") and not live.test


async def test_the_secret_is_never_stored(store: Store) -> None:
    registry = KeyRegistry(store)
    secrets = [(await registry.create(user="ann", workspace="w", test=t))[1]
               for t in (False, True)]
    dump: list[bytes] = []
    async for name in store.client.scan_iter("*"):
        dump.append(name)
        kind = (await store.client.type(name)).decode()
        if kind == "hash":
            for k, v in (await store.client.hgetall(name)).items():
                dump += [k, v]
        elif kind == "string":
            dump.append(await store.client.get(name))
        elif kind == "set":
            dump += list(await store.client.smembers(name))
        else:
            pytest.fail(f"unexpected key type {kind} for {name!r}")
    assert len(dump) > 10
    blob = b"\n".join(dump)
    for secret in secrets:
        body = secret.split("_", 2)[2].encode()
        assert secret.encode() not in blob and body not in blob


@pytest.mark.parametrize(("kwargs", "complaint"), [
    ({"user": ""}, "user"),
    ({"user": "x" * 129}, "user"),
    ({"user": "a b"}, "user"),
    ({"user": "a/b"}, "user"),
    ({"user": "ok", "workspace": ""}, "workspace"),
    ({"user": "ok", "workspace": "w\n"}, "workspace"),
    ({"user": "ok", "role": "admin"}, "role"),
    ({"user": "ok", "limit": 10}, "limit"),
    ({"user": "ok", "window_s": 10}, "limit"),
    ({"user": "ok", "limit": 0, "window_s": 10}, "limit"),
    ({"user": "ok", "limit": 5, "window_s": -1}, "window_s"),
    ({"user": "ok", "limit": True, "window_s": 1}, "limit"),
    ({"user": "ok", "limit": 1.5, "window_s": 1}, "limit"),
])
async def test_invalid_input_is_bad_request(
    store: Store, kwargs: dict[str, object], complaint: str
) -> None:
    with pytest.raises(GatewayError) as info:
        await KeyRegistry(store).create(**kwargs)  # type: ignore[arg-type]
    assert info.value.code == "BAD_REQUEST" and complaint in info.value.detail
    assert await store.client.keys("*") == []


async def test_accepted_names(store: Store) -> None:
    registry = KeyRegistry(store)
    key, _ = await registry.create(user="a.b_c:d@e-f" + "x" * 117, workspace="W9")
    assert len(key.user) == 128
    assert (await registry.get(key.id)) == key


async def test_cluster_mode_writes_without_transactions(store: Store) -> None:
    # Cluster can't MULTI across slots; the sequential path must give the same result.
    store.cluster = True
    registry = KeyRegistry(store)
    key, secret = await registry.create(user="ann", workspace="w", limit=3, window_s=9)
    assert await registry.lookup(secret) == key
    assert [k.id for k in await registry.list()] == [key.id]
    assert await registry.revoke(key.id)
    assert (await registry.lookup(secret)).revoked  # type: ignore[union-attr]
