"""``environment_variable`` vault credentials, without I/O: what the sandbox is given in place of
each secret (a placeholder), which hosts the egress tunnel terminates TLS for, and where in an
HTTP/1.1 request the placeholder is swapped for the real secret.

The rules (docs/managed-agents.md, "Vaults"; docs/architecture.md says why):

- **The sandbox holds a placeholder.** Each credential's ``secret_name`` is set in the CLI's
  environment (inherited by its tools) to ``moorage-secret-<name>-<24 hex>``, derived from the
  operator's key, the session and the credential (``placeholder``): stable across rehydrations (a
  placeholder written into a file keeps working), different per session. The secret never enters
  the sandbox. Names the runner owns (``PATH``, ``HOME``, ``ANTHROPIC_*``, the proxy and CA
  variables, …) are not set (``reserved``); the first vault in ``vault_ids`` wins a name.
- **Which hosts.** A credential with ``networking: limited`` is for the hosts in its
  ``allowed_hosts`` (``api.example.com`` exactly, ``*.example.com`` for its subdomains, any port);
  ``unrestricted`` is for every host the session's egress policy lets through (the official
  client's words: "the Environment's network policy is the only boundary"). The tunnel terminates
  TLS only for a ``CONNECT`` that its policy allows *and* that some credential of the sandbox is
  for (``wanted``); every other ``CONNECT`` stays a blind pipe.
- **Where in the request.** ``injection_location.header`` (the default): in header values — and
  inside ``Basic`` credentials (``curl -u user:$TOKEN``, git's ``https://user:$TOKEN@host``),
  which are base64 of ``user:password``; ``body``: in the request body, up to ``MAX_BODY_BYTES``
  (a longer body is sent on unchanged). Never in the request line, header names or responses. A
  secret that is not a valid header value (control characters) is not put into headers.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: The largest request body the placeholder is replaced in (bodies are buffered to do it).
MAX_BODY_BYTES = 1024 * 1024
#: Names a credential may not set: the runner's own variables, and ones every process relies on.
RESERVED = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "SHELL",
        "PWD",
        "TMPDIR",
        "LANG",
        "TERM",
        "HTTPS_PROXY",
        "HTTP_PROXY",
        "NO_PROXY",
        "ALL_PROXY",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
        "GIT_SSL_CAINFO",
        "NODE_OPTIONS",
        "PYTHONPATH",
        "PYTHONHOME",
        "DISABLE_AUTOUPDATER",
        "DISABLE_TELEMETRY",
        "DISABLE_ERROR_REPORTING",
    }
)
RESERVED_PREFIXES = ("ANTHROPIC_", "CLAUDE_", "MOORAGE_", "LD_")
_FIELD_VALUE = re.compile(rb"^[\x21-\x7e\x80-\xff]([\x20-\x7e\x80-\xff\t]*[\x21-\x7e\x80-\xff])?$")

Headers = list[tuple[bytes, bytes]]


class SecretsUnavailable(Exception):
    """The session's credentials cannot be read or opened now (the database, the key)."""


def reserved(name: str) -> bool:
    upper = name.upper()
    return upper in RESERVED or upper.startswith(RESERVED_PREFIXES)


def host_matches(pattern: str, host: str) -> bool:
    """``api.example.com`` matches itself; ``*.example.com`` its subdomains (not the apex)."""
    host = host.lower().rstrip(".")
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


@dataclass(frozen=True)
class EnvCredential:
    """An ``environment_variable`` credential as the tunnel uses it (no secret)."""

    id: str
    name: str
    hosts: tuple[str, ...] | None  # None: unrestricted (wherever the session's policy allows)
    header: bool
    body: bool

    @classmethod
    def of(cls, credential_id: str, auth: Mapping[str, Any]) -> EnvCredential:
        """From a stored public ``auth`` document (``vaults._auth`` checked it)."""
        net = auth.get("networking") or {}
        hosts = None if net.get("type") == "unrestricted" else tuple(net.get("allowed_hosts") or ())
        place = auth.get("injection_location") or {}
        return cls(
            credential_id, str(auth["secret_name"]), hosts, bool(place.get("header", True)), bool(place.get("body"))
        )

    def allows(self, host: str) -> bool:
        return self.hosts is None or any(host_matches(pattern, host) for pattern in self.hosts)


