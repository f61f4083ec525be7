"""The origin policy (cross-site WebSocket hijacking) and the metrics-listener
split, decided without I/O."""

from __future__ import annotations

import pytest
from moorage.edge import OriginPolicy, listener_serves, normalize_origin


def test_origins_are_normalized_with_an_explicit_port() -> None:
    assert normalize_origin("HTTP://LocalHost") == "http://localhost:80"
    assert normalize_origin("https://console.example.com/") == "https://console.example.com:443"
    assert normalize_origin("http://[::1]:8080") == "http://[::1]:8080"
    for bad in ("null", "file://", "ws://x", "http://x/path", "http://x:99999", "javascript:alert(1)", ""):
        assert normalize_origin(bad) is None, bad


def test_loopback_service_allows_its_own_origin_and_no_other_page() -> None:
    policy = OriginPolicy.build("", "127.0.0.1", 8080)
    assert policy.allows(None, "127.0.0.1:8080"), "no Origin: not a browser"
    for own in ("http://127.0.0.1:8080", "http://localhost:8080", "http://[::1]:8080", "https://localhost:8080"):
        assert policy.allows(own, "127.0.0.1:8080"), own
    for page in ("https://evil.example", "http://localhost:3000", "http://127.0.0.1", "null", "http://10.0.0.1:8080"):
        assert not policy.allows(page, "127.0.0.1:8080"), page


def test_dns_rebinding_does_not_pass_as_the_own_origin() -> None:
    """A page on an attacker's name rebound to 127.0.0.1 sends that name as both Host and Origin."""
    policy = OriginPolicy.build("", "127.0.0.1", 8080)
    assert not policy.allows("http://rebind.evil.example:8080", "rebind.evil.example:8080")
    assert policy.allows("http://localhost:8080", "localhost:8080")


def test_a_host_header_that_names_the_service_by_address() -> None:
    """Bound to every interface: the page the service itself serves at http://<ip>:<port> is same-origin."""
    policy = OriginPolicy.build("", "0.0.0.0", 8080)
    assert policy.allows("http://192.0.2.7:8080", "192.0.2.7:8080")
    assert policy.allows("http://[2001:db8::7]:8080", "[2001:db8::7]:8080")
    assert not policy.allows("http://192.0.2.7:8080", "192.0.2.7:9999"), "Host names another port"
    assert not policy.allows("http://192.0.2.8:8080", "192.0.2.7:8080")
    assert not policy.allows("http://moorage.example:8080", "moorage.example:8080"), "names must be listed"
    assert not policy.allows("http://0.0.0.0:8080", None)


def test_listed_origins_are_allowed() -> None:
    policy = OriginPolicy.build(" https://console.example.com , http://localhost:3000 ", "0.0.0.0", 8080)
    assert policy.allows("https://console.example.com", "moorage.example.com")
    assert policy.allows("https://console.example.com:443", None)
    assert policy.allows("http://localhost:3000", "127.0.0.1:8080")
    assert not policy.allows("http://console.example.com", "moorage.example.com"), "scheme matters"
    assert not policy.allows("https://console.example.com.evil.example", None)


def test_a_malformed_allowed_origin_is_a_configuration_error() -> None:
    with pytest.raises(ValueError):
        OriginPolicy.build("console.example.com", "127.0.0.1", 8080)


def test_the_metrics_listener_split() -> None:
    for path in ("/metrics", "/readyz", "/healthz", "/v1/sessions"):
        assert listener_serves(path, on_metrics_listener=False, split=False), "one port serves everything"
    assert not listener_serves("/metrics", on_metrics_listener=False, split=True)
    assert not listener_serves("/readyz", on_metrics_listener=False, split=True)
    assert listener_serves("/healthz", on_metrics_listener=False, split=True)
    assert listener_serves("/v1/sessions", on_metrics_listener=False, split=True)
    assert listener_serves("/metrics", on_metrics_listener=True, split=True)
    assert listener_serves("/readyz", on_metrics_listener=True, split=True)
    assert not listener_serves("/v1/sessions", on_metrics_listener=True, split=True)
