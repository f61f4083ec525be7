"""Egress beyond the model: an HTTPS tunnel to the hosts a sandbox's policy allows.

Sandboxes have no network. Each sandbox also gets a tunnel socket next to its
model socket, and the tunnel holds one ``Policy`` per sandbox: none (every
``CONNECT`` refused) from the moment the socket is opened, until the session
that claims the sandbox sets its own (``allow``) before its runner is started
(``egress_policy.session_policy``: the environment's hosts, or the operator's
``MOORAGE_EGRESS_ALLOW`` for a session without an environment, say
``pypi.org,files.pythonhosted.org``). When a policy allows anything, the runner
bridges the socket to a loopback port and points ``HTTPS_PROXY`` at it, so
``pip``, ``curl`` or ``git`` reach those hosts and nothing else. The tunnel
speaks the one thing such clients send a proxy for HTTPS, ``CONNECT
host:port``, and opens the connection only when

- the sandbox's policy allows the host: it matches a rule (``example.com``
  exactly, ``*.example.com`` for its subdomains) and the port is 443 (or the
  one the rule names: ``example.com:8443``), or the policy is unrestricted
  (any host and port);
- every address the name resolves to is a public one (no loopback, private,
  link-local or metadata address: a name that resolves inward is refused, so
  DNS cannot be used to reach the host's own services), or lies in a network
  the operator named in ``MOORAGE_EGRESS_ALLOW_NETWORKS`` (an internal
  package mirror at 10.1.2.3, say). An IPv6 address that leads to an IPv4
  one (NAT64, IPv4-mapped or -compatible, 6to4, Teredo) is judged by that
  IPv4 address (``address_allowed``).

Each sandbox's socket holds at most ``connections_per_sandbox`` connections
(tunnels included; one past it is closed unread), and a request head must
arrive within ``head_timeout_s``.

TLS stays end to end (the service never sees the content); the tunnel sees
only host names, which it logs with the session — except for a host that one
of the sandbox's ``environment_variable`` vault credentials is for: there the
``interceptor`` (egress_intercept.py) connects upstream over verified TLS and
terminates the sandbox's TLS with the sandbox's own CA, to swap placeholders
for secrets. Anything else gets a short HTTP error and the connection is
closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import secrets
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from .egress_secrets import SecretsUnavailable

if TYPE_CHECKING:
    from .egress_intercept import Interceptor

log = structlog.get_logger(__name__)

MAX_HEADER_BYTES = 8192
ESTABLISHED = b"HTTP/1.1 200 Connection Established\r\n\r\n"
CONNECT_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Rule:
    host: str  # "example.com" or "*.example.com"
    port: int = 443

    def matches(self, host: str, port: int) -> bool:
        if port != self.port:
            return False
        if self.host.startswith("*."):
            return host.endswith(self.host[1:]) and len(host) > len(self.host) - 1
        return host == self.host


@dataclass(frozen=True)
class Policy:
    """What one sandbox may reach through the tunnel: hosts matching ``rules``, or with
    ``any_host`` every host and port (the addresses are checked either way)."""

    rules: tuple[Rule, ...] = ()
    any_host: bool = False

    @property
    def allows_nothing(self) -> bool:
        return not self.any_host and not self.rules

    def allows(self, host: str, port: int) -> bool:
        return self.any_host or any(rule.matches(host, port) for rule in self.rules)


NO_EGRESS = Policy()  # a sandbox's policy until its session sets one


def parse_rule(raw: str) -> Rule | None:
    """One ``host[:port]`` entry (None for a blank one); ``ValueError`` if malformed."""
    entry = raw.strip().lower()
    host, sep, port = entry.partition(":")
    host = host.rstrip(".")
    if not entry:
        return None
    bad_wildcard = host.count("*") and not (host.startswith("*.") and host.count("*") == 1)
    bad_port = sep and (not port.isdigit() or not 0 < int(port) < 65536)
    if not host or "/" in host or bad_wildcard or bad_port:
        raise ValueError(f"bad egress entry {raw.strip()!r}: use host, *.domain or host:port")
    return Rule(host, int(port) if sep else 443)


def parse_allowlist(text: str) -> tuple[Rule, ...]:
    """``MOORAGE_EGRESS_ALLOW``: comma-separated ``host[:port]`` entries."""
    try:
        return tuple(rule for raw in text.split(",") if (rule := parse_rule(raw)) is not None)
    except ValueError as exc:
        raise ValueError(f"MOORAGE_EGRESS_ALLOW: {exc}") from None


def parse_connect(head: bytes) -> tuple[str, int] | None:
    """(host, port) of a ``CONNECT host:port HTTP/1.x`` request head, else None."""
    try:
        line = head.split(b"\r\n", 1)[0].decode("ascii")
    except UnicodeDecodeError:
        return None
    parts = line.split(" ")
    if len(parts) != 3 or parts[0] != "CONNECT" or not parts[2].startswith("HTTP/1."):
        return None
    host, sep, port = parts[1].rpartition(":")
    host = host.strip("[]").lower().rstrip(".")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(text: str) -> tuple[Network, ...]:
    """``MOORAGE_EGRESS_ALLOW_NETWORKS``: comma-separated CIDRs."""
    return tuple(ipaddress.ip_network(n.strip(), strict=False) for n in text.split(",") if n.strip())


NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: the IPv4 address is the last 32 bits
NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215: where the IPv4 sits is the operator's choice
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # deprecated ::a.b.c.d


def embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...]:
    """The IPv4 addresses an IPv6 transition address leads to: IPv4-mapped,
    IPv4-compatible, NAT64 (well-known prefix), 6to4 and Teredo (the client
    and its server); none for any other address."""
    if address.ipv4_mapped is not None:
        return (address.ipv4_mapped,)
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in NAT64:
        return (low32,)
    if address in IPV4_COMPATIBLE and int(address) > 1:  # not :: or ::1, which are themselves
        return (low32,)
    if address.sixtofour is not None:
        return (address.sixtofour,)
    if address.teredo is not None:
        server, client = address.teredo
        return (client, server)
    return ()


def address_allowed(text: str, networks: tuple[Network, ...] = ()) -> bool:
    """May the tunnel connect to this address? Yes if it lies in a network
    the operator allowed; otherwise it must be public, and so must every IPv4
    address it embeds (64:ff9b::7f00:1 is 127.0.0.1 through NAT64; ::127.0.0.1
    and ::ffff:127.0.0.1 are 127.0.0.1 too). A local-use NAT64 address
    (64:ff9b:1::/48) is never public: allow its network explicitly."""
    try:
        address = ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return False
    if any(address in net for net in networks):
        return True
    if address.is_multicast or address.is_unspecified:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        if address in NAT64_LOCAL:
            return False
        embedded = embedded_ipv4(address)
        if embedded:
            return all(address_allowed(str(v4), networks) for v4 in embedded)
    return address.is_global


def reachable(addresses: list[str], networks: tuple[Network, ...] = ()) -> bool:
    """Every address allowed (``address_allowed``), and at least one."""
    return bool(addresses) and all(address_allowed(text, networks) for text in addresses)


class Tunnel:
    """One unix socket per sandbox, each with its own ``Policy``; see the module docstring."""

    def __init__(
        self,
        socket_dir: Path,
        on_verdict: Callable[[str, bool], None] | None = None,
        networks: tuple[Network, ...] = (),
        connections_per_sandbox: int = 32,
        head_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        self.socket_dir = socket_dir
        self.networks = networks
        self.on_verdict = on_verdict  # (sandbox_id, allowed), for metrics
        self.cap = connections_per_sandbox
        self.head_timeout_s = head_timeout_s
        self.open_connections: dict[str, int] = {}
        self._servers: dict[str, tuple[asyncio.Server, Path]] = {}
        self._policies: dict[str, Policy] = {}
        self._handlers: dict[str, set[asyncio.Task[None]]] = {}  # each open connection's task
        # Terminates TLS for hosts a sandbox's vault credentials are for (egress_intercept.py).
        self.interceptor: Interceptor | None = None

    def policy(self, sandbox_id: str) -> Policy:
        return self._policies.get(sandbox_id, NO_EGRESS)

    def allow(self, sandbox_id: str, policy: Policy) -> None:
        """Set what an open sandbox's connections may reach from now on (its session's policy,
        set when the session claims it, before its runner starts)."""
        if sandbox_id not in self._servers:
            raise KeyError(f"no tunnel is open for sandbox {sandbox_id}")
        self._policies[sandbox_id] = policy

    async def open(self, sandbox_id: str) -> Path:
        """The sandbox's socket; it allows nothing until ``allow`` is called."""
        path = self.socket_dir / f"{secrets.token_hex(8)}.tunnel.sock"
        server = await asyncio.start_unix_server(
            lambda r, w: self._admit(sandbox_id, r, w), str(path), limit=MAX_HEADER_BYTES
        )
        os.chmod(path, 0o666)
        self._servers[sandbox_id] = (server, path)
        self._policies[sandbox_id] = NO_EGRESS
        return path

    async def close_sandbox(self, sandbox_id: str) -> None:
        self._policies.pop(sandbox_id, None)
        if self.interceptor is not None:
            self.interceptor.forget(sandbox_id)
        entry = self._servers.pop(sandbox_id, None)
        if entry is None:
            return
        server, path = entry
        server.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        # A listening socket's close leaves its accepted connections open: end them too, so a
        # closed sandbox keeps no connection to the outside and no transport outlives the tunnel.
        handlers = self._handlers.pop(sandbox_id, set())
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    async def close(self) -> None:
        for sandbox_id in list(self._servers):
            await self.close_sandbox(sandbox_id)

    async def _admit(self, sandbox_id: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """At most ``cap`` connections per sandbox, tunnels included; one
        past it is closed at once, before anything is read."""
        held = self.open_connections.get(sandbox_id, 0)
        if held >= self.cap:
            writer.transport.abort()
            return
        self.open_connections[sandbox_id] = held + 1
        task = asyncio.current_task()
        assert task is not None
        handlers = self._handlers.setdefault(sandbox_id, set())
        handlers.add(task)
        try:
            await self._serve(sandbox_id, reader, writer)
        finally:
            handlers.discard(task)
            writer.close()  # a no-op if already closed; a refusal written before still goes out
            left = self.open_connections.get(sandbox_id, 1) - 1
            if left > 0:
                self.open_connections[sandbox_id] = left
            else:
                self.open_connections.pop(sandbox_id, None)

    async def _serve(self, sandbox_id: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(self.head_timeout_s):
                head = await reader.readuntil(b"\r\n\r\n")
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        target = parse_connect(head)
        if target is None:
            await _refuse(writer, 405, "only CONNECT host:port is proxied")
            return
        host, port = target
        interceptor = self.interceptor if self.policy(sandbox_id).allows(host, port) else None
        try:
            intercept = interceptor is not None and await interceptor.wants(sandbox_id, host)
        except SecretsUnavailable:
            await _refuse(writer, 503, "the session's credentials cannot be read now; try again")
            return
        tls = interceptor.upstream if interceptor is not None and intercept else None
        upstream = await self._connect(sandbox_id, host, port, writer, tls)
        if upstream is None:
            return
        up_r, up_w = upstream
        try:
            if interceptor is not None and intercept:  # it answers the CONNECT itself (egress_intercept.py)
                await interceptor.relay(sandbox_id, host, reader, writer, up_r, up_w)
            else:
                writer.write(ESTABLISHED)
                await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))
        finally:
            for w in (up_w, writer):
                w.close()

    async def _connect(
        self, sandbox_id: str, host: str, port: int, writer: asyncio.StreamWriter, tls: ssl.SSLContext | None = None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """The upstream connection (over TLS checked against ``tls`` and ``host`` if given), or None
        once the sandbox was told why not."""
        bound = log.bind(sandbox_id=sandbox_id, host=host, port=port)
        if not self.policy(sandbox_id).allows(host, port):
            bound.info("egress_refused", reason="not_allowlisted")
            self._verdict(sandbox_id, False)
            await _refuse(writer, 403, f"{host}:{port} is not allowed for this session")
            return None
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                addresses = sorted({str(info[4][0]) for info in infos})
                if not reachable(addresses, self.networks):
                    bound.warning("egress_refused", reason="non_public_address", addresses=addresses)
                    self._verdict(sandbox_id, False)
                    await _refuse(writer, 403, f"{host} resolves to a non-public address")
                    return None
                # Connect to an address we checked, not to the name again.
                if tls is None:
                    upstream = await asyncio.open_connection(addresses[0], port)
                else:
                    upstream = await asyncio.open_connection(addresses[0], port, ssl=tls, server_hostname=host)
        except ssl.SSLCertVerificationError as exc:
            bound.warning("egress_failed", error=type(exc).__name__, reason="upstream_certificate")
            self._verdict(sandbox_id, False)
            await _refuse(writer, 502, f"the certificate of {host}:{port} is not trusted")
            return None
        except (OSError, TimeoutError, ValueError) as exc:  # ValueError: a name IDNA cannot encode
            bound.info("egress_failed", error=type(exc).__name__)
            await _refuse(writer, 502, f"cannot reach {host}:{port}")
            return None
        bound.info("egress_opened")
        self._verdict(sandbox_id, True)
        return upstream

    def _verdict(self, sandbox_id: str, allowed: bool) -> None:
        if self.on_verdict is not None:
            self.on_verdict(sandbox_id, allowed)


async def _refuse(writer: asyncio.StreamWriter, status: int, why: str) -> None:
    reason = {403: "Forbidden", 405: "Method Not Allowed", 502: "Bad Gateway", 503: "Service Unavailable"}[status]
    body = f"moorage egress: {why}\n".encode()
    writer.write(
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n".encode()
        + body
    )
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    writer.close()


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()