@dataclass(frozen=True)
class Opened:
    """A credential with its secret, for one request."""

    credential: EnvCredential
    value: str


def placeholder(name: str, digest: bytes) -> str:
    """What the sandbox holds for ``name``: readable, header-safe, 96 bits from ``digest``."""
    label = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "x"
    return f"moorage-secret-{label}-{digest[:12].hex()}"


def placeholder_label(session_id: str, credential_id: str) -> bytes:
    """What the operator's key MACs into a session's placeholder for a credential (``SecretBox.mac``)."""
    return f"moorage-placeholder/{session_id}/{credential_id}".encode()


@dataclass(frozen=True)
class Plan:
    """What a starting sandbox gets: its environment, and which placeholder stands for which credential."""

    env: dict[str, str]  # secret_name -> placeholder
    issued: dict[str, str]  # credential id -> placeholder
    skipped: list[tuple[EnvCredential, str]]  # why a credential gets no variable


def plan(held: Sequence[EnvCredential], digest: Mapping[str, bytes]) -> Plan:
    """Placeholders for ``held`` (in ``vault_ids`` order; ``digest`` by credential id)."""
    env: dict[str, str] = {}
    issued: dict[str, str] = {}
    skipped: list[tuple[EnvCredential, str]] = []
    for credential in held:
        if reserved(credential.name):
            skipped.append((credential, f"its name {credential.name} is reserved for the runner"))
        elif credential.name in env:
            skipped.append((credential, f"an earlier vault in vault_ids already sets {credential.name}"))
        else:
            env[credential.name] = issued[credential.id] = placeholder(credential.name, digest[credential.id])
    return Plan(env, issued, skipped)


def wanted(issued: Mapping[str, str], current: Iterable[EnvCredential], host: str) -> bool:
    """Does a credential the sandbox holds a placeholder for apply to ``host`` (so the tunnel must
    terminate TLS for it)? ``current``: the credentials as they are now (archived ones absent)."""
    return any(c.id in issued and c.allows(host) for c in current)


@dataclass(frozen=True)
class Swaps:
    """The placeholder -> secret replacements for one request to one host."""

    header: tuple[tuple[bytes, bytes], ...]
    body: tuple[tuple[bytes, bytes], ...]


def swaps(issued: Mapping[str, str], current: Iterable[Opened], host: str) -> Swaps:
    header: list[tuple[bytes, bytes]] = []
    body: list[tuple[bytes, bytes]] = []
    for opened in current:
        credential = opened.credential
        mark = issued.get(credential.id)
        if mark is None or not credential.allows(host):
            continue
        value = opened.value.encode()
        if credential.header and _FIELD_VALUE.match(value):
            header.append((mark.encode(), value))
        if credential.body:
            body.append((mark.encode(), value))
    return Swaps(tuple(header), tuple(body))


def _replace(data: bytes, pairs: Sequence[tuple[bytes, bytes]]) -> bytes:
    for mark, value in pairs:
        data = data.replace(mark, value)
    return data


def _basic(value: bytes, pairs: Sequence[tuple[bytes, bytes]]) -> bytes:
    """``Basic <base64(user:password)>`` with placeholders replaced inside the decoded pair."""
    scheme, _, token = value.partition(b" ")
    if scheme.lower() != b"basic" or not token.strip():
        return value
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return value
    replaced = _replace(decoded, pairs)
    if replaced == decoded:
        return value
    return scheme + b" " + base64.b64encode(replaced)


def substitute_headers(headers: Iterable[tuple[bytes, bytes]], pairs: Sequence[tuple[bytes, bytes]]) -> Headers:
    """``headers`` with every placeholder in a value replaced (Basic credentials decoded first)."""
    if not pairs:
        return list(headers)
    out: Headers = []
    for name, value in headers:
        if name.lower() in (b"authorization", b"proxy-authorization"):
            value = _basic(value, pairs)
        out.append((name, _replace(value, pairs)))
    return out


def substitute_body(body: bytes, pairs: Sequence[tuple[bytes, bytes]]) -> bytes:
    return _replace(body, pairs) if len(body) <= MAX_BODY_BYTES else body
