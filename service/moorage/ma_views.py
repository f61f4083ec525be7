"""The Managed Agents view of sessions' event logs on this replica: who is watching a log
(``LogWatch``), and each watched session's projection (``Projections``), caught up from the
database on demand.

The database is the one source: the list (``GET …/events``), the stream (``…/events/stream``) and
the answers to ``POST …/events`` all read the durable log through one ``Projection`` per session,
so they show the same events with the same ids and ``processed_at``. A live session tells the
watch when it broadcasts (``Session._fanout``): a durable frame wakes the streams, which read what
is new from the database; an ephemeral ``stream_event`` goes to the streams that asked for
previews, in its place behind the durable frames before it. A session running on another
replica wakes its streams here through a notification (``notify.py``: PostgreSQL ``NOTIFY`` on
every append, ``appended``); a session's streams also read the database every ``POLL_S`` (one
read per session and period, whatever the number of streams: ``Projection.poll``), so a lost
notification delays events, never loses them. Previews are the owner's alone: they are never
stored, so a stream on another replica gets the durable events only.

Memory: at most ``MAX_PROJECTIONS`` sessions' projections are kept (least recently used go; one
in use by a stream stays), each the session's events as Managed Agents events.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import time
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from moorage_session_store.events import MAX_PAGE

from .eventlog import EventStore, Kind, kind_of
from .ma_events import MaEvent, Projector, event_id
from .pending import AgentTools

Frame = dict[str, Any]

MAX_PROJECTIONS = 256
#: Previews a stream holds for its client at most (more are dropped: previews are best-effort).
MAX_PREVIEW_FRAMES = 1024
#: How often a stream reads the database with no news (a session live on another replica).
POLL_S = 2.0


@dataclass
class Projection:
    """One session's events so far, as Managed Agents events, in log order."""

    session_id: str
    projector: Projector
    events: list[MaEvent] = field(default_factory=list)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0  # streams holding it
    read_at: float = float("-inf")  # when the log was last read to its end (monotonic)

    async def catch_up(self, store: EventStore, upto: int | None = None) -> None:
        """Project what the log holds past what was projected, up to seq ``upto`` if given (one
        reader at a time)."""
        async with self.lock:
            await self._read(store, upto)

    async def poll(self, store: EventStore, now: float, period_s: float = POLL_S) -> None:
        """A stream's look at the log with no news: read it to its end, unless another of the
        session's streams did less than ``period_s`` ago (news in between wakes them all), so a
        session's idle streams read the database once a period between them, not once each."""
        async with self.lock:
            if now - self.read_at >= period_s:
                await self._read(store, None, now)

    async def _read(self, store: EventStore, upto: int | None, now: float | None = None) -> None:
        while upto is None or self.projector.last_seq < upto:
            want = MAX_PAGE if upto is None else min(MAX_PAGE, upto - self.projector.last_seq)
            frames = await store.read(self.session_id, self.projector.last_seq, want)
            for frame in frames:
                self.events.extend(self.projector.project(frame))
            if len(frames) < want:
                if upto is None:
                    self.read_at = time.monotonic() if now is None else now
                return

    def count_upto(self, seq: int) -> int:
        """How many of ``events`` come from frames up to ``seq`` (ids sort in log order)."""
        return bisect.bisect_left(self.events, event_id(seq + 1), key=lambda e: e.id)

    def index_of(self, event_id: str) -> int | None:
        """Where ``event_id`` is in ``events`` (ids sort in log order: a bisection)."""
        lo, hi = 0, len(self.events)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.events[mid].id < event_id:
                lo = mid + 1
            else:
                hi = mid
        return lo if lo < len(self.events) and self.events[lo].id == event_id else None


