"""A WebSocket attached on a replica that does not run its session (issue 16): the session stays
on its owner, this connection follows it through the database.

``WS /v1/sessions/{id}`` reaching a replica while another one runs the session used to ask for a
handover and, with the session busy there, answer ``session_locked``. Now it is served here:

- **Frames out** come from the session's durable log, as a replay does: the ``session`` frame
  with the log's ``last_seq``, the replay from ``?after=`` if asked, then every frame the log gets,
  in seq order, each once (a cursor, not a gate: everything is read from the database). The
  owner's appends wake this replica (``notify.py``; the watch's ``appended``) and the loop reads
  every ``ma_views.POLL_S`` anyway. A fatal error in the log ends the connection with its close
  code, as on the owner. Previews (``stream_event``) and the owner's answers to one connection
  (``pong``, per-connection errors) are not in the log: pings are answered here, refusals come
  back with the command's answer, previews are the owner's alone.
- **Frames in** (messages, interrupts, answers) go to the owner as commands (``commands.py``,
  body ``{"frame": <the frame as sent>}``), which applies them as it applies its own clients'
  frames (``apply_frame``); its refusal comes back as this connection's error frame.
- **When the owner lets go** (idle, drained, killed and adopted), the next frame is applied here:
  the session is rehydrated on this replica, whose own fan-out then wakes this loop. The
  connection never notices the move.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from moorage_session_store import SessionRecord
from moorage_session_store.commands import Command

from .commands import SessionGone, error_result, owned_elsewhere, store_error_result
from .errors import STORE_ERRORS, Code, MoorageError, ProtocolError, close_code, store_unavailable
from .ma_views import POLL_S
from .manager import is_session_id
from .protocol import (
    CustomToolResultFrame,
    InterruptFrame,
    PermissionResponseFrame,
    PingFrame,
    UserFrame,
    dumps,
    parse_client_frame,
)
from .replay import Plan, plan, replay
from .sessions import Session

if TYPE_CHECKING:
    from .app import Services, WsConnection

log = structlog.get_logger(__name__)

#: Past every seq a log can hold: a tail reads whatever there is.
_ALL = 2**62
_START_FAILED = "the sandbox did not become ready in time"


async def deliver_frame(services: Services, session: Session, frame: Any) -> None:
    """Apply a client's message, interrupt or answer to a session running here (its own clients'
    frames and other replicas' commands alike); a refusal is a ``MoorageError``."""
    if isinstance(frame, UserFrame):
        if wait := services.turn_limits.take(session.tenant, time.monotonic()):
            raise ProtocolError(f"this tenant sends too many turns: retry in {wait:.1f}s", code=Code.RATE_LIMITED)
        await session.submit(frame)
    elif isinstance(frame, InterruptFrame):
        await session.interrupt()
    elif isinstance(frame, (PermissionResponseFrame, CustomToolResultFrame)):
        await session.answer(frame)


async def apply_frame(services: Services, command: Command) -> dict[str, Any]:
    """The owner's side: a frame a client sent to another replica (``{"frame": text}``)."""
    try:
        frame = parse_client_frame(str(command.body.get("frame", "")))
        session, _state = await services.sessions.attach(command.session_id, command.tenant)
        await deliver_frame(services, session, frame)
        return {"data": []}
    except MoorageError as exc:
        return error_result(exc)
    except TimeoutError:
        return error_result(MoorageError(_START_FAILED, code=Code.SANDBOX_START_FAILED, fatal=True))
    except STORE_ERRORS as exc:
        return store_error_result(exc)


async def runs_elsewhere(services: Services, session_id: str, tenant: str) -> SessionRecord | None:
    """The session's record if another replica runs it now and this one does not (then this
    connection follows it remotely); ``None`` for everything else, which the usual attach handles
    (an unknown id, another tenant's, one nobody runs, one running here)."""
    if not is_session_id(session_id) or services.sessions.runs(session_id):
        return None
    try:
        record = await services.sessions.records.get(session_id)
    except STORE_ERRORS:
        return None  # the attach reports the outage
    if record is None or record.tenant != tenant:
        return None
    return record if owned_elsewhere(record, services.settings.replica, datetime.now(UTC)) else None


