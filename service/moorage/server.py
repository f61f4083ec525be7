"""The public listener's edges that uvicorn leaves open: a cap on open
connections, a deadline for a request's headers (which, for a WebSocket, is
its whole handshake request), and the open-file limit.

uvicorn accepts every TCP connection and waits for a request's headers for as
long as the client likes (its keep-alive timer runs only *after* a response),
and its ``limit_concurrency`` is checked only once headers are complete and
not at all for WebSocket upgrades. So a slowloris client, sending a header
byte every few seconds, holds a file descriptor forever, and enough of them
exhaust the process's descriptors. ``guarded_protocol`` returns uvicorn's own
h11 protocol with two additions, both decided on the event loop without the
ASGI app seeing anything:

- a cap: a connection that arrives while ``max_connections`` are open
  (uvicorn's shared count: HTTP and upgraded WebSocket connections alike) is
  closed at once, so descriptors held by clients never pass the cap;
- a header deadline: a timer armed when the connection is made and again
  after each response closes the connection unless a request's headers were
  complete by then (a request being served, or a WebSocket it was upgraded
  to, is left alone). After the upgrade the WebSocket protocol's own
  ping/pong (``ws_ping_interval``/``ws_ping_timeout``) bounds a dead peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
from typing import Any

import structlog
from uvicorn.protocols.http.h11_impl import H11Protocol

log = structlog.get_logger(__name__)


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return (soft, hard).
    Many hosts start services with a soft limit of 1024, far below what the
    kernel allows the process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("nofile_limit_not_raised", soft=soft, hard=hard, error=str(exc))
    return soft, hard


def connection_cap(wanted: int, nofile_soft: int) -> int:
    """Connections to allow: what was asked for, but never more than a quarter of
    the descriptors the process may open. Under a flood, accepted connections
    past the cap hold a descriptor for the few loop turns it takes to close
    them (see ``__main__``: up to about three accept batches of the cap each),
    and sandboxes, the database and the model proxy need the rest."""
    return max(1, min(wanted, nofile_soft // 4))


def no_delay(transport: Any) -> None:
    """Turn Nagle's algorithm off on a TCP connection. asyncio does it only for sockets whose
    ``proto`` is ``IPPROTO_TCP``, and uvicorn's ``Config.bind_socket`` makes its listener with
    ``proto`` 0, so accepted connections kept Nagle on: a response written in two parts (head,
    then body) waited for the client's delayed ACK, 40 ms on every request after the first on a
    kept-alive connection (and small WebSocket frames likewise)."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def guarded_protocol(max_connections: int, header_timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a connection cap and a header deadline."""

    class GuardedH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                log.debug("connection_refused", reason="max_connections", limit=max_connections)
                transport.abort()
                return
            no_delay(transport)
            self._arm()

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(header_timeout_s, self._deadline_passed)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _deadline_passed(self) -> None:
            self._deadline = None
            if self.transport.is_closing() or self.transport.get_protocol() is not self:
                return  # gone, or upgraded to a WebSocket
            if self.cycle is not None and not self.cycle.response_complete:
                return  # its headers came: a request is being served
            log.debug("connection_cut", reason="header_timeout", timeout_s=header_timeout_s)
            self.transport.close()

        def handle_websocket_upgrade(self, event: Any) -> None:
            self._disarm()
            super().handle_websocket_upgrade(event)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request's headers get the same deadline

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return GuardedH11Protocol