class Projections:
    """The projections this replica keeps, by session id (an LRU)."""

    def __init__(self, store: EventStore, limit: int = MAX_PROJECTIONS) -> None:
        self.store = store
        self.limit = limit
        self._kept: OrderedDict[str, Projection] = OrderedDict()

    async def get(self, session_id: str, tools: AgentTools) -> Projection:
        """The session's projection, caught up with its log. ``tools`` is its agent's tool policy
        (fixed for a session: it is the pinned agent version's)."""
        projection = self._kept.get(session_id)
        if projection is None:
            projection = Projection(session_id, Projector(tools))
            self._kept[session_id] = projection
            self._trim(keep=session_id)
        self._kept.move_to_end(session_id)
        await projection.catch_up(self.store)
        return projection

    @contextlib.contextmanager
    def held(self, projection: Projection) -> Iterator[Projection]:
        """Keep ``projection`` while a stream uses it."""
        projection.users += 1
        try:
            yield projection
        finally:
            projection.users -= 1

    def forget(self, session_id: str) -> None:
        """The session is deleted."""
        self._kept.pop(session_id, None)

    def _trim(self, keep: str) -> None:
        """Drop the least recently used projections no stream holds, down to ``limit``; never
        ``keep`` (the one being got): while every other one is held, the limit is exceeded."""
        for session_id in list(self._kept):
            if len(self._kept) <= self.limit:
                return
            if self._kept[session_id].users == 0 and session_id != keep:
                del self._kept[session_id]


class Listener:
    """One stream's news of its session: the log has frames up to ``seq`` (read them from the
    database), and the previews to send, each in its place after the durable frames before it."""

    def __init__(self, previews: bool) -> None:
        self.previews = previews
        self.items: deque[int | Frame] = deque()  # a seq (news up to it) or a stream_event frame
        self.news = asyncio.Event()
        self.ended = False  # the session was deleted

    def durable(self, seq: int) -> None:
        if self.items and isinstance(self.items[-1], int):
            self.items[-1] = seq  # one read covers both
        else:
            self.items.append(seq)
        self.news.set()

    def ephemeral(self, frame: Frame) -> None:
        if self.previews and frame.get("type") == "stream_event" and len(self.items) < MAX_PREVIEW_FRAMES:
            self.items.append(frame)
            self.news.set()

    def end(self) -> None:
        self.ended = True
        self.news.set()

    async def wait(self, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.news.wait(), timeout_s)
        self.news.clear()

    def take(self) -> list[int | Frame]:
        items = list(self.items)
        self.items.clear()
        return items


class LogWatch:
    """Who listens to which session's log on this replica."""

    def __init__(self) -> None:
        self._listeners: dict[str, set[Listener]] = {}

    @contextlib.contextmanager
    def listen(self, session_id: str, previews: bool = False) -> Iterator[Listener]:
        listener = Listener(previews)
        self._listeners.setdefault(session_id, set()).add(listener)
        try:
            yield listener
        finally:
            listeners = self._listeners.get(session_id)
            if listeners is not None:
                listeners.discard(listener)
                if not listeners:
                    del self._listeners[session_id]

    def broadcast(self, session_id: str, frame: Frame) -> None:
        """A live session broadcast ``frame`` (durable ones carry their ``seq``)."""
        listeners = self._listeners.get(session_id)
        if not listeners:
            return
        seq = frame.get("seq")
        durable = kind_of(frame) is Kind.DURABLE and isinstance(seq, int)
        for listener in listeners:
            if durable:
                listener.durable(seq)  # type: ignore[arg-type]
            else:
                listener.ephemeral(frame)

    def appended(self, session_id: str, seq: int) -> None:
        """Another replica wrote the session's log up to ``seq`` (a notification): its streams
        here read it from the database."""
        for listener in self._listeners.get(session_id, ()):
            listener.durable(seq)

    def everyone(self) -> None:
        """Notifications may have been missed (the listener reconnected): every stream reads."""
        for listeners in self._listeners.values():
            for listener in listeners:
                listener.news.set()

    def deleted(self, session_id: str) -> None:
        for listener in self._listeners.get(session_id, ()):
            listener.end()

    def __len__(self) -> int:
        return sum(len(listeners) for listeners in self._listeners.values())
