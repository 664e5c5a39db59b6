"""`gateway keys …` implementations, on both stores."""

from __future__ import annotations

import io

import orjson

from gateway.identity.commands import keys_create, keys_list, keys_revoke
from gateway.identity.registry import KeyRegistry
from gateway.store import Store


async def test_create_json_then_list_and_revoke(store: Store) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert await keys_create(store, user="ann", workspace="acme", role="billing", test=True,
                             as_json=True, out=out, err=err) == 0
    made = orjson.loads(out.getvalue())
    assert made["key"].startswith("gw_test_") and made["id"].startswith("key_")
    assert (made["user"], made["workspace"], made["role"], made["test"]) == (
        "ann", "acme", "billing", True)
    assert (await KeyRegistry(store).lookup(made["key"])).id == made["id"]  # type: ignore[union-attr]

    out = io.StringIO()
    assert await keys_list(store, as_json=True, out=out) == 0
    listed = orjson.loads(out.getvalue())["keys"]
    assert [k["id"] for k in listed] == [made["id"]]
    assert made["key"] not in out.getvalue()

    out = io.StringIO()
    assert await keys_revoke(store, made["id"], out=out, err=err) == 0
    assert made["id"] in out.getvalue()
    out = io.StringIO()
    await keys_list(store, out=out)
    assert "revoked" in out.getvalue() and "ann in acme" in out.getvalue()


async def test_create_friendly_output(store: Store) -> None:
    out = io.StringIO()
    assert await keys_create(store, user="bob", out=out) == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert "live key key_" in lines[0] and "bob" in lines[0]
    secret = lines[1].rsplit(" ", 1)[1]
    assert secret.startswith("gw_live_")
    assert await KeyRegistry(store).lookup(secret) is not None


async def test_bad_input_and_unknown_id_exit_1(store: Store) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert await keys_create(store, user="a b", out=out, err=err) == 1
    assert "--user must be" in err.getvalue() and out.getvalue() == ""
    # The command line's option names, not the admin API's fields (window_s).
    err = io.StringIO()
    assert await keys_create(store, user="bob", limit=5, out=out, err=err) == 1
    assert "--limit and --window go together" in err.getvalue()
    err = io.StringIO()
    assert await keys_create(store, user="bob", limit=5, window_s=10**9, out=out, err=err) == 1
    assert "--window must be an integer from 1 to" in err.getvalue()
    err = io.StringIO()
    assert await keys_revoke(store, "key_0000000000000000", out=out, err=err) == 1
    assert "no key" in err.getvalue()


async def test_empty_list(store: Store) -> None:
    out = io.StringIO()
    assert await keys_list(store, out=out) == 0
    assert out.getvalue() == "No keys.\n"
