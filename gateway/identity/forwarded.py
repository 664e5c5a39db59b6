"""Who the client is when the gateway sits behind proxies (as uvicorn's proxy_headers.py).

`X-Forwarded-For`, `-Proto` and `-Host` (and the trusted identity headers) are believed
only when the direct peer is one of the configured proxy networks: anyone else could
write them. `X-Forwarded-For` is then read right to left, skipping hops that are
themselves trusted proxies; the first untrusted address is the client. If every hop is
trusted, the leftmost is the best we know.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Headers = Sequence[tuple[bytes, bytes]]

_PROTOS = frozenset({"http", "https", "ws", "wss"})


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """The client as far as the gateway can tell."""

    ip: str                 # "unknown" when the server gave no peer (e.g. a unix socket)
    proto: str | None       # from X-Forwarded-Proto, trusted peers only
    host: str | None        # from X-Forwarded-Host, trusted peers only
    trusted_peer: bool      # the direct peer is a configured proxy
    peer_ip: str | None = None  # the direct peer (the proxy, when trusted)


class ForwardedFor:
    """Trusted proxy networks, parsed once; answers per request without set-up."""

    def __init__(self, trusted: Iterable[Network | str]) -> None:
        self.networks: tuple[Network, ...] = tuple(
            ipaddress.ip_network(n, strict=False) if isinstance(n, str) else n
            for n in trusted)
        # Peers repeat (the load balancer, a few proxies): remember the verdicts.
        self._check = lru_cache(maxsize=4096)(self._is_trusted_uncached)

    def is_trusted(self, ip: str | None) -> bool:
        """Whether `ip` (a peer or a hop) belongs to a trusted proxy network."""
        if not ip or not self.networks:
            return False
        return self._check(ip)

    def client(self, peer_ip: str | None, headers: Headers) -> ClientInfo:
        """The client address, protocol and host for a request from `peer_ip`."""
        if not self.is_trusted(peer_ip):
            return ClientInfo(peer_ip or "unknown", None, None, False, peer_ip)
        xff: list[bytes] = []
        proto = host = None
        for name, value in headers:
            if name == b"x-forwarded-for":
                xff.append(value)  # repeated headers are one list, in order
            elif name == b"x-forwarded-proto":
                proto = _first(value).lower()
            elif name == b"x-forwarded-host":
                host = _first(value)
        ip = self._client_from_xff(b",".join(xff)) if xff else None
        return ClientInfo(
            ip or peer_ip or "unknown",
            proto if proto in _PROTOS else None,
            host or None,
            True,
            peer_ip,
        )

    def trusted_identity(
        self,
        peer_ip: str | None,
        headers: Headers,
        user_header: bytes,
        workspace_header: bytes | None = None,
    ) -> tuple[str, str | None] | None:
        """(user, workspace) asserted by a trusted proxy in the given lower-case headers.

        None when the peer is not trusted, the user header is absent or empty, or either
        header is repeated (ambiguous: the proxy should have replaced the client's copy).
        """
        if not self.is_trusted(peer_ip):
            return None
        users: list[bytes] = []
        workspaces: list[bytes] = []
        for name, value in headers:
            if name == user_header:
                users.append(value)
            elif workspace_header is not None and name == workspace_header:
                workspaces.append(value)
        if len(users) != 1 or len(workspaces) > 1:
            return None
        user = users[0].decode("latin-1").strip()
        workspace = workspaces[0].decode("latin-1").strip() if workspaces else ""
        return (user, workspace or None) if user else None

    def _client_from_xff(self, value: bytes) -> str | None:
        hops = [h for h in (_strip_port(p.strip().decode("latin-1"))
                            for p in value.split(b",")) if h]
        for hop in reversed(hops):
            if not self.is_trusted(hop):
                return hop
        return hops[0] if hops else None

    def _is_trusted_uncached(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False  # not an address (garbage in a header): never a proxy
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1 on a dual-stack socket
        return any(addr in net for net in self.networks)


def _first(value: bytes) -> str:
    # Chained proxies may append: "https, http" — the leftmost is what the client used.
    return value.split(b",", 1)[0].strip().decode("latin-1")


def _strip_port(hop: str) -> str:
    """`1.2.3.4:80` → `1.2.3.4`, `[::1]:80` → `::1`; bare IPv6 is left alone."""
    if hop.startswith("["):
        end = hop.find("]")
        return hop[1:end] if end > 0 else hop
    if hop.count(":") == 1:
        return hop.split(":", 1)[0]
    return hop
