"""Model request spans: every ``/v1/messages`` request the model proxy meters, in its session's log.

The proxy (``egress.ModelProxy``) tells a :class:`ModelSpans` of each request: when it arrives,
each usage delta as it is charged, and when it is over. ``ModelSpans`` routes it by sandbox id to
the session that owns the sandbox (sessions register as they register their ledger with
``accounting.Accounting``) and the session logs two durable frames through ``Session.emit``:

- ``{"type": "model_request_start", "id": "mreq_<hex>"}`` when the request arrives;
- ``{"type": "model_request_end", "id": <same>, "usage": {…four token counts…}, "is_error": bool}``
  when it is over. ``usage`` is what the proxy metered for that one response (``egress_meter``:
  exactly what was charged), zeros for a request that got no model answer.

Decisions (docs/protocol.md, "Model requests"):

- **Every request**, including one the budget check refuses (``is_error: true``, zero usage): a
  client counting requests sees the attempt that ended the turn, and each start has its end.
- **Bound at arrival**, like the charge: a span is told to the session that owned the sandbox
  when its request arrived.
- **Closed when its session goes.** A response still draining when its session's sandbox ends
  (kill, crash, shutdown) outlives the session's log, so ``unregister`` closes its span at once,
  ``is_error: true`` with the usage metered so far; the proxy still charges the rest to the
  ledger, and its later end is dropped. A session's log thus never has a start without an end
  (short of a ``kill -9`` of the service).
- **Never blocks**: every call is synchronous; ``emit`` only queues the frame on the session's
  event log.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .egress_meter import USAGE_KEYS

Frame = dict[str, Any]
Emit = Callable[[Frame], None]  # Session.emit: log the frame (with its seq), then fan it out
SPAN_PREFIX = "mreq_"


def new_span_id() -> str:
    return SPAN_PREFIX + secrets.token_hex(12)


def start_frame(span: str) -> Frame:
    return {"type": "model_request_start", "id": span}


def end_frame(span: str, usage: Mapping[str, int], is_error: bool) -> Frame:
    return {
        "type": "model_request_end",
        "id": span,
        "usage": {key: usage.get(key, 0) for key in USAGE_KEYS},
        "is_error": is_error,
    }


@dataclass
class _Open:
    sandbox_id: str
    emit: Emit
    usage: dict[str, int] = field(default_factory=dict)


class ModelSpans:
    """``egress.RequestObserver``: spans routed by sandbox id to the owning session's log."""

    def __init__(self, new_id: Callable[[], str] = new_span_id) -> None:
        self._new_id = new_id
        self._sessions: dict[str, Emit] = {}  # by sandbox id
        self._open: dict[str, _Open] = {}  # by span id

    def register(self, sandbox_id: str, emit: Emit) -> None:
        """The session that owns ``sandbox_id`` logs its spans with ``emit`` from now on."""
        self._sessions[sandbox_id] = emit

    def unregister(self, sandbox_id: str) -> None:
        """The session is ending: no more spans for it; those still open end now (see above).
        Call it before the session's log is drained and closed."""
        emit = self._sessions.pop(sandbox_id, None)
        for span, open_ in list(self._open.items()):
            if open_.sandbox_id == sandbox_id:
                del self._open[span]
                if emit is not None:
                    emit(end_frame(span, open_.usage, True))

    def open_spans(self, sandbox_id: str) -> int:
        return sum(1 for open_ in self._open.values() if open_.sandbox_id == sandbox_id)

    # -- egress.RequestObserver ---------------------------------------------

    def started(self, sandbox_id: str) -> str | None:
        emit = self._sessions.get(sandbox_id)
        if emit is None:
            return None  # a warm sandbox no session owns yet, or one whose session ended
        span = self._new_id()
        self._open[span] = _Open(sandbox_id, emit)
        emit(start_frame(span))
        return span

    def metered(self, span: str, usage: dict[str, int]) -> None:
        open_ = self._open.get(span)
        if open_ is not None:
            for key, count in usage.items():
                open_.usage[key] = open_.usage.get(key, 0) + count

    def ended(self, span: str, is_error: bool) -> None:
        open_ = self._open.pop(span, None)
        if open_ is not None:  # None: closed already, when its session ended
            open_.emit(end_frame(span, open_.usage, is_error))
