"""A session's events over HTTP (../shared/MANAGED_AGENTS.md §6, §7): ``GET …/events`` (the
persisted events, paged), ``POST …/events`` (user messages, interrupts, tool confirmations,
custom tool results) and ``GET …/events/stream`` (server-sent events, held across turns).

All three read one ``ma_views.Projection`` of the session's durable log, so the list and the
stream show the same events with the same ids. ``POST`` answers once what it sent is in the log:
the echo it returns carries the id the stream and the list show (an interrupt is not logged: its
echo has an empty id, as the hosted service's may).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from moorage_session_store import SessionRecord, SessionRecords
from moorage_session_store.commands import Command
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from . import sse
from .commands import error_result, store_error_result
from .errors import STORE_ERRORS, Code, MoorageError, ProtocolError
from .http_api import ApiError, decode_page, encode_page, endpoint, json_body, limit_param
from .ma_events import event_id, timestamp
from .ma_query import order_of, select, time_range
from .ma_sessions import ClientEvent, Confirmation, CustomResult, Interrupt, parse_send
from .ma_views import POLL_S, Listener, Projection
from .protocol import UserFrame
from .sessions import Session
from .sessions_api import ACCEPT_WAIT_S, get_record, projection_of, services_of

if TYPE_CHECKING:
    from .app import Services

log = structlog.get_logger(__name__)

DEFAULT_EVENTS_LIMIT = 100
MAX_EVENTS_LIMIT = 1000


# -- list -------------------------------------------------------------------------


async def _list(request: Request, tenant: str, records: SessionRecords) -> Response:
    services = services_of(request)
    query = request.query_params
    try:
        when = time_range(query)
        order = order_of(query.get("order"))
    except ValueError as exc:
        raise ApiError(str(exc), code=Code.INVALID_REQUEST) from None
    limit = limit_param(request, DEFAULT_EVENTS_LIMIT, MAX_EVENTS_LIMIT)
    cursor = decode_page(query.get("page"))
    if cursor is not None and not (len(cursor) == 1 and isinstance(cursor[0], str)):
        raise ApiError("page is not a cursor this list gave", code=Code.INVALID_REQUEST)
    record = await get_record(records, tenant, request.path_params["session_id"])
    projection = await projection_of(services, record)
    chosen = select(projection.events, query.getlist("types[]"), when, order)
    if cursor is not None:
        last = cursor[0]
        chosen = [e for e in chosen if (e.id > last if order == "asc" else e.id < last)]
    page = chosen[:limit]
    next_page = encode_page([page[-1].id]) if len(chosen) > limit else None
    return JSONResponse({"data": [e.wire() for e in page], "next_page": next_page})


# -- send -------------------------------------------------------------------------


async def _send(request: Request, tenant: str, records: SessionRecords) -> Response:
    services = services_of(request)
    session_id = request.path_params["session_id"]
    body = await json_body(request)
    events = parse_send(body)
    record = await get_record(records, tenant, session_id)
    if record.archived_at is not None:
        raise ApiError(f"session {session_id} is archived: it takes no more events", code=Code.SESSION_ARCHIVED)
    # If another replica runs it, the owner applies the events (commands.py); it stays there.
    assert isinstance(body, dict)  # parse_send took it
    if (data := await services.commands.forward(record, body)) is not None:
        return JSONResponse({"data": data})
    return JSONResponse({"data": await deliver(services, record, events)})


async def deliver(services: Services, record: SessionRecord, events: list[ClientEvent]) -> list[dict[str, Any]]:
    """Hand ``events`` to the session (rehydrated here if nobody runs it); their echoes."""
    session, _state = await services.sessions.attach(record.id, record.tenant)
    return [await _apply(services, record, session, event) for event in events]


async def run_command(services: Services, command: Command) -> dict[str, Any]:
    """Apply a command another replica took for a session that runs here (commands.py): its
    answer, as that replica returns it."""
    try:
        record = await get_record(SessionRecords(services.db), command.tenant, command.session_id)
        return {"data": await deliver(services, record, parse_send(command.body))}
    except MoorageError as exc:
        return error_result(exc)
    except STORE_ERRORS as exc:
        return store_error_result(exc)


async def _apply(services: Services, record: SessionRecord, session: Session, event: ClientEvent) -> dict[str, Any]:
    """Hand one event to the session; its echo once it is in the log."""
    if isinstance(event, Interrupt):
        try:
            await session.interrupt()
        except ProtocolError as exc:
            if exc.code != Code.NO_TURN_RUNNING:
                raise
        return {"type": "user.interrupt", "id": "", "processed_at": timestamp(datetime.now(UTC))}
    if isinstance(event, UserFrame):
        if wait := services.turn_limits.take(session.tenant, time.monotonic()):
            raise ApiError(
                f"this tenant sends too many turns: retry in {wait:.1f}s",
                code=Code.RATE_LIMITED,
                headers={"retry-after": str(max(1, round(wait)))},
            )
        ordinal = await session.submit(event)
    else:
        ordinal = await session.answer(await _answer(services, record, event))
    seq = await session.events.seq_of(ordinal, ACCEPT_WAIT_S)
    if seq is None:  # handed to the session already: a re-send could run it twice
        raise ApiError(
            "the event was taken but its log entry is not confirmed; list the events before sending it again",
            code=Code.STORE_UNAVAILABLE,
            headers={"x-should-retry": "false"},
        )
    projection = await projection_of(services, record)
    index = projection.index_of(event_id(seq))
    if index is None:  # cannot happen: the logged frame of a message or answer projects to one event
        raise ApiError("the event was logged but cannot be shown", code=Code.INTERNAL)
    return projection.events[index].wire()


async def _answer(services: Services, record: SessionRecord, event: Confirmation | CustomResult) -> Any:
    """The WebSocket answer frame for the request the event's id names."""
    projection = await projection_of(services, record)
    waiting = projection.projector.waiting_for(event.event_id)
    kind = "permission_request" if isinstance(event, Confirmation) else "custom_tool_use"
    if waiting is None or waiting.kind != kind:
        what = "tool confirmation" if isinstance(event, Confirmation) else "custom tool result"
        raise ApiError(f"no {what} is awaited for event {event.event_id}", code=Code.REQUEST_NOT_PENDING)
    return event.frame(waiting.request_id)


