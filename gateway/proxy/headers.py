"""Header rewriting for both directions of the proxy (RFC 9110 §7.6).

Pure functions over ASGI raw header lists: hop-by-hop headers (the fixed set plus every
name listed in `Connection`) never cross the proxy; forwarding headers are added; the
gateway's own credential and identity headers are replaced so a client can neither leak
its gateway key to the backend nor spoof who it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateway.errors import GatewayError
from gateway.identity.credentials import bearer_token

RawHeaders = Sequence[tuple[bytes, bytes]]

HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
    b"trailer", b"transfer-encoding", b"upgrade", b"proxy-connection",
})
# Answered at this hop: the server sends the client its 100 Continue when the body is
# read; passed on, it made the upstream client wait for a 100 that an upstream may
# never send.
REQUEST_ONLY_HOP = frozenset({b"expect"})
FORWARDING = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})
# Other claims about the client hop: passed on only from a trusted peer.
CLAIMED = frozenset({b"forwarded", b"x-real-ip"})
VIA_TOKEN = b"1.1 gateway"

# Identity the gateway asserts to the backend; whatever the client sent is dropped.
IDENTITY_OUT = (b"x-gateway-user", b"x-gateway-workspace", b"x-gateway-key-id")


def connection_listed(headers: RawHeaders) -> frozenset[bytes]:
    """Names listed in Connection headers: hop-by-hop for this one message."""
    names: set[bytes] = set()
    for name, value in headers:
        # Upstream responses keep their own spelling (`Connection`); ASGI's are lower-case.
        if len(name) == 10 and name.lower() == b"connection":
            names.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return frozenset(names)


@dataclass(frozen=True, slots=True)
class Forwarding:
    """What the proxy knows about the client hop, after deciding what to believe."""

    client_ip: str
    proto: str
    host: bytes | None
    prior_for: bytes | None  # X-Forwarded-For from a trusted peer, else None
    trusted: bool = False    # the peer is a trusted proxy (its other claims pass on)


@dataclass(frozen=True, slots=True)
class UpstreamHeaderPolicy:
    """Per-route settings, computed once at start-up."""

    host: bytes                      # Host header for the upstream
    drop: frozenset[bytes]           # the gateway's own credential headers (api_key_headers)


def request_headers(
    headers: RawHeaders,
    policy: UpstreamHeaderPolicy,
    fwd: Forwarding,
    identity: Iterable[tuple[bytes, bytes]] = (),
    request_id: bytes | None = None,
    plain_response: bool = False,
    received: bytes = b"1.1",
) -> list[tuple[bytes, bytes]]:
    """Headers to send upstream for a client request; `request_id` replaces whatever
    X-Request-Id the client sent (it is the client's own when that one was valid).

    `plain_response`: the gateway reads the response (usage to settle on, the model), so
    the client's Accept-Encoding is not passed on and the upstream answers uncompressed
    (always acceptable to the client); a compressed body cannot be read as it streams.
    """
    listed = connection_listed(headers)
    out: list[tuple[bytes, bytes]] = [(b"host", policy.host)]
    via: list[bytes] = []
    for name, value in headers:
        if (
            name in HOP_BY_HOP or name in REQUEST_ONLY_HOP or name in listed or name == b"host"
            or name in FORWARDING
            or name in IDENTITY_OUT or (name in CLAIMED and not fwd.trusted)
            or (name == b"x-request-id" and request_id is not None)
            or (plain_response and name == b"accept-encoding")
        ):
            continue
        # The gateway's key stays here (parsed as the gateway parses it, so no spelling
        # of "Bearer <gw key>" slips through). Other Authorization schemes (Basic, a
        # backend's own token) belong to the backend and pass through.
        if name in policy.drop and (name != b"authorization"
                                    or (bearer_token(value) or b"").startswith(b"gw_")):
            continue
        if name == b"via":
            via.append(value)
            continue
        out.append((name, value))
    client = fwd.client_ip.encode("latin-1")
    out.append((b"x-forwarded-for", fwd.prior_for + b", " + client if fwd.prior_for else client))
    out.append((b"x-forwarded-proto", fwd.proto.encode("latin-1")))
    if fwd.host is not None:
        out.append((b"x-forwarded-host", fwd.host))
    # Via names the protocol this hop received (RFC 9110 §7.6.3): an HTTP/1.0 client's.
    via.append(VIA_TOKEN if received == b"1.1" else received + b" gateway")
    out.append((b"via", b", ".join(via)))
    out.extend(identity)
    if request_id is not None:
        out.append((b"x-request-id", request_id))
    return out


def response_headers(headers: RawHeaders) -> list[tuple[bytes, bytes]]:
    """Headers to send back to the client from an upstream response."""
    listed = connection_listed(headers)
    out: list[tuple[bytes, bytes]] = []
    via: list[bytes] = []
    for name, value in headers:
        lname = name.lower()
        if lname in HOP_BY_HOP or lname in listed:
            continue
        if lname == b"via":
            via.append(value)
            continue
        out.append((lname, value))
    via.append(VIA_TOKEN)
    out.append((b"via", b", ".join(via)))
    return out


def has_body(headers: RawHeaders) -> bool:
    """Whether a request carries a body: a non-zero Content-Length or a Transfer-Encoding.

    Only `chunked` is understood (the server has decoded it): a body under another coding
    (`gzip, chunked`) would reach the backend still coded yet unlabelled, so it is refused
    with 501 (RFC 9112 §6.1).
    """
    for name, value in headers:
        if name == b"transfer-encoding":
            if value.strip().lower() != b"chunked":
                raise GatewayError("UNSUPPORTED_TRANSFER_CODING", "only the chunked "
                                   "transfer coding is supported in requests")
            return True
        if name == b"content-length":
            return value.strip() not in (b"0", b"")
    return False
