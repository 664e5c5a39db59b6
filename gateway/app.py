"""The public listener: a plain ASGI app, so the hot path is only what it must be.

Per request: normalise the path → route → identify the caller → weigh → (meter) →
forward → record. Everything it consults was built at start-up (`Runtime.routing`).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import MutableMapping
from typing import Any

import orjson

from gateway import accesslog
from gateway.billing.routes import build_billing_app
from gateway.caller import Caller
from gateway.errors import GatewayError, StoreUnavailable, problem_bytes
from gateway.identity.credentials import api_key_from_headers
from gateway.identity.forwarded import ClientInfo
from gateway.identity.registry import valid_name
from gateway.metering.charge import Charge
from gateway.metering.journal import JournalEntry
from gateway.metering.verdict import Decision
from gateway.proxy.forward import Outcome, Receive, Send, StreamAborted, UpstreamFailed, forward
from gateway.proxy.headers import Forwarding, has_body, request_headers
from gateway.proxy.paths import normalise_path
from gateway.runtime import Routing, Runtime
from gateway.selfservice.usage import usage_me

log = logging.getLogger("gateway")

Scope = dict[str, Any]

_ID_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")
_PROBLEM_HEADERS = [(b"content-type", b"application/problem+json")]
_HTTP_VERSIONS = {"1.0": b"1.0", "1.1": b"1.1", "2": b"2", "2.0": b"2"}


class GatewayApp:
    """The metering reverse proxy."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.metrics = runtime.metrics
        self.billing_app = build_billing_app(runtime)
        self._defer_settlement = runtime.defer_settlement  # (bound once, not per request)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            await _refuse_websocket(scope, send)
            return
        await self._handle(scope, receive, send)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        routing = self.runtime.routing  # one consistent view of the rules for this request
        method: str = scope["method"]
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        request_id, client_request_id = _request_id(headers)
        # The path as sent (until normalised): a refused %2F shows as sent, not decoded.
        raw_path = scope.get("raw_path") or scope["path"].encode()
        entry: dict[str, Any] = {"ts": time.time(), "id": request_id, "method": method,
                                 "path": raw_path.decode("latin-1")}
        route_name = upstream_name = "-"
        outcome: Outcome | None = None
        charge: Charge | None = None
        code = "OK"
        status = 0
        bytes_out = 0  # what the gateway answered itself (a proxied answer: the outcome's)
        self.metrics.in_flight.inc()
        try:
            path = normalise_path(raw_path)
            entry["path"] = path
            if path == "/usage/me":
                route_name = path
                status, bytes_out = await self._usage_me(routing, scope, headers, send,
                                                         entry)
                return
            if path.startswith("/billing/"):
                route_name = "/billing/"
                status, code, bytes_out = await self._billing(routing, scope, receive, send,
                                                              path, entry)
                return
            route = routing.rules.route_for(path)
            if route is None:
                raise GatewayError("NO_ROUTE", f"no route for {path}")
            route_name, upstream_name = route.name, route.upstream.name
            with_body = has_body(headers)  # before anything is charged: it may refuse
            client = _client(routing, scope, headers)
            caller = await self._identify(routing, client, headers)
            _log_caller(entry, caller, client)
            weight = routing.rules.weigh(method, path)
            # What a client's request id names: method, path and query (and the cost).
            query = scope.get("query_string", b"")
            charge = Charge(self.runtime.engine, self.metrics, routing.rules, routing.tables,
                            caller, weight, route_name, request_id,
                            f"{method} {path}?{query.decode('latin-1')}" if query
                            else f"{method} {path}", defer=self._defer_settlement)
            entry.update(meter=weight.meter.name, units=weight.upfront)
            extra = [(b"x-request-id", request_id.encode())]
            # Free unless it costs units or settles to what it used (reserve 0 + settle).
            if weight.upfront > 0 or weight.settle is not None:
                try:
                    decision = await charge.admit(client_request_id)
                except StoreUnavailable as failed:
                    decision = self._store_failed(charge, routing, failed)
                if not decision.admitted and decision.error is not None:
                    raise decision.error
                extra.extend(charge.response_headers())
                entry["account"] = decision.leg.account.scope if decision.leg else None
                if decision.shadow_code:
                    entry["shadow"] = decision.shadow_code
            target = routing.targets[route.upstream.name]
            fwd = _forwarding(client.trusted_peer, scope, headers)
            upstream_headers = request_headers(
                headers, routing.header_policies[route.upstream.name], fwd,
                caller.identity_headers(), request_id.encode(),
                plain_response=weight.reads_body,
                received=_HTTP_VERSIONS.get(scope.get("http_version", "1.1"), b"1.1"))
            t0 = time.perf_counter()
            # Whatever happens, the charge is closed once: refunded, settled or kept.
            try:
                outcome = await forward(
                    self.runtime.transport, target, scope, receive, send,
                    method=method, path=path, headers=upstream_headers,
                    with_body=with_body, extra_headers=extra,
                    observer=charge.observer,
                )
            except UpstreamFailed:
                await charge.close(None, upstream_failed=True)
                raise
            except StreamAborted as aborted:
                outcome = aborted.outcome
                await charge.close(outcome, upstream_failed=False)
                raise
            if charge.settles(outcome):
                await charge.close(outcome, upstream_failed=False)
            m = self.metrics
            m.upstream_latency.labels(target.name).observe(time.perf_counter() - t0)
            status = outcome.upstream_status
            if outcome.client_disconnected:
                code = "CLIENT_DISCONNECTED"
                self.metrics.client_disconnects.labels(route_name).inc()
        except UpstreamFailed as err:
            self.metrics.upstream_errors.labels(upstream_name, err.code).inc()
            code, status = err.code, err.status
            bytes_out = await _send_problem(send, err, request_id)
        except GatewayError as err:
            code, status = err.code, err.status
            bytes_out = await _send_problem(send, err, request_id)
        except StreamAborted as aborted:
            # Returning with the response unfinished makes the server drop the connection
            # (one log line of its own): a truncated body stays truncated.
            code, status = "UPSTREAM_ABORTED", aborted.outcome.upstream_status
            self.metrics.upstream_errors.labels(upstream_name, code).inc()
            log.warning("upstream %s broke off the response to request %s after %d bytes: "
                        "%s", upstream_name, request_id, aborted.outcome.bytes_out, aborted)
        except Exception:
            log.exception("unhandled error for request %s", request_id)
            code, status = "INTERNAL", 500
            internal = GatewayError("INTERNAL", "internal error; see the gateway log for "
                                    f"request {request_id}")
            bytes_out = await _send_problem(send, internal, request_id, best_effort=True)
        finally:
            self.metrics.in_flight.dec()
            elapsed = time.perf_counter() - started
            verdict = "admit" if code in ("OK", "CLIENT_DISCONNECTED") else "reject"
            m = self.metrics
            m.requests.labels(route_name, verdict, code).inc()
            m.request_latency.labels(route_name).observe(elapsed)
            if charge is not None and charge.settled_units is not None:
                entry["units"] = charge.settled_units  # settled or refunded: what it cost
            entry.update(route=route_name, status=status, code=code,
                         ms=round(elapsed * 1000, 3),
                         bytes_out=outcome.bytes_out if outcome else bytes_out)
            accesslog.record(entry)

    async def _usage_me(self, routing: Routing, scope: Scope,
                        headers: list[tuple[bytes, bytes]], send: Send,
                        entry: dict[str, Any]) -> tuple[int, int]:
        """GET /usage/me: (status, bytes sent)."""
        client = _client(routing, scope, headers)
        caller = await self._identify(routing, client, headers)
        _log_caller(entry, caller, client)
        if scope["method"] not in ("GET", "HEAD"):
            raise GatewayError("METHOD_NOT_ALLOWED", "use GET /usage/me",
                               headers={"Allow": "GET, HEAD"})
        body = orjson.dumps(await usage_me(self.runtime, caller))
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()), (b"cache-control", b"no-store")]})
        await send({"type": "http.response.body", "body": body, "more_body": False})
        return 200, len(body)

    async def _billing(self, routing: Routing, scope: Scope, receive: Receive, send: Send,
                       path: str, entry: dict[str, Any]) -> tuple[int, str, int]:
        """Hand /billing/* to the billing app: the caller identified first, except for
        Stripe's webhook (authenticated by its signature). Returns the status, the code
        (a problem's own, so the request metrics and the access log name the error) and
        the bytes sent."""
        inner: Scope = {**scope, "path": path, "raw_path": path.encode()}
        if path != "/billing/webhook":
            headers = scope["headers"]
            client = _client(routing, scope, headers)
            caller = inner["gateway.caller"] = await self._identify(routing, client, headers)
            _log_caller(entry, caller, client)
        status, sent = 0, 0
        problem: list[bytes] | None = None  # a problem response's body, for its code

        async def recorded(message: MutableMapping[str, Any]) -> None:
            nonlocal status, sent, problem
            if message["type"] == "http.response.start":
                status = message["status"]
                if status >= 400 and (b"content-type", b"application/problem+json") in [
                        (k.lower(), v) for k, v in message.get("headers", [])]:
                    problem = []
            elif message["type"] == "http.response.body":
                body = message.get("body", b"")
                sent += len(body)
                if problem is not None:
                    problem.append(body)
            await send(dict(message))

        await self.billing_app(inner, receive, recorded)
        return status, _problem_code(status, problem), sent

    def _store_failed(self, charge: Charge, routing: Routing, failed: StoreUnavailable
                      ) -> Decision:
        """The store did not answer the debit: fail open or closed, as the rules say."""
        if routing.rules.store_failure == "open":
            # Admit, and journal the usage for replay once Redis is back (SPEC §8).
            self.metrics.fail_open.labels("open").inc()
            caller = charge.caller
            self.runtime.journal.record(JournalEntry(
                rid=charge.request_id, user=caller.user, workspace=caller.workspace,
                key_id=caller.key_id, test=caller.test, meter=charge.weight.meter.name,
                units=charge.units, route=charge.route, ts_ms=int(time.time() * 1000)))
            self.metrics.journal_backlog.set(len(self.runtime.journal))
            return Decision(admitted=True, units=charge.units)
        self.metrics.fail_open.labels("closed").inc()
        raise failed

    async def _identify(
        self, routing: Routing, client: ClientInfo, headers: list[tuple[bytes, bytes]]
    ) -> Caller:
        secret = api_key_from_headers(headers, routing.key_headers)
        if secret is None:
            # No key: a trusted proxy may assert who the caller is.
            asserted = None
            if client.trusted_peer and routing.user_header is not None:
                asserted = routing.forwarded.trusted_identity(
                    client.peer_ip, headers, routing.user_header, routing.workspace_header)
            if asserted is None:
                raise GatewayError("UNAUTHENTICATED", "send an API key in "
                                   + " or ".join(routing.rules.identity.api_key_headers))
            # The ids the admin API and the CLI accept, or the operator could not look at,
            # comp or credit the account being charged.
            for asserted_id, header in ((asserted[0], routing.user_header),
                                        (asserted[1], routing.workspace_header)):
                if asserted_id is not None and not valid_name(asserted_id):
                    raise GatewayError("BAD_REQUEST", f"{(header or b'').decode()}: "
                                       f"{asserted_id[:64]!r} is not a valid id (1-128 of "
                                       "A-Z a-z 0-9 . _ : @ -)")
            return Caller(user=asserted[0], workspace=asserted[1], key_id=None)
        key = await self.runtime.key_cache.resolve(secret)
        if key is None:
            raise GatewayError("UNAUTHENTICATED", "unknown API key")
        if key.revoked:
            raise GatewayError("KEY_REVOKED", f"API key {key.id} was revoked")
        return Caller(user=key.user, workspace=key.workspace, key_id=key.id, role=key.role,
                      test=key.test, key_limit=key.limit, key_window_s=key.window_s)


