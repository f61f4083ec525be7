"""The pure rules of ``environment_variable`` credentials (egress_secrets.py), the per-sandbox CA
(egress_ca.py) and the request relay's parsing edge cases (egress_intercept._Relay over in-memory
streams)."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import ssl

import h11
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from moorage.egress_ca import MAX_LEAVES, SessionCA
from moorage.egress_intercept import MAX_HEAD_BYTES, _Relay
from moorage.egress_secrets import (
    MAX_BODY_BYTES,
    EnvCredential,
    Opened,
    Swaps,
    host_matches,
    placeholder,
    plan,
    reserved,
    substitute_body,
    substitute_headers,
    swaps,
    wanted,
)

LIMITED = EnvCredential("c1", "API_KEY", ("api.example.com", "*.svc.example.org"), header=True, body=False)
BODY = EnvCredential("c2", "BODY_KEY", ("api.example.com",), header=False, body=True)
ANYWHERE = EnvCredential("c3", "OPEN_KEY", None, header=True, body=True)
ISSUED = {"c1": "moorage-secret-api-key-1", "c2": "moorage-secret-body-key-2", "c3": "moorage-secret-open-key-3"}


def test_hosts_match_exactly_or_as_subdomains_of_a_wildcard() -> None:
    assert host_matches("api.example.com", "API.example.com.")
    assert not host_matches("api.example.com", "example.com") and not host_matches(
        "api.example.com", "xapi.example.com"
    )
    assert host_matches("*.example.com", "a.b.example.com") and not host_matches("*.example.com", "example.com")
    assert not host_matches("*.example.com", "badexample.com")
    assert LIMITED.allows("x.svc.example.org") and not LIMITED.allows("svc.example.org")
    assert ANYWHERE.allows("anything.invalid")


def test_a_stored_auth_document_becomes_the_credential_with_the_apis_defaults() -> None:
    auth = {
        "type": "environment_variable",
        "secret_name": "K",
        "networking": {"type": "limited", "allowed_hosts": ["a.example.com"]},
    }
    assert EnvCredential.of("c", auth) == EnvCredential("c", "K", ("a.example.com",), header=True, body=False)
    unrestricted = {
        **auth,
        "networking": {"type": "unrestricted"},
        "injection_location": {"header": False, "body": True},
    }
    assert EnvCredential.of("c", unrestricted) == EnvCredential("c", "K", None, header=False, body=True)


def test_placeholders_are_readable_header_safe_and_reserved_names_are_skipped() -> None:
    mark = placeholder("My Token!", bytes(range(32)))
    assert mark == "moorage-secret-my-token-" + bytes(range(12)).hex()
    assert all(0x21 <= ord(c) <= 0x7E for c in mark)
    held = [
        EnvCredential("a", "PATH", None, True, False),
        EnvCredential("b", "ANTHROPIC_API_KEY", None, True, False),
        EnvCredential("c", "TOKEN", None, True, False),
        EnvCredential("d", "TOKEN", None, True, False),  # a later vault's: the first wins
        EnvCredential("e", "ld_preload", None, True, False),
    ]
    made = plan(held, {c.id: c.id.encode() * 32 for c in held})
    assert list(made.env) == ["TOKEN"] and made.issued == {"c": made.env["TOKEN"]}
    assert [c.id for c, _ in made.skipped] == ["a", "b", "d", "e"]
    assert reserved("Https_Proxy") and reserved("CLAUDE_CODE_X") and not reserved("GITHUB_TOKEN")


def test_tls_is_terminated_only_for_hosts_a_held_credential_is_for() -> None:
    assert wanted(ISSUED, [LIMITED], "api.example.com")
    assert not wanted(ISSUED, [LIMITED], "pypi.org")  # a blind pipe
    assert not wanted({}, [LIMITED, ANYWHERE], "api.example.com")  # no placeholder issued for them
    assert wanted(ISSUED, [ANYWHERE], "pypi.org")  # unrestricted: wherever the policy lets through
    assert not wanted(ISSUED, [], "api.example.com")  # archived since


def test_swaps_follow_each_credentials_hosts_and_locations() -> None:
    current = [Opened(LIMITED, "s1"), Opened(BODY, "s2"), Opened(ANYWHERE, "s3")]
    at_api = swaps(ISSUED, current, "api.example.com")
    assert at_api.header == ((b"moorage-secret-api-key-1", b"s1"), (b"moorage-secret-open-key-3", b"s3"))
    assert at_api.body == ((b"moorage-secret-body-key-2", b"s2"), (b"moorage-secret-open-key-3", b"s3"))
    elsewhere = swaps(ISSUED, current, "evil.example.net")
    assert elsewhere == Swaps(((b"moorage-secret-open-key-3", b"s3"),), ((b"moorage-secret-open-key-3", b"s3"),))
    # A secret that is no valid header value (CR/LF: header injection) never goes into headers.
    assert swaps(ISSUED, [Opened(LIMITED, "a\r\nX-Evil: 1")], "api.example.com").header == ()
    assert swaps({}, current, "api.example.com") == Swaps((), ())


def test_headers_get_the_secret_in_values_and_inside_basic_credentials_only() -> None:
    pairs = ((b"PH", b"secret"),)
    basic = b"Basic " + base64.b64encode(b"user:PH")
    out = dict(
        substitute_headers(
            [
                (b"Authorization", basic),
                (b"X-Key", b"k=PH;PH"),
                (b"PH", b"name"),
                (b"Proxy-Authorization", b"Basic !!"),
            ],
            pairs,
        )
    )
    assert base64.b64decode(out[b"Authorization"].split()[1]) == b"user:secret"
    assert out[b"X-Key"] == b"k=secret;secret" and out[b"PH"] == b"name"  # names are left alone
    assert out[b"Proxy-Authorization"] == b"Basic !!"  # not base64: left as it is
    assert substitute_headers([(b"A", b"PH")], ()) == [(b"A", b"PH")]


def test_bodies_are_substituted_up_to_the_limit_only() -> None:
    pairs = ((b"PH", b"longer-secret"),)
    assert substitute_body(b'{"k":"PH"}', pairs) == b'{"k":"longer-secret"}'
    big = b"PH" + b"x" * MAX_BODY_BYTES
    assert substitute_body(big, pairs) == big


def test_the_ca_is_a_ca_for_leaves_only_and_each_leaf_names_its_one_host() -> None:
    ca = SessionCA("t")
    constraints = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints)
    usage = ca.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    assert "PRIVATE" not in ca.cert_pem
    wants: list[tuple[str, x509.GeneralName]] = [
        ("api.example.com", x509.DNSName("api.example.com")),
        ("10.1.2.3", x509.IPAddress(ipaddress.ip_address("10.1.2.3"))),
    ]
    for host, expected in wants:
        cert, _ = ca.leaf(host)
        names = list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
        assert names == [expected]
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
        assert cert.issuer == ca.cert.subject
        cert.verify_directly_issued_by(ca.cert)
        assert cert.not_valid_after_utc <= ca.cert.not_valid_after_utc


def test_leaf_contexts_are_cached_and_bounded() -> None:
    ca = SessionCA("t")
    first = ca.context("a.example.com")
    assert ca.context("a.example.com") is first
    for n in range(MAX_LEAVES + 5):
        ca.context(f"h{n}.example.com")
    assert len(ca._contexts) == MAX_LEAVES and ca.context("a.example.com") is not first
    assert isinstance(first, ssl.SSLContext)


class Sink:
    """What a relay writes to a peer: its bytes, as a StreamWriter would take them."""

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        return None

    def can_write_eof(self) -> bool:
        return False


def fed(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


async def relay_once(request: bytes, response: bytes, replaced: Swaps) -> tuple[bytes, bytes]:
    """One request through ``_Relay``: what the upstream got, what the sandbox got."""
    to_sandbox, to_upstream = Sink(), Sink()
    relay = _Relay(fed(request), to_sandbox, fed(response), to_upstream)  # type: ignore[arg-type]
    head = await relay.request()
    assert head is not None
    await relay.forward(head, replaced)
    return to_upstream.data, to_sandbox.data


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def test_a_chunked_body_is_reframed_with_its_new_length() -> None:
    request = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nPH-\r\n2\r\nPH\r\n0\r\n\r\n"
    up, down = await relay_once(request, OK, Swaps((), ((b"PH", b"secret"),)))
    assert up.endswith(b"\r\n\r\nsecret-secret") and b"content-length: 13" in up.lower()
    assert b"transfer-encoding" not in up.lower() and down.endswith(b"ok")


async def test_expect_100_is_answered_here_and_not_sent_on() -> None:
    request = b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nPH"
    up, down = await relay_once(request, OK, Swaps(((b"PH", b"s"),), ((b"PH", b"s"),)))
    assert down.startswith(b"HTTP/1.1 100 ") and b"expect" not in up.lower() and up.endswith(b"\r\n\r\ns")


async def test_a_body_over_the_limit_goes_on_unchanged_and_streamed() -> None:
    body = b"PH" + b"x" * MAX_BODY_BYTES
    request = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    up, _ = await relay_once(request, OK, Swaps((), ((b"PH", b"secret"),)))
    assert up.endswith(body) and b"secret" not in up


async def test_a_switch_of_protocols_becomes_a_pipe_after_the_handshake() -> None:
    """A WebSocket upgrade: the secret goes into the handshake's headers, then bytes flow both ways."""
    request = (
        b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nX-Key: PH\r\n\r\nfrom-sandbox"
    )
    response = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nfrom-server"
    to_sandbox, to_upstream = Sink(), Sink()
    relay = _Relay(fed(request), to_sandbox, fed(response), to_upstream)  # type: ignore[arg-type]
    head = await relay.request()
    assert head is not None
    assert await relay.forward(head, Swaps(((b"PH", b"secret"),), ())) == 101
    assert b"X-Key: secret\r\n" in to_upstream.data and to_upstream.data.endswith(b"\r\n\r\nfrom-sandbox")
    assert to_sandbox.data.startswith(b"HTTP/1.1 101 ") and to_sandbox.data.endswith(b"\r\n\r\nfrom-server")
    assert not await relay.next_cycle()


async def test_a_malformed_or_oversized_head_is_a_protocol_error() -> None:
    """Bad request lines, a missing Host, and heads past the bound (which h11 judges per read:
    at most two reads' worth is ever held) never reach the upstream."""
    huge = b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"a" * (3 * MAX_HEAD_BYTES) + b"\r\n\r\n"
    for request in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n", huge):
        upstream = Sink()
        relay = _Relay(fed(request), Sink(), fed(b""), upstream)  # type: ignore[arg-type]
        with pytest.raises(h11.RemoteProtocolError):
            await relay.request()
        assert upstream.data == b""
