"""The egress allowlist's pure parts: entries, CONNECT heads, address checks."""

from __future__ import annotations

import ipaddress

import pytest
from moorage.tunnel import Rule, parse_allowlist, parse_connect, parse_networks, reachable


def test_allowlist_entries_parse_to_host_and_port() -> None:
    """Entries are host, *.domain or host:port; 443 when no port is named."""
    assert parse_allowlist(" PyPI.org, *.pythonhosted.org ,git.example.com:8443,") == (
        Rule("pypi.org"),
        Rule("*.pythonhosted.org"),
        Rule("git.example.com", 8443),
    )


@pytest.mark.parametrize("entry", ["*", "a.*.com", "http://x.com", "*example.com", "x.com:http"])
def test_bad_allowlist_entries_are_refused(entry: str) -> None:
    """A malformed entry fails loudly at start rather than allowing too much."""
    with pytest.raises(ValueError):
        parse_allowlist(entry)


def test_rules_match_exact_hosts_subdomains_and_ports() -> None:
    """A wildcard covers subdomains only, never the bare domain or look-alikes."""
    wild, exact = Rule("*.example.com"), Rule("pypi.org")
    assert wild.matches("files.example.com", 443) and wild.matches("a.b.example.com", 443)
    assert not wild.matches("example.com", 443) and not wild.matches("evilexample.com", 443)
    assert not wild.matches("files.example.com", 80)
    assert exact.matches("pypi.org", 443) and not exact.matches("pypi.org.evil.com", 443)


def test_connect_heads_parse_and_anything_else_is_rejected() -> None:
    """Only an HTTP/1.x CONNECT with host:port is a tunnel request."""
    assert parse_connect(b"CONNECT pypi.org:443 HTTP/1.1\r\nHost: pypi.org\r\n\r\n") == ("pypi.org", 443)
    assert parse_connect(b"CONNECT [2001:db8::1]:443 HTTP/1.1\r\n\r\n") == ("2001:db8::1", 443)
    for head in (
        b"GET http://pypi.org/ HTTP/1.1\r\n\r\n",
        b"CONNECT pypi.org HTTP/1.1\r\n\r\n",
        b"CONNECT pypi.org:99999 HTTP/1.1\r\n\r\n",
        b"CONNECT pypi.org:443\r\n\r\n",
        b"\xff\xfe\r\n\r\n",
    ):
        assert parse_connect(head) is None


def test_names_resolving_inward_are_unreachable_unless_their_network_is_allowed() -> None:
    """Loopback, private, link-local (metadata) addresses are refused; an allowed network is not."""
    assert reachable(["151.101.0.223"])
    for inward in ("127.0.0.1", "10.0.0.5", "169.254.169.254", "::1", "fd00::1", "192.168.1.1"):
        assert not reachable([inward])
    assert not reachable(["151.101.0.223", "127.0.0.1"])  # one inward answer is enough
    assert not reachable([])
    assert reachable(["10.1.2.3"], parse_networks("10.1.0.0/16, 192.0.2.0/24"))
    assert parse_networks("10.1.0.0/16") == (ipaddress.ip_network("10.1.0.0/16"),)


# (address, allowed networks, allowed?) — transition forms are judged by the IPv4 address they lead to.
ADDRESS_TABLE = [
    ("151.101.0.223", "", True),
    ("2a04:4e42::223", "", True),
    ("64:ff9b::9765:df", "", True),  # NAT64 to a public host: how IPv6-only clusters reach pypi
    ("64:ff9b::7f00:1", "", False),  # NAT64 to 127.0.0.1
    ("64:ff9b::a9fe:a9fe", "", False),  # NAT64 to the metadata address 169.254.169.254
    ("64:ff9b::a01:203", "", False),  # NAT64 to 10.1.2.3 …
    ("64:ff9b::a01:203", "10.1.0.0/16", True),  # … unless its embedded network is allowed
    ("64:ff9b:1::7f00:1", "", False),  # local-use NAT64: never public
    ("64:ff9b:1::9765:df", "", False),
    ("64:ff9b:1::9765:df", "64:ff9b:1::/48", True),
    ("::127.0.0.1", "", False),  # IPv4-compatible
    ("::10.0.0.1", "", False),
    ("::151.101.0.223", "", True),
    ("::ffff:127.0.0.1", "", False),  # IPv4-mapped
    ("::ffff:192.168.1.1", "", False),
    ("::ffff:192.168.1.1", "192.168.0.0/16", True),
    ("::ffff:151.101.0.223", "", True),
    ("2002:7f00:1::1", "", False),  # 6to4 of 127.0.0.1
    ("2002:a9fe:a9fe::1", "", False),  # 6to4 of 169.254.169.254
    ("2002:9765:df::1", "", True),  # 6to4 of a public host
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", "", False),  # Teredo, client 127.0.0.1
    ("2001:0:4136:e378:8000:63bf:689a:ff20", "", True),  # Teredo, public server and client (151.101.0.223)
    ("::1", "", False),
    ("::", "", False),
    ("0.0.0.0", "", False),
    ("224.0.0.1", "", False),  # multicast
    ("ff02::1", "", False),
    ("fe80::1%eth0", "", False),
    ("100.64.0.1", "", False),  # carrier-grade NAT
    ("not an address", "", False),
]


@pytest.mark.parametrize(("address", "networks", "allowed"), ADDRESS_TABLE)
def test_transition_addresses_are_judged_by_the_ipv4_address_they_embed(
    address: str, networks: str, allowed: bool
) -> None:
    """NAT64, IPv4-mapped/-compatible, 6to4 and Teredo cannot smuggle an inward IPv4 address."""
    assert reachable([address], parse_networks(networks)) is allowed
