"""A session's durable, sequenced event log: every client-visible frame gets the session's next
``seq`` (1, 2, 3 … no gaps, across suspensions, rehydrations and ``kill -9``) and is written to the
database *before* any client sees it, so a client that reconnects with ``?after=N`` can be given
exactly what it missed (``replay.py``).

Two parts, as in the rest of the service:

- :class:`LogCore` decides, without I/O: which frames are durable, which seq each gets, what goes
  into the next write, and what may be broadcast now. Frames in, effects (:class:`Flush`,
  :class:`Broadcast`) out; unit-tested in ``tests/unit/test_eventlog.py``.
- :class:`EventLog` executes its effects: one writer task per session, bounded retries, and the
  fan-out callback the session gives it.

Decisions (docs/architecture.md, "The event log"):

- **Kinds.** ``stream_event`` and ``pong`` are *ephemeral*: no seq, never stored. They keep their
  place in the order: an ephemeral frame published after a durable one that is still being written
  waits for it (a delta never overtakes the message it belongs to); with nothing pending it goes at
  once. A ``store_unavailable`` error frame is *out of band*: it is about the log itself (which may
  be the thing that cannot write), so it is sent at once, without seq, and not stored.
- **Group commit.** At most one write is in flight per session. A batch is formed when the writer
  starts (``next_batch``), not when the first frame arrives, so frames published in the same
  event-loop step (a burst the runner wrote at once) go in one write; durable frames published
  while a write is in flight form the next batch (up to ``max_batch``). A turn's frames cost a few
  transactions, not one each, and a slow database batches more instead of queueing writes.
- **Seqs are given when a batch is formed**, from the store's last seq read once when the log
  opens (``open``), so nothing is numbered before that is known and a restarted service continues
  where the database says, not where a dead process was.
- **Database down.** A failed write is retried with backoff, for up to ``give_up_s``. Meanwhile
  nothing durable is broadcast (clients are told once, out of band, via ``on_degraded``). Past
  ``give_up_s``, or at once on a conflict (another writer took our seqs), the log is *broken*:
  ``on_broken`` ends the session with ``store_unavailable`` and every frame not yet durable is
  dropped: a client never sees a frame that a replay could not give it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog
from moorage_session_store.errors import SessionNotFound
from moorage_session_store.events import EventConflict, NewEvent, StoredEvent

from .errors import STORE_ERRORS, Code, MoorageError, store_unavailable
from .protocol import dumps

log = structlog.get_logger(__name__)

Frame = dict[str, Any]

#: Frames that carry no seq and are never stored.
EPHEMERAL_TYPES = frozenset({"stream_event", "pong", "status"})  # status: start progress (sessions.py)
#: Most frames one write carries.
MAX_BATCH = 256
#: Bytes of frames published but not yet broadcast past which the session stops reading its runner.
MAX_PENDING_BYTES = 8 * 1024 * 1024


class Kind(enum.Enum):
    DURABLE = "durable"  # gets a seq, written before it is broadcast
    EPHEMERAL = "ephemeral"  # no seq, in order behind what is pending
    OUT_OF_BAND = "out_of_band"  # no seq, at once: news about the log itself


def kind_of(frame: Frame) -> Kind:
    kind = frame.get("type")
    if kind in EPHEMERAL_TYPES:
        return Kind.EPHEMERAL
    if kind == "error" and frame.get("code") == Code.STORE_UNAVAILABLE:
        return Kind.OUT_OF_BAND
    return Kind.DURABLE


@dataclass(frozen=True, slots=True)
class Write:
    """Write these events (seqs contiguous), then call ``LogCore.written``."""

    events: tuple[NewEvent, ...]

    @property
    def last(self) -> int:
        return self.events[-1].seq


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Send these frames to every attached client, in order (durable ones carry their ``seq``)."""

    frames: tuple[Frame, ...]


@dataclass(frozen=True, slots=True)
class Flush:
    """Start the writer: it takes its batch with ``LogCore.next_batch`` when it runs."""


Effect = Flush | Broadcast


@dataclass(slots=True)
class _Item:
    frame: Frame
    at: datetime
    durable: bool
    size: int
    seq: int | None = None


