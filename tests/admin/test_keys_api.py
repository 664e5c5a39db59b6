"""/admin/keys through a small Starlette app over real ASGI (httpx.ASGITransport)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from starlette.applications import Starlette

from gateway.admin.keys import key_routes
from gateway.identity.registry import KeyRegistry
from gateway.store import Store
from tests.gateway_harness import ADMIN_TOKEN, BASE_RULES, running_gateway

TOKEN = "s3cret-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

def admin_app(store: Store, token: str | None) -> Starlette:
    app = Starlette(routes=key_routes())
    app.state.registry = KeyRegistry(store)
    app.state.admin_token = token
    return app


@asynccontextmanager
async def admin_client(store: Store, token: str | None = TOKEN) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=admin_app(store, token))
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as c:
        yield c


async def test_without_a_configured_token_everything_is_forbidden(store: Store) -> None:
    async with admin_client(store, token=None) as c:
        for r in (await c.get("/admin/keys", headers=AUTH),
                  await c.post("/admin/keys", json={"user": "ann"}, headers=AUTH),
                  await c.delete("/admin/keys/key_0000000000000000"),
                  await c.get("/admin/keys", headers={"Authorization": "Bearer "})):
            assert r.status_code == 403
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["code"] == "FORBIDDEN"
            assert "GATEWAY_ADMIN_TOKEN" in r.json()["detail"]
    assert await store.client.keys("*") == []


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
    {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": f"Bearer {TOKEN[:-1]}"},
    {"X-Api-Key": TOKEN},
])
async def test_missing_or_wrong_token_is_401(store: Store, headers: dict[str, str]) -> None:
    async with admin_client(store) as c:
        r = await c.post("/admin/keys", json={"user": "ann"}, headers=headers)
        listed = await c.get("/admin/keys", headers=headers)
    assert r.status_code == 401 and r.json()["code"] == "UNAUTHENTICATED"
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert listed.status_code == 401
    assert await store.client.keys("*") == []


async def test_create_list_revoke(store: Store) -> None:
    async with admin_client(store) as c:
        r = await c.post("/admin/keys", headers=AUTH, json={
            "user": "ann", "workspace": "acme", "role": "billing", "test": True,
            "limit": 100, "window_s": 60})
        assert r.status_code == 201
        assert r.headers["content-type"] == "application/json"
        made = r.json()
        assert made["key"].startswith("gw_test_")
        assert {k: made[k] for k in ("user", "workspace", "role", "test")} == {
            "user": "ann", "workspace": "acme", "role": "billing", "test": True}
        assert isinstance(made["created_at"], int) and made["id"].startswith("key_")

        minimal = (await c.post("/admin/keys", headers=AUTH, json={"user": "bob"})).json()
        assert (minimal["workspace"], minimal["role"], minimal["test"]) == (None, "member",
                                                                            False)
        assert minimal["key"].startswith("gw_live_")

        r = await c.get("/admin/keys", headers=AUTH)
        assert r.status_code == 200
        keys = r.json()["keys"]
        assert {k["id"] for k in keys} == {made["id"], minimal["id"]}
        assert made["key"] not in r.text and minimal["key"] not in r.text
        assert all("key" not in k for k in keys)

        r = await c.delete(f"/admin/keys/{made['id']}", headers=AUTH)
        assert (r.status_code, r.json()) == (200, {"id": made["id"], "revoked": True})
        found = await KeyRegistry(store).lookup(made["key"])
        assert found is not None and found.revoked

        r = await c.delete("/admin/keys/key_0000000000000000", headers=AUTH)
        assert r.status_code == 404 and r.json()["code"] == "NOT_FOUND"
        r = await c.delete("/admin/keys/whatever", headers=AUTH)
        assert r.status_code == 404


@pytest.mark.parametrize("body", [
    b"{not json", b"", b"[]", b'"ann"', b"null",
    b'{"workspace": "w"}',                       # user missing
    b'{"user": 5}', b'{"user": "ann", "test": "yes"}', b'{"user": "ann", "role": 1}',
    b'{"user": "ann", "limit": true, "window_s": 5}',
    b'{"user": "ann", "limit": 1.5, "window_s": 5}',
    b'{"user": "ann", "limit": 5}',              # window_s missing
    b'{"user": "ann", "role": "owner"}',
    b'{"user": "a b"}',
    b'{"user": "ann", "plan": "pro"}',           # unknown field
    b'{"user": "ann", "user": "bob"}',           # a field twice
])
async def test_bad_bodies_are_400(store: Store, body: bytes) -> None:
    async with admin_client(store) as c:
        r = await c.post("/admin/keys", headers={**AUTH, "Content-Type": "application/json"},
                         content=body)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["code"] == "BAD_REQUEST" and problem["status"] == 400 and problem["detail"]
    assert await store.client.keys("*") == []


async def test_oversized_body_is_refused(store: Store) -> None:
    async with admin_client(store) as c:
        r = await c.post("/admin/keys", headers=AUTH,
                         content=b'{"user": "' + b"a" * 20_000 + b'"}')
    assert r.status_code == 413


async def test_unknown_field_is_named(store: Store) -> None:
    async with admin_client(store) as c:
        r = await c.post("/admin/keys", headers=AUTH, json={"user": "ann", "usr": "x"})
    assert "usr" in r.json()["detail"]


async def test_the_admin_listener_answers_a_trailing_slash_without_a_redirect(
        store_url: str | None) -> None:
    rules = BASE_RULES.format(upstream="http://127.0.0.1:9", timeout="1s")
    async with running_gateway(rules, store_url) as gw, \
            httpx.AsyncClient(base_url=gw.admin_url) as c:
        r = await c.delete("/admin/keys/")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"


async def test_a_wrong_method_says_which_are_allowed(store_url: str | None) -> None:
    rules = BASE_RULES.format(upstream="http://127.0.0.1:9", timeout="1s")
    async with running_gateway(rules, store_url) as gw, \
            httpx.AsyncClient(base_url=gw.admin_url) as c:
        r = await c.put("/admin/keys")
        gw_auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        sub = await c.get("/admin/subscriptions/user/ann", headers=gw_auth)
        listed = await c.head("/admin/keys", headers=gw_auth)
    assert (r.status_code, r.json()["code"]) == (405, "METHOD_NOT_ALLOWED")
    # Every method that serves the path, not only the first route's.
    assert set(r.headers["allow"].split(", ")) == {"GET", "HEAD", "POST"}
    assert sub.status_code == 405
    assert set(sub.headers["allow"].split(", ")) == {"PUT", "DELETE"}
    assert listed.status_code == 200 and listed.content == b""
