"""Token configuration parsing, without a server."""

from __future__ import annotations

import pytest
from moorage.auth import AuthConfigError, Authenticator, digest, is_loopback, parse_api_keys


def test_keys_map_token_digests_to_tenants() -> None:
    """Only digests are kept, and each maps to its tenant."""
    keys = parse_api_keys(" acme:aaaaaaaaaaaaaaaa , globex:bbbbbbbbbbbbbbbb,")
    assert keys == {digest("aaaaaaaaaaaaaaaa"): "acme", digest("bbbbbbbbbbbbbbbb"): "globex"}
    auth = Authenticator(keys)
    assert auth.tenant("aaaaaaaaaaaaaaaa") == "acme" and auth.tenant("nope") is None and auth.tenant(None) is None


@pytest.mark.parametrize("spec", ["acme", "acme:short", ":aaaaaaaaaaaaaaaa", "a b:aaaaaaaaaaaaaaaa"])
def test_bad_key_entries_are_refused_without_echoing_secrets(spec: str) -> None:
    """A malformed entry names its position, never its token."""
    with pytest.raises(AuthConfigError) as info:
        parse_api_keys(spec)
    assert "entry 1" in str(info.value) and "aaaa" not in str(info.value)


def test_no_keys_means_open_as_the_default_tenant() -> None:
    """With no keys every caller is tenant 'default'."""
    assert Authenticator({}).tenant(None) == "default"


def test_loopback_detection() -> None:
    """Only loopback addresses may run without authentication."""
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1") and not is_loopback("example.com")
