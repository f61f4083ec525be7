"""Connections the service itself makes to a URL someone else chose (a webhook target, a vault's
MCP server), held to the egress tunnel's address rules (``tunnel.address_allowed``).

:class:`CheckedResolver` is the resolver such a connection uses: it resolves the name, asks a
refusal rule about every address (``refusal(addresses)``: ``None`` to go on, else why not) and
answers only those addresses, so the check and the connect see the same answer: a name that
re-resolves inward between an earlier check and this connection is refused here, in the
connection's own resolver (``TargetRefused``, which aiohttp wraps in ``ClientConnectorError``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable, Sequence

from aiohttp.abc import AbstractResolver, ResolveResult

from .tunnel import Network

#: Why the addresses a name resolved to may not be reached (``None``: they may).
Refusal = Callable[[Sequence[str]], str | None]


class TargetRefused(OSError):
    """The resolver's refusal; the message is the rule's reason."""


def in_networks(text: str, networks: tuple[Network, ...]) -> bool:
    """Whether the address ``text`` (an IPv6 zone is ignored) lies in one of ``networks``."""
    try:
        address = ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return False
    return any(address in net for net in networks)


class CheckedResolver(AbstractResolver):
    """Resolves a name and answers its addresses only if ``refusal`` allows all of them."""

    def __init__(self, refusal: Refusal) -> None:
        self.refusal = refusal

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, family=family)
        except UnicodeError as exc:
            raise TargetRefused(f"{host} is not a valid host name") from exc
        if (why := self.refusal(sorted({str(info[4][0]) for info in infos}))) is not None:
            raise TargetRefused(why)
        return [
            ResolveResult(
                hostname=host,
                host=str(info[4][0]),
                port=port,
                family=info[0],
                proto=info[2],
                flags=socket.AI_NUMERICHOST,
            )
            for info in infos
        ]

    async def close(self) -> None:
        return None