def _client(routing: Routing, scope: Scope, headers: list[tuple[bytes, bytes]]) -> ClientInfo:
    """Who connected, and whether their forwarding headers are to be believed: once."""
    peer = scope.get("client")
    return routing.forwarded.client(peer[0] if peer else None, headers)


def _forwarding(trusted: bool, scope: Scope, headers: list[tuple[bytes, bytes]]) -> Forwarding:
    """The forwarding headers to send upstream (a trusted peer's are extended)."""
    peer = scope.get("client")
    peer_ip = peer[0] if peer else "unknown"
    prior_for = proto = fhost = host = None
    for name, value in headers:
        if name == b"host":
            host = value
        elif trusted and name == b"x-forwarded-for":
            prior_for = value if prior_for is None else prior_for + b", " + value
        elif trusted and name == b"x-forwarded-proto":
            # The hop nearest the client comes first; only a real scheme is believed.
            first = value.split(b",", 1)[0].strip().lower()
            proto = first.decode() if first in (b"http", b"https") else proto
        elif trusted and name == b"x-forwarded-host":
            fhost = value
    return Forwarding(client_ip=peer_ip, proto=proto or scope.get("scheme", "http"),
                      host=fhost or host, prior_for=prior_for, trusted=trusted)


def _request_id(headers: list[tuple[bytes, bytes]]) -> tuple[str, bool]:
    """The client's X-Request-Id (then retries are idempotent), else a fresh one."""
    for name, value in headers:
        if name == b"x-request-id" and 0 < len(value) <= 128 and _ID_CHARS.issuperset(value):
            return value.decode(), True
    return uuid.uuid4().hex, False


