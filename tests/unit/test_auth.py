"""Token configuration parsing and the table token format, without a server or a database."""

from __future__ import annotations

import pytest
from moorage.auth import AuthConfigError, Authenticator, digest, is_loopback, parse_api_keys
from moorage_session_store.tokens import parse_token, token_digest


async def test_keys_map_token_digests_to_tenants() -> None:
    """Only digests are kept, and each maps to its tenant."""
    keys = parse_api_keys(" acme:aaaaaaaaaaaaaaaa , globex:bbbbbbbbbbbbbbbb,")
    assert keys == {digest("aaaaaaaaaaaaaaaa"): "acme", digest("bbbbbbbbbbbbbbbb"): "globex"}
    auth = Authenticator(keys)
    assert await auth.tenant("aaaaaaaaaaaaaaaa") == "acme"
    assert await auth.tenant("nope") is None and await auth.tenant(None) is None


@pytest.mark.parametrize("spec", ["acme", "acme:short", ":aaaaaaaaaaaaaaaa", "a b:aaaaaaaaaaaaaaaa"])
def test_bad_key_entries_are_refused_without_echoing_secrets(spec: str) -> None:
    """A malformed entry names its position, never its token."""
    with pytest.raises(AuthConfigError) as info:
        parse_api_keys(spec)
    assert "entry 1" in str(info.value) and "aaaa" not in str(info.value)


async def test_no_keys_means_open_as_the_default_tenant_on_loopback_only() -> None:
    """With no keys (and no token table) every caller is tenant 'default', unless open mode is not allowed."""
    assert await Authenticator({}).tenant(None) == "default"
    assert await Authenticator({}, allow_open=False).tenant(None) is None


def test_table_tokens_have_one_exact_shape() -> None:
    """mrg_<12 hex>_<64 hex> parses to its id; anything else (case, length, separators) does not."""
    token = "mrg_0123456789ab_" + "f" * 64
    assert parse_token(token) == "0123456789ab"
    assert token_digest(token) == digest(token) and len(token_digest(token)) == 64
    for bad in (token[:-1], token + "f", token.upper(), "mrg-0123456789ab-" + "f" * 64, "mrg_0123456789a_" + "f" * 65):
        assert parse_token(bad) is None, bad


def test_loopback_detection() -> None:
    """Only loopback addresses may run without authentication."""
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1") and not is_loopback("example.com")