# -- stream -----------------------------------------------------------------------


async def _stream(request: Request, tenant: str, records: SessionRecords) -> Response:
    services = services_of(request)
    kinds = request.query_params.getlist("event_deltas[]")
    if set(kinds) - sse.PREVIEWABLE:
        raise ApiError("event_deltas[] takes agent.message, agent.thinking", code=Code.INVALID_REQUEST)
    record = await get_record(records, tenant, request.path_params["session_id"])
    projection = await projection_of(services, record)
    # In the step the projection was caught up in (no await since): what it holds came before the
    # connection, and every later frame wakes this listener. Taken here, not in the body, which
    # runs only after the client has the headers and may already have sent its message.
    held = contextlib.ExitStack()
    held.enter_context(services.projections.held(projection))
    listener = held.enter_context(services.sessions.deps.watch.listen(projection.session_id, bool(kinds)))
    sent, seen = len(projection.events), projection.projector.last_seq
    services.metrics.sse_streams_active.inc()  # until the stream ends, or its body never runs
    held.callback(services.metrics.sse_streams_active.dec)
    body = _frames(services, projection, listener, (sent, seen), kinds, held)
    # The background task lets go if the body never ran (the client left before it started).
    return StreamingResponse(body, headers=sse.HEADERS, background=BackgroundTask(held.close))


async def _frames(
    services: Services,
    projection: Projection,
    listener: Listener,
    start: tuple[int, int],
    kinds: list[str],
    held: contextlib.ExitStack,
) -> AsyncGenerator[bytes, None]:
    """The stream: the events past ``start`` (how many it had, the last seq projected), previews
    in their place, keep-alives between. The projection is shared with the session's other
    streams and may be ahead of this one's news: a stream sends only up to what it was told of,
    so a preview is never overtaken by the message it previews."""
    store = services.projections.store
    preview = sse.Preview(kinds)
    sent, seen = start  # events sent; the last seq this stream knows is logged
    with held:
        yield sse.keep_alive()  # the status line and headers are out: the client waits for a first byte
        quiet_since = time.monotonic()
        while not services.sessions.draining:
            await listener.wait(POLL_S)
            if listener.ended:
                yield sse.encode({"type": "session.deleted", "id": "", "processed_at": timestamp(datetime.now(UTC))})
                return
            out: list[bytes] = []
            try:
                items: list[int | dict[str, Any] | None] = [*listener.take()] or [None]
                for item in items:
                    if isinstance(item, dict):  # a preview: after the durable frames before it, sent already
                        out += [sse.encode(frame) for frame in preview.feed(item, event_id(seen + 1))]
                        continue
                    # News up to seq ``item`` (not further: a preview queued after it must not be
                    # overtaken by the message it previews), or a poll (everything there is, read
                    # once a period for all the session's streams).
                    if item is None:
                        await projection.poll(store, time.monotonic())
                    else:
                        await projection.catch_up(store, item)
                    seen = projection.projector.last_seq if item is None else max(seen, item)
                    upto = projection.count_upto(seen)
                    out += [sse.encode_event(e) for e in projection.events[sent:upto]]
                    sent = max(sent, upto)
            except STORE_ERRORS as exc:
                log.warning("event_stream_read_failed", session_id=projection.session_id, error=type(exc).__name__)
            if out:
                yield b"".join(out)
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= sse.KEEP_ALIVE_S:
                yield sse.keep_alive()
                quiet_since = time.monotonic()


def _endpoint(
    handler: Callable[[Request, str, SessionRecords], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    return endpoint(handler, SessionRecords)


def routes() -> list[Route]:
    return [
        Route("/v1/sessions/{session_id}/events", _endpoint(_list), methods=["GET"]),
        Route("/v1/sessions/{session_id}/events", _endpoint(_send), methods=["POST"]),
        Route("/v1/sessions/{session_id}/events/stream", _endpoint(_stream), methods=["GET"]),
    ]