@dataclass
class LogCore:
    """The log's decisions, without I/O. Not thread-safe; one per session."""

    max_batch: int = MAX_BATCH
    #: The last seq given out (``None`` until ``opened``).
    assigned: int | None = None
    #: The last seq known durable, and so broadcast (the ``last_seq`` clients are told).
    durable: int = 0
    broken: bool = False
    in_flight: Write | None = None
    flushing: bool = False  # a Flush was asked for and its batch not taken yet
    unnumbered: int = 0  # durable frames published and not yet in a batch
    #: Bytes of the frames published and not yet broadcast (as the caller measured them).
    pending_bytes: int = 0
    _queue: deque[_Item] = field(default_factory=deque)  # published, not yet broadcast

    @property
    def opened(self) -> bool:
        return self.assigned is not None

    @property
    def pending(self) -> bool:
        """Frames published but not yet broadcast (or a write not yet acknowledged)."""
        return bool(self._queue) or self.in_flight is not None

    def holds(self, frame: Frame) -> bool:
        """``frame`` (this very object) is published and not yet broadcast."""
        return any(item.frame is frame for item in self._queue)

    def open(self, last_seq: int) -> list[Effect]:
        """The store's last seq is known: numbering starts after it."""
        if self.assigned is None:
            self.assigned = self.durable = last_seq
        return self._step()

    def publish(self, frame: Frame, now: datetime, size: int = 0) -> list[Effect]:
        kind = kind_of(frame)
        if kind is Kind.OUT_OF_BAND:
            return [Broadcast((frame,))]
        if self.broken:
            return []  # the session is ending: what cannot be logged is not sent
        if kind is Kind.EPHEMERAL and not self._queue:
            return [Broadcast((frame,))]
        self._queue.append(_Item(frame, now, kind is Kind.DURABLE, size))
        self.pending_bytes += size
        self.unnumbered += kind is Kind.DURABLE
        return self._step()

    def written(self) -> list[Effect]:
        """The write in flight is durable."""
        assert self.in_flight is not None, "written() without a write in flight"
        self.durable, self.in_flight = self.in_flight.last, None
        return self._step()

    def give_up(self) -> int:
        """The store cannot take the write in flight: drop everything not durable (how many
        frames); later frames are dropped too, except out-of-band ones."""
        self.broken = True
        dropped = len(self._queue)
        self._queue.clear()
        self.pending_bytes = 0
        self.in_flight = None
        self.flushing = False
        self.unnumbered = 0
        return dropped

    def next_batch(self) -> Write | None:
        """The writer runs: number the durable frames not yet written (up to ``max_batch``) and
        make them the write in flight (``None``: nothing to write, or the log is broken)."""
        self.flushing = False
        if self.in_flight is not None or self.assigned is None or self.broken or not self.unnumbered:
            return None
        batch: list[NewEvent] = []
        for item in self._queue:
            if len(batch) == min(self.max_batch, self.unnumbered):
                break
            if item.durable and item.seq is None:
                self.assigned += 1
                item.seq = self.assigned
                batch.append(NewEvent(item.seq, str(item.frame.get("type")), item.frame, item.at))
        self.unnumbered -= len(batch)
        self.in_flight = Write(tuple(batch))
        return self.in_flight

    def _step(self) -> list[Effect]:
        effects: list[Effect] = []
        out: list[Frame] = []
        queue = self._queue
        while queue and (not queue[0].durable or (queue[0].seq is not None and queue[0].seq <= self.durable)):
            item = queue.popleft()
            self.pending_bytes -= item.size
            out.append(item.frame if item.seq is None else {**item.frame, "seq": item.seq})
        if out:
            effects.append(Broadcast(tuple(out)))
        idle = self.in_flight is None and not self.flushing and self.assigned is not None and not self.broken
        if idle and self.unnumbered:
            self.flushing = True
            effects.append(Flush())
        return effects


class EventStore(Protocol):
    """What the log needs of the database (``moorage_session_store.SessionEvents``)."""

    async def append(self, session_id: str, events: Sequence[NewEvent]) -> None: ...

    async def last_seq(self, session_id: str) -> int: ...

    async def bounds(self, session_id: str) -> tuple[int, int]: ...

    async def read(self, session_id: str, after: int, limit: int = ...) -> list[StoredEvent]: ...


@dataclass(frozen=True)
class Retry:
    """Backoff between attempts, and how long to keep trying before the session ends."""

    first_s: float = 0.05
    max_s: float = 2.0
    give_up_s: float = 60.0

    def delays(self) -> list[float]:
        delays, delay, total = [], self.first_s, 0.0
        while total < self.give_up_s:
            delay = min(delay, self.max_s, self.give_up_s - total)
            delays.append(delay)
            total += delay
            delay *= 2
        return delays


def _utcnow() -> datetime:
    return datetime.now(UTC)