async def serve_remote(
    services: Services, conn: WsConnection, writer: asyncio.Task[None], record: SessionRecord, after: int | None
) -> None:
    """Serve the connection for a session another replica runs, until either side ends it
    (``writer`` drains the connection's queue: done once the connection closed)."""
    store = services.sessions.deps.events
    watch = services.sessions.deps.watch
    with watch.listen(record.id) as listener:  # before last_seq is read: no wake-up is missed
        try:
            first, upto = await store.bounds(record.id)
            p = plan(after, first, upto) if after is not None else None
        except MoorageError as exc:
            _end(conn, exc)
            return
        except STORE_ERRORS as exc:
            _end(conn, MoorageError(store_unavailable(exc), code=Code.STORE_UNAVAILABLE, fatal=True))
            return
        frame: dict[str, object] = {
            "type": "session",
            "session_id": record.id,
            "state": "attached",
            "protocol": 1,
            "last_seq": upto,
        }
        if p is not None:
            frame["truncated"] = p.truncated
        if record.agent_id is not None:
            frame["agent"] = {"id": record.agent_id, "version": record.agent_version}
        conn.offer(dumps(frame))
        log.info("client_attached_remotely", session_id=record.id, owner=record.owner)
        reader = asyncio.create_task(_read(services, conn, record))
        tail = asyncio.create_task(_tail(conn, store, record.id, listener, p.after if p else upto, p))
        try:
            await asyncio.wait({reader, tail, writer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, tail):
                task.cancel()
            await asyncio.gather(reader, tail, return_exceptions=True)


async def _tail(conn: WsConnection, store: Any, session_id: str, listener: Any, cursor: int, p: Plan | None) -> None:
    """The log's frames past ``cursor``, in seq order, as they come (the replay first)."""
    fatal: list[dict[str, Any]] = []

    async def put(text: str) -> None:
        await conn.put(text)
        frame = json.loads(text)
        if frame.get("type") == "error" and frame.get("fatal") is True:
            fatal.append(frame)

    try:
        if p is not None:
            cursor = await replay(store, session_id, p, put)
        while not fatal:
            await listener.wait(POLL_S)
            if listener.ended:
                _end(conn, MoorageError("the session was deleted", code=Code.SESSION_DELETED, fatal=True))
                return
            listener.take()
            cursor = await replay(store, session_id, Plan(cursor, _ALL, False), put)
    except STORE_ERRORS as exc:
        _end(conn, MoorageError(store_unavailable(exc), code=Code.STORE_UNAVAILABLE, fatal=True))
        return
    code = str(fatal[0].get("code"))
    try:
        conn.close(close_code(Code(code)), code)
    except ValueError:  # cannot happen: the log holds the service's own codes
        conn.close(1011, str(Code.INTERNAL))


async def _read(services: Services, conn: WsConnection, record: SessionRecord) -> None:
    """The client's frames: pings answered here, the rest applied by whoever runs the session."""
    while (raw := await conn.receive()) is not None:
        try:
            if wait := conn.bucket.take(time.monotonic()):
                raise ProtocolError(f"too many frames: retry in {wait:.1f}s", code=Code.RATE_LIMITED)
            frame = parse_client_frame(raw)
            if isinstance(frame, PingFrame):
                conn.offer(dumps({"type": "pong", "id": frame.id}))
                continue
            await _apply(services, record, raw if isinstance(raw, str) else raw.decode(), frame)
        except MoorageError as exc:
            conn.offer(dumps(exc.frame()))
            if exc.fatal:
                conn.close(close_code(exc.code), exc.code)
                return
        except TimeoutError:
            error = MoorageError(_START_FAILED, code=Code.SANDBOX_START_FAILED, fatal=True)
            conn.offer(dumps(error.frame()))
        except STORE_ERRORS as exc:
            conn.offer(dumps(MoorageError(store_unavailable(exc), code=Code.STORE_UNAVAILABLE).frame()))


async def _apply(services: Services, record: SessionRecord, raw: str, frame: Any) -> None:
    """To the owner while another replica runs the session; here (rehydrating it) once none does."""
    if not services.sessions.runs(record.id):
        current = await services.sessions.records.get(record.id)
        try:
            if current is not None and await services.commands.forward(current, {"frame": raw}) is not None:
                return
        except SessionGone:
            raise MoorageError("the session was deleted", code=Code.SESSION_DELETED, fatal=True) from None
        # Nobody else runs it (or the owner let it go before taking the frame): it is ours now.
    session, _state = await services.sessions.attach(record.id, record.tenant)
    await deliver_frame(services, session, frame)


def _end(conn: WsConnection, error: MoorageError) -> None:
    with contextlib.suppress(Exception):
        conn.offer(dumps(error.frame()))
    conn.close(close_code(error.code), error.code)