def _log_caller(entry: dict[str, Any], caller: Caller, client: ClientInfo) -> None:
    entry.update(user=caller.user, workspace=caller.workspace, key=caller.key_id,
                 client=client.ip)


def _problem_code(status: int, problem: list[bytes] | None) -> str:
    """The code of an answer the billing app sent: OK below 400, else the problem's."""
    if status < 400:
        return "OK"
    try:
        code = orjson.loads(b"".join(problem))["code"] if problem is not None else None
    except (orjson.JSONDecodeError, KeyError, TypeError):
        code = None
    return code if isinstance(code, str) and code else f"HTTP_{status}"


async def _send_problem(
    send: Send, err: GatewayError, request_id: str, best_effort: bool = False
) -> int:
    """Answer with `err` as problem+json; returns the bytes of the body sent."""
    body = problem_bytes(err)
    headers = [*_PROBLEM_HEADERS, (b"content-length", str(len(body)).encode()),
               (b"x-request-id", request_id.encode())]
    headers.extend((k.lower().encode(), v.encode()) for k, v in err.headers.items())
    try:
        await send({"type": "http.response.start", "status": err.status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})
    except Exception:
        if not best_effort:
            raise
        # The response had already started; the server will close the connection.
        log.debug("could not send problem response", exc_info=True)
        return 0
    return len(body)


async def _refuse_websocket(scope: Scope, send: Send) -> None:
    """WebSocket upgrades are not proxied: a problem+json 501 where the server can send
    an HTTP answer to an upgrade, else a close."""
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1003})
        return
    body = problem_bytes(GatewayError("UPGRADE_NOT_SUPPORTED", "the gateway does not proxy "
                                      "WebSocket connections"))
    await send({"type": "websocket.http.response.start", "status": 501, "headers": [
        *_PROBLEM_HEADERS, (b"content-length", str(len(body)).encode())]})
    await send({"type": "websocket.http.response.body", "body": body, "more_body": False})


async def _lifespan(receive: Receive, send: Send) -> None:
    # Resources are owned by the server (gateway.server), not by the ASGI lifespan.
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