class EventLog:
    """One session's log: ``publish`` frames, and the fan-out gets them once they are durable."""

    def __init__(
        self,
        store: EventStore,
        session_id: str,
        fanout: Callable[[Frame], None],
        on_broken: Callable[[MoorageError], None],
        on_degraded: Callable[[], None] | None = None,
        retry: Retry | None = None,
        max_batch: int = MAX_BATCH,
        max_pending_bytes: int = MAX_PENDING_BYTES,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.store = store
        self.session_id = session_id
        self._fanout = fanout
        self._on_broken = on_broken
        self._on_degraded = on_degraded
        self._retry = retry or Retry()
        self._clock = clock
        self.core = LogCore(max_batch=max_batch)
        self._opening: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._settled = asyncio.Event()
        self._settled.set()
        self._room = asyncio.Event()
        self._room.set()
        self.max_pending_bytes = max_pending_bytes
        self._degraded = False
        self.log = log.bind(session_id=session_id)
        self.writes = 0  # transactions, for the bench and the session summary
        #: Durable frames published so far; the n-th (from 0) gets seq ``base + 1 + n``.
        self.published = 0
        self._base: int | None = None
        self._waiters: list[tuple[int, asyncio.Future[int | None]]] = []  # (ordinal, its seq once durable)

    @property
    def last_seq(self) -> int:
        """The last seq broadcast: every frame up to it is in the store."""
        return self.core.durable

    def publish(self, frame: Frame) -> None:
        """Log and broadcast ``frame`` (or broadcast it at once, if it is not durable). Never waits."""
        kind = kind_of(frame)
        size = len(dumps(frame)) if kind is not Kind.OUT_OF_BAND else 0
        if kind is Kind.DURABLE and not self.core.broken:
            self.published += 1
        self._run(self.core.publish(frame, self._clock(), size))
        if not self.core.opened and self.core.pending:
            self._start_open()

    async def open(self) -> int:
        """Read where the session's log is (once; retried like a write): the ``last_seq`` to tell
        an attaching client. Raises the store's error if it cannot be read within the retries."""
        self._start_open()
        assert self._opening is not None
        await asyncio.shield(self._opening)
        if not self.core.opened:
            raise MoorageError(
                "the session's event log cannot be read; try again", code=Code.STORE_UNAVAILABLE, fatal=True
            )
        return self.core.durable

    async def seq_of(self, ordinal: int, timeout_s: float) -> int | None:
        """The seq of the durable frame published ``ordinal``-th (``published`` before it was
        published), once it is durable; ``None`` if it never will be (the log broke) or not
        within ``timeout_s``. How an HTTP client learns the id of what it sent."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int | None] = loop.create_future()
        self._waiters.append((ordinal, future))
        self._wake_waiters()
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            return None
        finally:
            self._waiters = [(o, f) for o, f in self._waiters if f is not future]

    def _wake_waiters(self) -> None:
        if not self._waiters:
            return
        for ordinal, future in self._waiters:
            if future.done():
                continue
            # Durable first: a frame stored before the log broke keeps its seq.
            if self._base is not None and self.core.durable >= self._base + 1 + ordinal:
                future.set_result(self._base + 1 + ordinal)
            elif self.core.broken:
                future.set_result(None)

    async def room(self) -> None:
        """Wait while more than ``max_pending_bytes`` of frames wait to be written (a slow or
        unreachable database, a flooding runner): the session stops reading its runner meanwhile,
        so memory stays bounded. Returns at once when the log is broken."""
        await self._room.wait()

    async def drain(self, timeout_s: float) -> bool:
        """Wait until every frame published so far is durable and broadcast (or dropped); bounded."""
        if self.core.pending and not self.core.opened:
            self._start_open()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._settled.wait()
        return not self.core.pending

    def close(self) -> None:
        """Stop writing (after ``drain``): anything still pending is not sent."""
        for task in (self._opening, self._writer):
            if task is not None:
                task.cancel()

    # -- driver ----------------------------------------------------------------

    def _start_open(self) -> None:
        if self._opening is None or (self._opening.done() and not self.core.opened and not self.core.broken):
            self._opening = asyncio.create_task(self._open(), name=f"eventlog-open-{self.session_id}")

    async def _open(self) -> None:
        last = await self._attempt(lambda: self.store.last_seq(self.session_id))
        if last is not None:
            if self._base is None:
                self._base = last
            self._run(self.core.open(last))

    def _run(self, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Broadcast):
                for frame in effect.frames:
                    self._fanout(frame)
            else:
                self._writer = asyncio.create_task(self._write(), name=f"eventlog-write-{self.session_id}")
        if self.core.pending:
            self._settled.clear()
        else:
            self._settled.set()
        if self.core.pending_bytes > self.max_pending_bytes:
            self._room.clear()
        else:
            self._room.set()
        self._wake_waiters()

    async def _write(self) -> None:
        write = self.core.next_batch()
        if write is None:
            self._run([])
            return

        async def append() -> int:
            await self.store.append(self.session_id, write.events)
            return write.last

        if await self._attempt(append) is not None:
            self.writes += 1
            self._run(self.core.written())

    async def _attempt(self, step: Callable[[], Any]) -> Any:
        """Run ``step`` with the retries; on giving up, break the log (``None``)."""
        delays = iter(self._retry.delays())
        while True:
            try:
                result = await step()
            except (EventConflict, SessionNotFound) as exc:
                return self._break(exc, retried=False)
            except STORE_ERRORS as exc:
                if (delay := next(delays, None)) is None:
                    return self._break(exc, retried=True)
                if not self._degraded:
                    self._degraded = True
                    self.log.warning("event_log_degraded", error=type(exc).__name__)
                    if self._on_degraded is not None:
                        self._on_degraded()
                await asyncio.sleep(delay)
                continue
            if self._degraded:
                self._degraded = False
                self.log.info("event_log_recovered")
            return result

    def _break(self, exc: BaseException, *, retried: bool) -> None:
        dropped = self.core.give_up()
        self._settled.set()
        self._room.set()
        self._wake_waiters()
        self.log.error("event_log_broken", error=type(exc).__name__, retried=retried, dropped=dropped)
        self._on_broken(MoorageError(store_unavailable(exc), code=Code.STORE_UNAVAILABLE, fatal=True))
