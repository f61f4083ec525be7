"""Sessions: one sandbox each, any number of attached connections.

``Session`` is the I/O driver around ``session_core.SessionCore``, which
decides everything (turn order, the queue, the guard, held results,
idleness, why the session ended). The driver feeds the core what happens —
client commands, runner frames, store acknowledgements, clock ticks — and
carries out the effects it returns.

Every client-visible frame leaves through one method, ``Session.emit``
(``durable=False`` for ``stream_event`` deltas and ``pong``): it is the only
path to subscribers.

Persistence: the runner's SessionStore calls arrive as ``rpc`` frames and go
to the database through ``TranscriptSink``; a turn's ``result`` is released
to clients only once its transcript is durable. However a session's sandbox
ends (idle, crash, kill, shutdown) the session is *suspended*: its workspace
is snapshotted into the database and a later attach rehydrates it in a fresh
sandbox with ``resume`` (``session_end``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from moorage_session_store import TurnUsage

from . import session_events as ev
from .accounting import Accounting, Ledger, budget_error
from .channel import (
    ChannelViolation,
    CustomToolUse,
    FilePut,
    Interrupt,
    Output,
    OutputsDone,
    PermissionRequest,
    Phase,
    Rpc,
    RunnerChannel,
    RunnerError,
    Sdk,
    ServiceFrame,
    User,
)
from .checks import AfterTurn
from .egress import ModelProxy
from .errors import STORE_ERRORS, Code, MoorageError, SandboxError, SessionError
from .eventlog import EventLog, EventStore
from .ma_views import LogWatch
from .metrics import Metrics
from .model_spans import ModelSpans
from .packages import PackageLayers
from .pending import AgentTools, Pending
from .pool import Started, WarmPool
from .protocol import Answer, Subscriber, UserFrame, dumps, user_message_line
from .relay import RpcRelay
from .sandbox.base import Sandbox, SandboxBackend
from .seams import AgentVersions, FileStore, RecordStore, TranscriptStore
from .session_core import (
    Limits,
    SessionCore,
)
from .session_end import STOP_GRACE_S, crash_error, wind_down
from .session_files import SessionFiles
from .session_start import start_sandbox
from .settings import Settings
from .transcripts import TranscriptSink
from .tunnel import NO_EGRESS, Policy
from .workspaces import Checkpoints

log = structlog.get_logger(__name__)


@dataclass
class Deps:
    """What every session shares (built once by the app's lifespan)."""

    settings: Settings
    backend: SandboxBackend
    proxy: ModelProxy
    pool: WarmPool
    records: RecordStore
    store: TranscriptStore
    replica: str
    metrics: Metrics
    accounting: Accounting
    events: EventStore  # the event log's table (SessionEvents)
    watch: LogWatch = field(default_factory=LogWatch)  # the HTTP view's streams (ma_views.py)
    spans: ModelSpans = field(default_factory=ModelSpans)  # the proxy's observer (model_spans.py)
    files: FileStore | None = None  # the Files API's store: expiry sweep, resources in, outputs out
    packages: PackageLayers | None = None  # environments' package layers (packages.py)
    agents: AgentVersions | None = None  # stored agents: those marked for warm-up (warm_marks.py)


def limits_of(settings: Settings) -> Limits:
    return Limits(
        max_turns=settings.max_turns,
        turn_timeout_s=settings.turn_timeout_s,
        interrupt_grace_s=settings.interrupt_grace_s,
        idle_timeout_s=settings.idle_timeout_s,
        max_queued=settings.max_queued_turns,
    )


class Session:
    def __init__(
        self,
        session_id: str,
        tenant: str,
        deps: Deps,
        on_closed: Callable[[Session], None],
        rehydrate: bool = False,
        resume: bool = False,
        prior_cost_usd: float = 0.0,
        agent: dict[str, Any] | None = None,
        environment: dict[str, Any] | None = None,
        egress: Policy = NO_EGRESS,
        budget_usd: float | None = None,
        vault_ids: tuple[str, ...] = (),
        claimed: Started | None = None,
    ) -> None:
        self.id = session_id
        self.claimed = claimed  # a warm pool's started agent made for this session's id and start frame
        self.pool_kind = "cold"  # what its sandbox was: a claimed started agent, a warm (loaded) one, or cold
        self.vault_ids = vault_ids  # its vaults' MCP credentials are injected outside it (vault_proxy.py)
        self.agent = agent  # the pinned agent version (``agents.runner_agent``), or the operator's default
        self.environment = environment  # {"id", "spec"} as pinned at creation, or None
        self.egress = egress  # what its sandbox may reach through the tunnel (egress_policy.session_policy)
        self.tenant = tenant
        self.deps = deps
        self.settings = settings = deps.settings
        self.backend = deps.backend
        self.proxy = deps.proxy
        self.records = deps.records
        self.pool = deps.pool
        self.metrics = deps.metrics
        self._on_closed = on_closed
        self.rehydrate = rehydrate
        self.resume = resume
        self.prior_cost_usd = prior_cost_usd  # spent in earlier lives of this session
        self.log = log.bind(session_id=session_id, tenant=tenant, backend=deps.backend.name)
        # The pinned agent carries its tool policy (agents.tool_policy); else the operator's default.
        self.agent_tools = AgentTools.parse(agent if agent is not None else settings.default_agent)
        self.core = SessionCore(limits_of(settings), Pending(settings.permission_timeout_s, self.agent_tools))
        self.sink = TranscriptSink(deps.store, tenant, session_id, deps.metrics)
        self.relay = RpcRelay(self.sink, self.log, self._on_degraded, self._on_durable)
        self.ledger = Ledger(tenant, prior_usd=prior_cost_usd, budget_usd=budget_usd)
        self.checks = AfterTurn(settings)
        self.checkpoints = Checkpoints(self.records, session_id, settings, self.log)
        self.files = SessionFiles(self, deps.files)
        self.sandbox: Sandbox | None = None
        self.channel = RunnerChannel(Phase.LOADED)  # the pool's start consumed ``loaded``
        self.violation: ChannelViolation | None = None
        self.sandbox_id = ""
        self.workspace: Path | None = None
        self.subscribers: set[Subscriber] = set()
        # Every client-visible frame goes through the event log (eventlog.py): seq, durable, then fan-out.
        self.events = EventLog(deps.events, session_id, self._fanout, self._on_log_broken, self._on_log_degraded)
        self._log_broken: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()
        self.start_error: MoorageError | None = None
        self.closed = False
        self.active = False  # counted in sessions_active
        self.created_at = time.monotonic()
        self.turns = 0
        self.started_s: float | None = None
        self.notices: list[dict[str, object]] = []  # non-fatal errors every new client is told
        self._turn_started = 0.0
        self._main: asyncio.Task[None] | None = None
        self._outbox: asyncio.Queue[ServiceFrame] = asyncio.Queue()
        self.tasks: list[asyncio.Task[None]] = []  # the writer and the clock
        self._stopping: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()  # the core's next deadline may have changed
        self.settled = asyncio.Event()  # set while not ``busy``
        self.settled.set()

    # -- lifecycle -----------------------------------------------------------

    def launch(self) -> None:
        self._main = asyncio.create_task(self._run(), name=f"session-{self.id}")

    async def _run(self) -> None:
        """Start, serve, finish. Whatever fails at any stage (start, restore,
        ready, pump, relay), ``ready`` is set and the session winds down: the
        start slot, the session counts, the uid, the cgroup and the proxy
        socket are always given back."""
        error: MoorageError | None = None
        try:
            try:
                # Start progress for the clients attached now (a later one reads ``sandbox`` in its
                # first frame): ephemeral, like deltas.
                if self.rehydrate:  # durable: the HTTP view's session.status_rescheduled, a webhook
                    self.emit({"type": "rescheduled", "reason": "rehydrated"})
                self.emit({"type": "status", "status": "starting", "rehydrated": self.rehydrate}, durable=False)
                self.started_s = await start_sandbox(self)
            except MoorageError as exc:
                self.start_error = error = exc
                self.log.warning("sandbox_start_failed", code=str(exc.code), error=exc.message)
                return
            self.metrics.sessions_active.labels(self.backend.name).inc()
            self.active = True
            if self.rehydrate:
                self.metrics.rehydrations.labels("ok").inc()
            self.tasks += [asyncio.create_task(self._write()), asyncio.create_task(self._clock())]
            status = {"type": "status", "status": "ready", "start_s": round(self.started_s, 3), "pool": self.pool_kind}
            self.emit(status, durable=False)
            self.ready.set()
            await self.feed(ev.Ready(time.monotonic()))
            await self._pump()
            await self.feed(ev.SandboxEnded(crash_error(self)))
        except Exception as exc:  # a bug must not leave the sandbox running or a slot taken
            self.log.exception("session_failed", started=self.ready.is_set())
            error = MoorageError(f"internal error: {type(exc).__name__}", fatal=True)
            if not self.ready.is_set():
                self.start_error = error
        finally:
            self.ready.set()
            if not self.closed:
                await self.feed(ev.Aborted(error))

    def violated(self, exc: ChannelViolation) -> None:
        """The runner broke the channel protocol: the session ends. Logged
        with our own words only (reason and detail), never the runner's bytes."""
        if self.violation is None:
            self.violation = exc
            self.log.warning("channel_violation", reason=str(exc.reason), detail=exc.detail)

    async def _pump(self) -> None:
        assert self.sandbox is not None
        while (frame := await self.sandbox.recv()) is not None:
            try:
                frame = self.channel.received(frame, self.core.guard.running)
                if isinstance(frame, (PermissionRequest, CustomToolUse)):
                    await self.feed(ev.RunnerRequest(frame, time.monotonic()))
                    continue
                if isinstance(frame, (FilePut, Output, OutputsDone)):
                    await self._on_file_frame(frame)  # an output waits while the store is behind
                    continue
            except ChannelViolation as exc:
                self.violated(exc)
                await self.feed(ev.ChannelBroken(exc.message))  # killed: a hostile runner gets no grace period
                return
            if isinstance(frame, Sdk):
                await self._on_sdk(frame.message)
                await self.events.room()  # the event log is behind: stop reading the runner
            elif isinstance(frame, Rpc):
                await self.relay.enqueue(self.sandbox, frame)  # waits while the relay is full
            elif isinstance(frame, RunnerError):
                await self.feed(ev.RunnerFailed(frame.message))
        # The runner's last flush (on shutdown) may still be in the queue.
        await self.relay.drain(STOP_GRACE_S)

    async def _on_file_frame(self, frame: FilePut | Output | OutputsDone) -> None:
        if isinstance(frame, FilePut):
            self.files.answered(frame)
        elif isinstance(frame, Output):
            await self.files.output(frame)
        else:
            self.files.done(frame)

    async def send_runner(self, frame: ServiceFrame, room: int) -> None:
        """Queue ``frame`` for the runner; wait while more than ``room`` frames are queued."""
        if self.closed:
            raise SessionError("the session is closed", code=Code.SESSION_CLOSED)
        self._outbox.put_nowait(frame)
        if self._outbox.qsize() > room:
            await self._outbox.join()

    async def _on_sdk(self, message: dict[str, Any]) -> None:
        await self.feed(ev.SdkMessage(message, time.monotonic()))

    async def _write(self) -> None:
        """Send the runner its frames in order. A runner that stops reading
        blocks only this task: the clock still interrupts and kills."""
        while True:
            frame = await self._outbox.get()
            assert self.sandbox is not None
            self.channel.sent(frame)
            try:
                await self.sandbox.send(frame.wire())
            except SandboxError:
                pass  # the sandbox is gone: the pump sees the end
            except Exception:  # a bug here must not leave later frames unsent silently
                self.log.exception("runner_send_failed", frame=type(frame).__name__)
            finally:
                self._outbox.task_done()

    async def _clock(self) -> None:
        """Tick the core at its next deadline (turn guard, idle timeout)."""
        while True:
            self._wake.clear()
            deadline = self.core.next_deadline()
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
                continue
            await self.feed(ev.Tick(time.monotonic()))

    # -- the core's inputs and effects ---------------------------------------

    def _step(self, event: ev.Input) -> list[ev.Effect]:
        effects = self.core.handle(event)
        self._wake.set()
        if self.core.busy and not self.closed:
            self.settled.clear()
        else:
            self.settled.set()
        return effects

    def feed_nowait(self, event: ev.Input) -> None:
        """Feed an input whose effects never wait (attach, detach, drain)."""
        for effect in self._step(event):
            if not self._do_now(effect):
                self.tasks.append(asyncio.create_task(self._do(effect)))

    async def feed(self, event: ev.Input) -> None:
        """Feed one input and carry out its effects, in order. A refusal
        for the asking client (``MoorageError``) propagates to the caller."""
        for effect in self._step(event):
            await self.run_effect(effect)

    async def run_effect(self, effect: ev.Effect) -> None:
        if not self._do_now(effect):
            await self._do(effect)

    def _do_now(self, effect: ev.Effect) -> bool:
        """Carry out an effect that needs no waiting; False if it does."""
        match effect:
            case ev.Emit(frame=frame, durable=durable):
                self.emit(frame, durable=durable)
            case ev.SendUser(line=line):
                if (scope := self.deps.accounting.exhausted(self.ledger)) is not None:
                    # A queued turn, and the turn before it spent the budget.
                    self.metrics.budget_exceeded.labels(scope).inc()
                    self.feed_nowait(ev.TurnRefused(budget_error(scope), time.monotonic()))
                    return True
                self._turn_started = time.monotonic()
                self._outbox.put_nowait(User(line))
            case ev.Settle(resolution=resolution):
                self.log.info("request_settled", kind=resolution.frame["type"], source=resolution.frame["source"])
                self.emit(resolution.frame)
                self._outbox.put_nowait(resolution.to_runner)
            case ev.SendInterrupt(reason=reason):
                if reason != "client":
                    self.log.warning("turn_interrupted", reason=reason, model_turns=self.core.guard.model_turns)
                self._outbox.put_nowait(Interrupt())
            case ev.FlushTranscript():
                self.relay.start_flusher()
            case ev.IdleEnded(idle_s=idle_s):
                self.metrics.session_idle_seconds.observe(idle_s)
            case ev.IdleTimedOut():
                self.log.info("session_idle_timeout", idle_s=self.settings.idle_timeout_s)
                self.metrics.sandbox_idle_timeouts.labels(self.backend.name).inc()
            case ev.StopSandbox():
                # Bounded and idempotent; the pump sees the end. Not one of
                # ``tasks``: the wind-down must not cancel a stop half done.
                # Before ready the start is cancelled instead (``close``).
                if self.sandbox is not None and self.ready.is_set():
                    self._stopping = asyncio.create_task(self._stop_quietly(self.sandbox))
            case _:
                return False
        return True

    async def _do(self, effect: ev.Effect) -> None:
        match effect:
            case ev.TurnEnded(result=result, timed_out=timed_out):
                await self._deliver_result(result, timed_out)
            case ev.KillSandbox(reason=reason):
                if reason != "channel_violation":
                    self.log.warning("turn_killed", reason=reason)
                if self.sandbox is not None:
                    await self.sandbox.kill()
            case ev.WindDown(error=error):
                await self._finish(error)

    async def _stop_quietly(self, sandbox: Sandbox) -> None:
        with contextlib.suppress(Exception):
            await sandbox.stop(STOP_GRACE_S)

    def _on_degraded(self) -> None:
        self.feed_nowait(ev.TranscriptFailed())
        self.notice_code(Code.STORE_UNAVAILABLE, "the database is unreachable: transcript writes are queued, retrying")

    async def _on_durable(self) -> None:
        self.notices = [n for n in self.notices if n["code"] != Code.STORE_UNAVAILABLE]
        await self.feed(ev.TranscriptDurable(time.monotonic()))

    async def _deliver_result(self, message: dict[str, Any], timed_out: bool) -> None:
        """A turn's result, its transcript durable: to clients, then its bookkeeping."""
        self.turns += 1
        outcome = self.metrics.turn_outcome(message.get("subtype"))
        self.metrics.turns.labels(outcome).inc()
        self.metrics.turn_seconds.labels(outcome).observe(time.monotonic() - self._turn_started)
        if message.get("subtype") == "error_max_turns":
            self.metrics.max_turns_exceeded.inc()
        metered = self.ledger.settle_turn(message, self.metrics)
        self.emit(message)
        for error in self.checks.limit_errors(self.sandbox):  # a process in the sandbox hit a limit
            self.emit(error.frame())
        # Spent now (the proxy refused a request, the SDK stopped at its own
        # max_budget_usd, or this turn used the rest): say so once, here.
        scope = self.ledger.refused or self.deps.accounting.exhausted(self.ledger)
        self.ledger.refused = None
        if scope is not None:
            self.metrics.budget_exceeded.labels(scope).inc()
            self.emit(budget_error(scope).frame())
        if timed_out:
            error = MoorageError(
                f"the turn ran past {self.settings.turn_timeout_s:g}s and was interrupted", code=Code.TURN_TIMEOUT
            )
            self.emit(error.frame())
        # Bookkeeping after the client has its result (the transcript, which
        # the result promises, is already written).
        tokens = self.ledger.take_tokens()
        usage = TurnUsage(
            input_tokens=tokens.get("input_tokens", 0),
            output_tokens=tokens.get("output_tokens", 0),
            cache_read_tokens=tokens.get("cache_read_input_tokens", 0),
            cache_creation_tokens=tokens.get("cache_creation_input_tokens", 0),
            active_seconds=time.monotonic() - self._turn_started,
        )
        try:
            await self.records.add_usage(self.id, 1, metered, usage)
        except STORE_ERRORS as exc:
            self.log.warning("usage_write_failed", error=type(exc).__name__)
        await self._check_workspace()
        if self.workspace is not None:
            self.checkpoints.after_turn(self.workspace)
        if self.deps.files is not None:  # what the turn left in /mnt/session/outputs
            self._outbox.put_nowait(self.files.collect())

    async def _check_workspace(self) -> None:
        """A workspace that filled up or grew past what a suspension saves:
        told now (and to clients attaching later), not at suspend."""
        was_full = self.checks.full
        for error in await self.checks.workspace_errors(self.workspace):
            self.notice_code(error.code, error.message)
        if was_full and not self.checks.full:  # space was freed: new clients need not hear of it
            self.notices = [n for n in self.notices if n["code"] != Code.WORKSPACE_FULL]

    async def _finish(self, error: MoorageError | None) -> None:
        """Stop everything this session holds and suspend it; runs once.
        The manager always hears of the end (``on_closed``: slots and counts)."""
        if self.closed:
            return
        self.closed = True
        self.settled.set()
        try:
            await wind_down(self, error)
        finally:
            self._on_closed(self)

    @property
    def busy(self) -> bool:
        """A turn is running, its result waits for its transcript, or messages wait."""
        return self.core.busy

    @property
    def in_use(self) -> bool:
        """A client, a turn, or a transcript still being written: not idle."""
        return self.core.in_use

    @property
    def draining(self) -> bool:
        return self.core.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        """The service is shutting down: no new turns."""
        if value:
            self.feed_nowait(ev.Drain())

    async def close(self, reason: MoorageError | None = None) -> None:
        """Stop the session on purpose (idle, shutdown), telling clients
        ``reason`` if given; the session is suspended either way. Bounded."""
        if self.closed or self._main is None:
            return
        await self.feed(ev.CloseRequested(reason))
        if not self.ready.is_set():
            self._main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._main
            if not self.closed:
                await self.feed(ev.Aborted(None))  # the reason, if given, reaches its clients
            return
        if self._stopping is not None:
            await asyncio.shield(self._stopping)
        await asyncio.shield(self._main)

    # -- commands from clients -----------------------------------------------

    async def _await_ready(self) -> None:
        if self.closed:
            raise SessionError("the session is closed", code=Code.SESSION_CLOSED, fatal=True)
        await asyncio.wait_for(self.ready.wait(), self.settings.sandbox_start_timeout_s + 5)
        if self.start_error is not None:
            raise self.start_error
        if self.closed or self.sandbox is None:
            raise SessionError("the session is closed", code=Code.SESSION_CLOSED, fatal=True)

    async def submit(self, frame: UserFrame) -> int:
        """A user turn: runs now, or queued behind the running one. Returns the log ordinal of
        its ``user_message`` echo (``events.seq_of`` tells its seq once it is durable)."""
        await self._await_ready()
        if not self.core.busy and (scope := self.deps.accounting.exhausted(self.ledger)) is not None:
            self.metrics.budget_exceeded.labels(scope).inc()
            raise budget_error(scope)
        mark = self.events.published  # the echo is the first durable frame the core emits
        await self.feed(ev.UserMessage(user_message_line(frame), time.monotonic()))
        return mark

    async def interrupt(self) -> None:
        await self._await_ready()
        await self.feed(ev.InterruptRequested(time.monotonic()))

    async def answer(self, frame: Answer) -> int:
        """A client's ``permission_response`` / ``custom_tool_result``: the
        first answer settles the request (``request_not_pending`` after).
        Returns the log ordinal of the logged answer (as ``submit``)."""
        await self._await_ready()
        mark = self.events.published
        await self.feed(ev.ClientAnswer(frame, time.monotonic()))
        return mark

    # -- fan-out -------------------------------------------------------------

    def emit(self, frame: dict[str, Any], *, durable: bool = True, to: Subscriber | None = None) -> None:
        """THE way a frame reaches clients: every attached subscriber through
        the event log (``eventlog.py``: a durable frame gets its ``seq`` and is
        written before it is fanned out; ``stream_event`` and ``pong`` are
        ephemeral and keep their place), or only ``to`` (a reply to one
        connection: pong, a refusal, the notices a new client is told; never
        logged). ``durable`` False marks ephemera."""
        if to is None:
            self.events.publish(frame)
        else:
            self._fanout(frame, to)

    def _on_log_broken(self, error: MoorageError) -> None:
        """The log cannot write: the session ends (nothing unlogged is ever sent)."""
        if self._log_broken is None and not self.closed:
            self._log_broken = asyncio.create_task(self.close(error))

    def _on_log_degraded(self) -> None:
        self.notice_code(
            Code.STORE_UNAVAILABLE, "the database is unreachable: the session's events are queued, retrying"
        )

    def _fanout(self, frame: dict[str, Any], to: Subscriber | None = None) -> None:
        if frame.get("type") == "error":
            self.metrics.count_error(frame.get("code"))  # never a label the runner chose
        text = dumps(frame)
        if to is None:
            self.deps.watch.broadcast(self.id, frame)
        for sub in [to] if to is not None else list(self.subscribers):
            if not sub.offer(text) and sub in self.subscribers:
                self.subscribers.discard(sub)
                sub.close(1008, Code.SLOW_CONSUMER)
                self.log.warning("client_dropped", reason="slow_consumer")
                self.feed_nowait(ev.Detached(time.monotonic()))

    def notice_code(self, code: Code, message: str) -> None:
        """A non-fatal error frame for every client, now and on attach."""
        frame = MoorageError(message, code=code).frame()
        self.notices.append(frame)
        self.emit(frame)

    def notice(self, error: MoorageError) -> None:
        """``notice_code`` for the manager (storage quota notices on rehydration)."""
        self.notice_code(error.code, error.message)

    def attach(self, sub: Subscriber, replaying: bool = False) -> None:
        """``replaying``: the client replays the log from a seq it has seen (``?after=``), which
        holds every request it has not seen yet; a live-only client is asked again."""
        self.subscribers.add(sub)
        self.feed_nowait(ev.Attached(time.monotonic()))
        for notice in self.notices:
            if not self.events.core.holds(notice):  # else it reaches the client from the log, with its seq
                self.emit(notice, durable=False, to=sub)  # told again, not a new event
        for request in [] if replaying else self.core.pending.replay():  # still waiting: asked again
            self.emit(request, durable=False, to=sub)

    def detach(self, sub: Subscriber) -> None:
        if sub in self.subscribers:
            self.subscribers.discard(sub)
            self.feed_nowait(ev.Detached(time.monotonic()))
