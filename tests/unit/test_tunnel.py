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
