"""ForwardedFor: forwarding and identity headers are believed only from trusted proxies."""

from __future__ import annotations

import ipaddress

import pytest

from gateway.identity.forwarded import ClientInfo, ForwardedFor

PROXIES = ForwardedFor(("10.0.0.0/8", ipaddress.ip_network("fd00::/8"), "127.0.0.1"))


def h(**kv: str) -> list[tuple[bytes, bytes]]:
    return [(k.replace("_", "-").encode(), v.encode()) for k, v in kv.items()]


def test_untrusted_peer_is_the_client_whatever_it_claims() -> None:
    info = PROXIES.client("203.0.113.7", h(x_forwarded_for="1.1.1.1",
                                           x_forwarded_proto="https",
                                           x_forwarded_host="evil.example"))
    assert info == ClientInfo("203.0.113.7", None, None, False, "203.0.113.7")


def test_trusted_peer_single_hop() -> None:
    info = PROXIES.client("10.1.2.3", h(x_forwarded_for="198.51.100.9",
                                        x_forwarded_proto="HTTPS",
                                        x_forwarded_host="api.example"))
    assert info == ClientInfo("198.51.100.9", "https", "api.example", True, "10.1.2.3")


def test_multi_hop_skips_trusted_hops_right_to_left() -> None:
    # spoofed, real client, then two of our proxies
    xff = "6.6.6.6, 198.51.100.9, 10.0.0.5, 10.0.0.6"
    assert PROXIES.client("10.0.0.7", h(x_forwarded_for=xff)).ip == "198.51.100.9"


def test_repeated_xff_headers_are_one_list() -> None:
    headers = [(b"x-forwarded-for", b"6.6.6.6, 198.51.100.9"), (b"x-forwarded-for", b"10.0.0.5")]
    assert PROXIES.client("10.0.0.7", headers).ip == "198.51.100.9"


def test_all_hops_trusted_gives_the_leftmost() -> None:
    assert PROXIES.client("10.0.0.7", h(x_forwarded_for="10.0.0.1, 10.0.0.2")).ip == "10.0.0.1"


def test_trusted_peer_without_xff_is_the_client() -> None:
    assert PROXIES.client("127.0.0.1", []) == ClientInfo("127.0.0.1", None, None, True,
                                                         "127.0.0.1")


def test_ipv6_peers_and_hops() -> None:
    xff = "2001:db8::1, [fd00::2]:443, fd00::3"
    assert PROXIES.client("fd00::9", h(x_forwarded_for=xff)).ip == "2001:db8::1"
    assert PROXIES.client("2001:db8::5", h(x_forwarded_for="1.1.1.1")).ip == "2001:db8::5"
    assert not PROXIES.client("2001:db8::5", []).trusted_peer


def test_ipv4_mapped_ipv6_peer() -> None:
    assert PROXIES.is_trusted("::ffff:10.0.0.1")
    assert not PROXIES.is_trusted("::ffff:8.8.8.8")


def test_ports_in_xff_hops() -> None:
    xff = "198.51.100.9:51234, 10.0.0.5:80"
    assert PROXIES.client("10.0.0.7", h(x_forwarded_for=xff)).ip == "198.51.100.9"


def test_proto_and_host_lists_take_the_leftmost_and_bad_protos_are_dropped() -> None:
    info = PROXIES.client("10.0.0.7", h(x_forwarded_proto="https, http",
                                        x_forwarded_host="a.example, b.internal"))
    assert (info.proto, info.host) == ("https", "a.example")
    assert PROXIES.client("10.0.0.7", h(x_forwarded_proto="gopher")).proto is None


@pytest.mark.parametrize("peer", [None, "", "not-an-ip", "10.0.0.1%eth0x"])
def test_unusable_peers_are_not_trusted(peer: str | None) -> None:
    info = PROXIES.client(peer, h(x_forwarded_for="1.1.1.1"))
    assert not info.trusted_peer and info.ip == (peer or "unknown")


def test_no_trusted_networks_trusts_nobody() -> None:
    nobody = ForwardedFor(())
    assert not nobody.is_trusted("127.0.0.1")
    assert nobody.client("127.0.0.1", h(x_forwarded_for="1.1.1.1")).ip == "127.0.0.1"


def test_trusted_identity_only_from_trusted_peers() -> None:
    headers = h(x_user="ann", x_workspace="acme")
    assert PROXIES.trusted_identity("10.0.0.1", headers, b"x-user", b"x-workspace") == (
        "ann", "acme")
    assert PROXIES.trusted_identity("8.8.8.8", headers, b"x-user", b"x-workspace") is None
    assert PROXIES.trusted_identity("10.0.0.1", headers, b"x-user") == ("ann", None)
    assert PROXIES.trusted_identity("10.0.0.1", h(x_user="ann", x_workspace=" "),
                                    b"x-user", b"x-workspace") == ("ann", None)


def test_trusted_identity_missing_empty_or_ambiguous() -> None:
    assert PROXIES.trusted_identity("10.0.0.1", [], b"x-user") is None
    assert PROXIES.trusted_identity("10.0.0.1", h(x_user=" "), b"x-user") is None
    twice = [(b"x-user", b"ann"), (b"x-user", b"mallory")]
    assert PROXIES.trusted_identity("10.0.0.1", twice, b"x-user") is None
