"""Admission for the model proxy's listening sockets: a cap and a deadline.

A sandbox can open connections to its model socket as fast as it likes and
then send nothing (slowloris). Every accepted connection holds a file
descriptor of the service, so each listening socket puts its connections
behind a ``Gate``, keyed by who they come from (the sandbox a unix socket
belongs to; the peer address on the TCP front, one per pod):

- at most ``cap`` connections per key at a time. A connection past the cap
  is refused cheaply: a fixed 503 written straight to the transport and the
  socket closed, before any parser, task or buffer exists for it. A slot is
  held from accept until the connection is gone *and* its request handler
  has returned (a handler draining an upstream response after the sandbox
  hung up keeps its slot: hanging up does not buy more concurrency);
- a request head must be complete within ``head_timeout_s`` of the
  connection opening, or of the previous response on a kept-alive
  connection; otherwise the connection is closed. (The body has its own
  deadline, enforced where it is read.)

``GatedProtocol`` wraps aiohttp's own protocol object, passing every event
through; the web handler marks the start and end of each request with
``in_request``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import cast

REFUSAL_BODY = (
    b'{"type":"error","error":{"type":"overloaded_error",'
    b'"message":"too many open connections from this sandbox to the model proxy"}}'
)
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(REFUSAL_BODY)
) + REFUSAL_BODY


class Gate:
    """Counts open connections per key; see the module docstring."""

    def __init__(self, cap: int, head_timeout_s: float) -> None:
        self.cap = cap
        self.head_timeout_s = head_timeout_s
        self.open: dict[str, int] = {}
        self.refused = 0
        self._by_transport: dict[asyncio.BaseTransport, GatedProtocol] = {}

    def admit(self, key: str) -> bool:
        if self.open.get(key, 0) >= self.cap:
            self.refused += 1
            return False
        self.open[key] = self.open.get(key, 0) + 1
        return True

    def release(self, key: str) -> None:
        left = self.open.get(key, 0) - 1
        if left > 0:
            self.open[key] = left
        else:
            self.open.pop(key, None)

    def factory(
        self, key: str | Callable[[asyncio.BaseTransport], str], inner: Callable[[], asyncio.Protocol]
    ) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``loop.create_*_server``: ``inner``'s
        protocols behind this gate, under a fixed key or one read from the
        transport (the peer address)."""
        return lambda: GatedProtocol(self, key, inner)

    @contextlib.contextmanager
    def in_request(self, transport: asyncio.BaseTransport | None) -> Iterator[None]:
        """Around a request's handler: no head deadline while it runs, and
        the connection's slot is held until it returns."""
        conn = self._by_transport.get(transport) if transport is not None else None
        if conn is not None:
            conn.handler_started()
        try:
            yield
        finally:
            if conn is not None:
                conn.handler_finished()


class GatedProtocol(asyncio.Protocol):
    """One connection: admitted (then passed through to aiohttp) or refused."""

    def __init__(
        self, gate: Gate, key: str | Callable[[asyncio.BaseTransport], str], inner: Callable[[], asyncio.Protocol]
    ) -> None:
        self._gate = gate
        self._key_of = key
        self._make_inner = inner
        self._key = ""
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._busy = False
        self._lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._key = self._key_of if isinstance(self._key_of, str) else self._key_of(transport)
        if not self._gate.admit(self._key):
            if isinstance(transport, asyncio.WriteTransport):
                transport.write(REFUSAL)
            transport.close()
            return
        self._transport = cast(asyncio.Transport, transport)
        self._gate._by_transport[transport] = self
        self._arm()
        self._inner = self._make_inner()
        self._inner.connection_made(transport)

    def _arm(self) -> None:
        self._disarm()
        self._timer = asyncio.get_running_loop().call_later(self._gate.head_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if not self._busy and self._transport is not None:
            self._transport.abort()

    def handler_started(self) -> None:
        self._busy = True
        self._disarm()

    def handler_finished(self) -> None:
        self._busy = False
        if self._lost:
            self._gate.release(self._key)
        else:
            self._arm()  # the next request on this connection gets its own deadline

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is None:  # refused at the door
            return
        self._disarm()
        self._lost = True
        if self._transport is not None:
            self._gate._by_transport.pop(self._transport, None)
        self._inner.connection_lost(exc)
        if not self._busy:
            self._gate.release(self._key)
