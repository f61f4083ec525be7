"""Sessions: one sandbox each, any number of attached connections.

A session starts its sandbox as soon as it is created (the CLI warms up while
the user types), relays client commands to the runner and broadcasts every
runner message to every attached connection. It enforces one turn at a time,
the max-turns backstop and the per-turn wall clock (``protocol.TurnGuard``),
and suspends once no client has been attached and no turn has run for
``idle_timeout_s``.

Persistence: the runner's SessionStore calls arrive as ``rpc`` frames and go
to the database through ``TranscriptSink``; a turn's ``result`` is released
to clients only once its transcript is durable. However a session's sandbox
ends (idle, crash, kill, shutdown) the session is *suspended*: its workspace
is snapshotted into the database and a later attach rehydrates it in a fresh
sandbox with ``resume``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog
from moorage_session_store.events import SessionEvents

from .accounting import Accounting, Ledger, budget_error
from .bounded import sdk_buffer_bytes
from .channel import (
    ChannelViolation,
    CustomToolUse,
    Garbage,
    Interrupt,
    PermissionRequest,
    Phase,
    Ready,
    Reason,
    Restore,
    Restored,
    Rpc,
    RunnerChannel,
    RunnerError,
    Sdk,
    ServiceFrame,
    Start,
    User,
)
from .checks import AfterTurn
from .egress import ModelProxy
from .errors import (
    STORE_ERRORS,
    Code,
    MoorageError,
    ProtocolError,
    SandboxError,
    SessionError,
    close_code,
    store_unavailable,
)
from .eventlog import EventLog, EventStore
from .metrics import Metrics
from .pending import AgentTools, Pending, Resolution
from .pool import WarmPool, start_loaded
from .protocol import Action, Answer, Subscriber, TurnGuard, UserFrame, dumps, user_message_line
from .relay import RpcRelay
from .sandbox.base import MODEL_SOCKET, TUNNEL_SOCKET, Sandbox, SandboxBackend
from .settings import Settings
from .transcripts import TranscriptSink
from .workspaces import Checkpoints, restore_frames, suspend_record

log = structlog.get_logger(__name__)

STOP_GRACE_S = 5.0
_Want = TypeVar("_Want", Ready, Restored)
MODEL_PROXY = f"unix:{MODEL_SOCKET}"  # where every backend mounts the proxy


@dataclass
class Deps:
    """What every session shares (built once by the app's lifespan)."""

    settings: Settings
    backend: SandboxBackend
    proxy: ModelProxy
    pool: WarmPool
    records: Any  # moorage_session_store.records.SessionRecords
    store: Any  # moorage_session_store.SQLModelSessionStore
    replica: str
    metrics: Metrics
    accounting: Accounting
    events: EventStore | None = None  # the event log's table (default: SessionEvents on the store's database)


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
    ) -> None:
        self.id = session_id
        self.agent = agent  # the pinned agent version (``agents.runner_agent``), or the operator's default
        self.tenant = tenant
        self.deps = deps
        self.settings = settings = deps.settings
        self.backend = deps.backend
        self.proxy = deps.proxy
        self.records = deps.records
        self._on_closed = on_closed
        self.rehydrate = rehydrate
        self.resume = resume
        self.prior_cost_usd = prior_cost_usd  # spent in earlier lives of this session
        self.log = log.bind(session_id=session_id, tenant=tenant, backend=deps.backend.name)
        self.pool = deps.pool
        self.sink = TranscriptSink(deps.store, tenant, session_id, deps.metrics)
        self.relay = RpcRelay(self.sink, self.log, self._on_degraded, self._on_durable)
        self.metrics = deps.metrics
        self.ledger = Ledger(tenant, prior_usd=prior_cost_usd)
        self._turn_started = 0.0
        self._idle_since: float | None = None
        self._active = False
        self._held: list[dict[str, Any]] = []  # results waiting for their transcript
        self.checks = AfterTurn(settings)
        self.checkpoints = Checkpoints(self.records, session_id, settings, self.log)
        self.sandbox: Sandbox | None = None
        self.channel = RunnerChannel(Phase.LOADED)  # the pool's start consumed ``loaded``
        self._violation: ChannelViolation | None = None
        self.sandbox_id = ""
        self.workspace: Path | None = None
        self.guard = TurnGuard(settings.max_turns, settings.turn_timeout_s, settings.interrupt_grace_s)
        # Approvals and custom tools: requests waiting for a client (pending.py).
        # The pinned agent carries its tool policy (agents.tool_policy); else the operator's default.
        self.agent_tools = AgentTools.parse(agent if agent is not None else settings.default_agent)
        self.pending = Pending(settings.permission_timeout_s, self.agent_tools)
        self.subscribers: set[Subscriber] = set()
        # Every client-visible frame goes through the event log (eventlog.py): seq, durable, then fan-out.
        events = deps.events if deps.events is not None else SessionEvents(deps.store.db)
        self.events = EventLog(events, session_id, self._fanout, self._on_log_broken, self._on_degraded)
        self._log_broken: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()
        self.start_error: MoorageError | None = None
        self.closed = False
        self.created_at = time.monotonic()
        self.turns = 0
        self.started_s: float | None = None
        self._guard_changed = asyncio.Event()
        self._closing = False
        self._close_error: MoorageError | None = None
        self._main: asyncio.Task[None] | None = None
        self._notices: list[dict[str, object]] = []
        self._watch: asyncio.Task[None] | None = None
        self._idle: asyncio.Task[None] | None = None
        self.draining = False  # the service is shutting down: no new turns
        self.settled = asyncio.Event()  # set while not ``busy``
        self.settled.set()

    # -- lifecycle -----------------------------------------------------------

    def launch(self) -> None:
        self._main = asyncio.create_task(self._run(), name=f"session-{self.id}")

    async def _run(self) -> None:
        """Start, serve, finish. Whatever fails at any stage (start, restore,
        ready, pump, relay), ``ready`` is set and ``_finish`` runs: the start
        slot, the session counts, the uid, the cgroup and the proxy socket
        are always given back."""
        error: MoorageError | None = None
        try:
            try:
                await self._start_sandbox()
            except MoorageError as exc:
                self.start_error = error = exc
                self.log.warning("sandbox_start_failed", code=str(exc.code), error=exc.message)
                return
            self.ready.set()
            self._schedule_idle()
            error = await self._serve()
        except Exception as exc:  # a bug must not leave the sandbox running or a slot taken
            self.log.exception("session_failed", started=self.ready.is_set())
            error = MoorageError(f"internal error: {type(exc).__name__}", fatal=True)
            if not self.ready.is_set():
                self.start_error = error
        finally:
            self.ready.set()
            if not self.closed:
                await self._finish(self._violation_error() or self._close_error or error)

    def _violation_error(self) -> SandboxError | None:
        if self._violation is None:
            return None
        return SandboxError(self._violation.message, code=Code.SANDBOX_CRASHED)

    async def _serve(self) -> MoorageError | None:
        """Relay runner frames until the sandbox ends; why it ended."""
        await self._pump()
        if self._closing or self._violation is not None:
            return None
        error = SandboxError("the agent sandbox stopped unexpectedly", code=Code.SANDBOX_CRASHED)
        bit = self.checks.limits_bit(self.sandbox)
        if bit.get("oom_kills"):
            error = SandboxError(
                f"the agent ran out of memory (limit {self.settings.sandbox_memory_bytes} bytes) and was killed",
                code=Code.SANDBOX_OUT_OF_MEMORY,
            )
        elif bit.get("pids_refusals"):
            # The agent itself could not start a thread or process.
            error = SandboxError(
                f"the agent stopped after the sandbox hit its limit of {self.settings.sandbox_pids} "
                "processes and threads",
                code=Code.SANDBOX_PIDS_EXHAUSTED,
            )
        crashed = self._close_error is not None and self._close_error.code == Code.SANDBOX_CRASHED
        if crashed and error.code != Code.SANDBOX_CRASHED:
            self._close_error = None  # the runner saw its CLI die; the limit that bit says why
        return error

    async def _start_sandbox(self) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        loaded = self.pool.take()
        warm = loaded is not None
        if loaded is None:
            loaded = await start_loaded(
                self.backend,
                self.proxy,
                self.pool.workspaces,
                self.settings.sandbox_start_timeout_s,
                self.metrics,
                self.id,
            )
        self.sandbox, self.sandbox_id, self.workspace = loaded.sandbox, loaded.sandbox_id, loaded.workspace
        self.deps.accounting.ledgers[self.sandbox_id] = self.ledger
        handle = {**self.sandbox.handle, "workspace": str(self.workspace)}
        try:
            await self.records.update(self.id, state="active", sandbox=handle)
            if self.rehydrate:
                await self._restore_workspace()
        except STORE_ERRORS as exc:
            raise SandboxError(store_unavailable(exc), code=Code.STORE_UNAVAILABLE) from exc
        options: dict[str, Any] = {"session_id": self.id, "max_turns": self.settings.max_turns, "resume": self.resume}
        # The SDK must carry any user message the service lets through (issue 10 item 10).
        options["max_buffer_size"] = sdk_buffer_bytes(self.settings.max_frame_bytes)
        if self.settings.max_budget_usd is not None and self.settings.max_budget_usd > self.prior_cost_usd:
            # The budget is per session, not per sandbox: pass what is left
            # (none left: the service refuses turns itself, see submit).
            options["max_budget_usd"] = self.settings.max_budget_usd - self.prior_cost_usd
        if self.settings.model:
            options["model"] = self.settings.model
        if self.agent is not None and self.agent.get("max_turns"):
            options["max_turns"] = min(self.settings.max_turns, int(self.agent["max_turns"]))
        tunnel = f"unix:{TUNNEL_SOCKET}" if self.proxy.tunnel is not None else None
        start = Start(
            options, MODEL_PROXY, store=True, egress_proxy=tunnel, agent=self.agent or self.agent_tools.wire()
        )
        first = await self._until(start, Ready)
        if not isinstance(first, Ready):
            detail = first.message if first is not None else "the runner exited before it was ready"
            raise SandboxError(f"sandbox did not start: {detail[:500]}", code=Code.SANDBOX_START_FAILED)
        self.started_s = loop.time() - t0
        self.metrics.sandbox_start_seconds.labels(self.backend.name, "warm" if warm else "cold").observe(self.started_s)
        self.metrics.sessions_active.labels(self.backend.name).inc()
        self._active = True
        if self.rehydrate:
            self.metrics.rehydrations.labels("ok").inc()
        self.log.info(
            "session_ready",
            start_s=round(self.started_s, 3),
            warm=warm,
            sandbox_id=self.sandbox_id,
            rehydrated=self.rehydrate,
        )

    async def _send(self, frame: ServiceFrame) -> None:
        assert self.sandbox is not None
        self.channel.sent(frame)
        await self.sandbox.send(frame.wire())

    async def _send_bounded(self, frame: ServiceFrame) -> None:
        """Send, giving up after the interrupt grace: a runner that stops
        reading its input must not hold the guard (which kills it next)."""
        with contextlib.suppress(SandboxError, TimeoutError):
            async with asyncio.timeout(self.settings.interrupt_grace_s):
                await self._send(frame)

    async def _until(self, frame: ServiceFrame, want: type[_Want]) -> _Want | RunnerError | None:
        """Send ``frame``, then answer rpc frames until a ``want`` frame (or
        an error, or the end) arrives; bounded by the start timeout. A frame
        that breaks the channel protocol ends the session (``sandbox_crashed``)."""
        assert self.sandbox is not None
        try:
            async with asyncio.timeout(self.settings.sandbox_start_timeout_s):
                await self._send(frame)
                while (reply := await self.sandbox.recv()) is not None:
                    reply = self.channel.received(reply, self.guard.running)
                    if isinstance(reply, Rpc):
                        await self.relay.answer(self.sandbox, reply)
                    elif isinstance(reply, (want, RunnerError)):
                        return reply
                    elif not isinstance(reply, Garbage):  # the channel's order allows nothing else
                        raise ChannelViolation(Reason.OUT_OF_ORDER, f"{type(reply).__name__.lower()} while starting")
        except ChannelViolation as exc:
            self._violated(exc)
            raise SandboxError(exc.message, code=Code.SANDBOX_CRASHED) from None
        except (TimeoutError, SandboxError) as exc:
            raise SandboxError(f"sandbox did not start: {exc or 'timed out'}", code=Code.SANDBOX_START_FAILED) from exc
        return None

    def _violated(self, exc: ChannelViolation) -> None:
        """The runner broke the channel protocol: the session ends. Logged
        with our own words only (reason and detail), never the runner's bytes."""
        if self._violation is None:
            self._violation = exc
            self.log.warning("channel_violation", reason=str(exc.reason), detail=exc.detail)

    async def _restore_workspace(self) -> None:
        """Stream the stored archive from the database into ``restore`` frames."""
        assert self.sandbox is not None
        last: Restore | None = None
        size = 0
        try:
            async with asyncio.timeout(self.settings.sandbox_start_timeout_s):
                async with contextlib.aclosing(self.records.load_workspace_stream(self.id)) as chunks:
                    async for frame in restore_frames(chunks):
                        size += len(frame.data) * 3 // 4
                        if frame.last:
                            last = frame
                        else:
                            await self._send(frame)
        except (TimeoutError, SandboxError) as exc:
            raise SandboxError(f"sandbox did not start: {exc or 'timed out'}", code=Code.SANDBOX_START_FAILED) from exc
        if last is None:
            return
        restored = await self._until(last, Restored)
        if not isinstance(restored, Restored) or not restored.ok:
            detail = restored.message if restored is not None else "no answer"
            self.log.error("workspace_restore_failed", error=str(detail)[:300])
            self._notice(Code.WORKSPACE_NOT_RESTORED, f"the saved workspace could not be restored: {detail}")
        else:
            self.log.info("workspace_restored", files=restored.files, bytes=size)

    async def _check_workspace(self) -> None:
        """A workspace that filled up or grew past what a suspension saves:
        told now (and to clients attaching later), not at suspend."""
        was_full = self.checks.full
        for error in await self.checks.workspace_errors(self.workspace):
            self._notice(error.code, error.message)
        if was_full and not self.checks.full:  # space was freed: new clients need not hear of it
            self._notices = [n for n in self._notices if n["code"] != Code.WORKSPACE_FULL]

    def _notice(self, code: Code, message: str) -> None:
        """A non-fatal error frame for every client, now and on attach."""
        frame = MoorageError(message, code=code).frame()
        self._notices.append(frame)
        self.broadcast(frame)

    def notice(self, error: MoorageError) -> None:
        """``_notice`` for the manager (storage quota notices on rehydration)."""
        self._notice(error.code, error.message)

    async def _pump(self) -> None:
        assert self.sandbox is not None
        runner_error: str | None = None
        while (frame := await self.sandbox.recv()) is not None:
            try:
                frame = self.channel.received(frame, self.guard.running)
                if isinstance(frame, (PermissionRequest, CustomToolUse)):
                    self.broadcast(self.pending.open(frame, time.monotonic()))
                    self._guard_changed.set()  # its deadline
                    continue
            except ChannelViolation as exc:
                self._violated(exc)
                await self.sandbox.kill()  # a hostile runner gets no grace period
                return
            if isinstance(frame, Sdk):
                await self._on_sdk(frame.message)
                await self.events.room()  # the event log is behind: stop reading the runner
            elif isinstance(frame, Rpc):
                await self.relay.enqueue(self.sandbox, frame)  # waits while the relay is full
            elif isinstance(frame, RunnerError):
                runner_error = frame.message[:500]
        # The runner's last flush (on shutdown) may still be in the queue.
        await self.relay.drain(STOP_GRACE_S)
        if runner_error and not self._closing and self._close_error is None:
            self._close_error = SandboxError(runner_error, code=Code.SANDBOX_CRASHED)

    def _on_degraded(self) -> None:
        self._notice(Code.STORE_UNAVAILABLE, "the database is unreachable: transcript writes are queued, retrying")

    async def _on_durable(self) -> None:
        self._notices = [n for n in self._notices if n["code"] != Code.STORE_UNAVAILABLE]
        await self._release_held()

    async def _release_held(self) -> None:
        """Deliver the results that waited for their transcript to be written."""
        held, self._held = self._held, []
        for result in held:
            await self._deliver_result(result)

    async def _on_sdk(self, message: dict[str, Any]) -> None:
        now = time.monotonic()
        action = self.guard.on_message(message, now)
        if message.get("type") == "result":
            # The turn is over (a request that came after an interrupt is
            # left): denied, so the runner's waiting hook or tool call ends too.
            await self._settle(self.pending.interrupt())
            tripped = self.guard.tripped
            message = self.guard.finish_result(message)
            if tripped is Code.TURN_TIMEOUT:
                message = {**message, "moorage_error": Code.TURN_TIMEOUT}
            if self.sink.durable and not self._held:
                await self._deliver_result(message)
            else:
                # The transcript of this turn is not in the database yet:
                # hold the result until it is (clients were told why).
                self._held.append(message)
                self.relay.start_flusher()
            self._guard_changed.set()
            return
        self.broadcast(message)
        if action is Action.INTERRUPT:
            await self._act(action)

    async def _deliver_result(self, message: dict[str, Any]) -> None:
        timed_out = message.pop("moorage_error", None) == Code.TURN_TIMEOUT
        self.turns += 1
        outcome = self.metrics.turn_outcome(message.get("subtype"))
        self.metrics.turns.labels(outcome).inc()
        self.metrics.turn_seconds.labels(outcome).observe(time.monotonic() - self._turn_started)
        if message.get("subtype") == "error_max_turns":
            self.metrics.max_turns_exceeded.inc()
        metered = self.ledger.settle_turn(message, self.metrics)
        self.broadcast(message)
        for error in self.checks.limit_errors(self.sandbox):  # a process in the sandbox hit a limit
            self.broadcast(error.frame())
        # Spent now (the proxy refused a request, the SDK stopped at its own
        # max_budget_usd, or this turn used the rest): say so once, here.
        scope = self.ledger.refused or self.deps.accounting.exhausted(self.ledger)
        self.ledger.refused = None
        if scope is not None:
            self.metrics.budget_exceeded.labels(scope).inc()
            self.broadcast(budget_error(scope).frame())
        if timed_out:
            self.broadcast(
                MoorageError(
                    f"the turn ran past {self.settings.turn_timeout_s:g}s and was interrupted", code=Code.TURN_TIMEOUT
                ).frame()
            )
        # Bookkeeping after the client has its result (the transcript, which
        # the result promises, is already written).
        try:
            await self.records.add_usage(self.id, 1, metered)
        except STORE_ERRORS as exc:
            self.log.warning("usage_write_failed", error=type(exc).__name__)
        await self._check_workspace()
        if self.workspace is not None:
            self.checkpoints.after_turn(self.workspace)
        if not self.busy:
            self.settled.set()
        self._schedule_idle()

    async def _act(self, action: Action) -> None:
        assert self.sandbox is not None
        if action is Action.INTERRUPT:
            self.log.warning("turn_interrupted", reason=str(self.guard.tripped), model_turns=self.guard.model_turns)
            await self._settle(self.pending.interrupt())
            await self._send_bounded(Interrupt())
            self._guard_changed.set()
        elif action is Action.KILL:
            why = self.guard.tripped or Code.TURN_TIMEOUT
            self.log.warning("turn_killed", reason=str(why))
            self._close_error = MoorageError(
                f"the turn did not stop within {self.settings.interrupt_grace_s:g}s of being interrupted; "
                "its sandbox was stopped",
                code=why,
                fatal=True,
            )
            await self.sandbox.kill()

    async def _watch_turn(self) -> None:
        while (deadline := self._next_deadline()) is not None:
            self._guard_changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._guard_changed.wait(), max(0.0, deadline - time.monotonic()))
            now = time.monotonic()
            await self._settle(self.pending.expire(now))
            await self._act(self.guard.tick(now))

    def _next_deadline(self) -> float | None:
        """The turn's guard, or the first pending request's deadline."""
        deadlines = [d for d in (self.guard.next_deadline(), self.pending.next_deadline()) if d is not None]
        return min(deadlines, default=None)

    async def _settle(self, resolutions: list[Resolution]) -> None:
        """Tell the runner and every client how pending requests were settled."""
        for resolution in resolutions:
            self.log.info("request_settled", kind=resolution.frame["type"], source=resolution.frame["source"])
            self.broadcast(resolution.frame)
            await self._send_bounded(resolution.to_runner)

    async def _finish(self, error: MoorageError | None) -> None:
        """Stop everything this session holds and suspend it; runs once.
        A failing step is logged and the rest still run; the manager always
        hears of the end (``on_closed``: slots and session counts)."""
        self.closed = True
        self.settled.set()
        try:
            await self._wind_down(error)
        finally:
            self._on_closed(self)

    async def _step(self, what: str, step: Awaitable[object]) -> None:
        try:
            await step
        except Exception:
            self.log.exception("session_cleanup_failed", step=what)

    async def _stop_sandbox(self, sandbox: Sandbox) -> None:
        t0 = time.monotonic()
        try:
            await sandbox.stop(STOP_GRACE_S)
        except Exception:
            self.log.exception("session_cleanup_failed", step="sandbox_stop")
            await sandbox.kill()
        self.metrics.sandbox_stop_seconds.labels(self.backend.name).observe(time.monotonic() - t0)
        self.metrics.sandbox_time.stopped(self.sandbox_id)

    async def _flush_held(self) -> None:
        if await self.sink.flush():
            await self._release_held()

    async def _wind_down(self, error: MoorageError | None) -> None:
        for task in (self._watch, self._idle):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        if self.sandbox is not None:
            await self._step("sandbox_stop", self._stop_sandbox(self.sandbox))
        if self._active:
            self.metrics.sessions_active.labels(self.backend.name).dec()
        elif self.rehydrate:
            self.metrics.rehydrations.labels("failed").inc()
        if self.sandbox_id:
            await self._step("proxy_close", self.proxy.close_sandbox(self.sandbox_id))
            self.deps.accounting.ledgers.pop(self.sandbox_id, None)
        if self._held:
            await self._step("held_results", self._flush_held())
        self.relay.cancel()
        self.pending.clear()
        if error is not None:
            error.fatal = True
            self.broadcast(error.frame())
        await self._step("event_log", self.events.drain(STOP_GRACE_S))  # clients get what is durable
        self.events.close()
        for sub in list(self.subscribers):
            sub.close(close_code(error.code) if error else 1000, error.code if error else "session suspended")
        self.subscribers.clear()
        if not self.sink.durable:
            self.log.error("transcript_entries_unsaved", batches=len(self.sink.unsaved))
        await self._step("checkpoints_stop", self.checkpoints.stop())  # the suspension's own save is the newer one
        suspended = False
        try:
            suspended = await suspend_record(self.deps, self.id, self.workspace, self.log)
        except Exception:
            self.log.exception("session_cleanup_failed", step="suspend")
        usage = self.proxy.usage.pop(self.sandbox_id, None)
        self.log.info(
            "session_ended",
            reason=str(error.code) if error else "suspended",
            suspended=suspended,
            turns=self.turns,
            model_requests=usage.requests if usage else 0,
            input_tokens=usage.input_tokens if usage else 0,
            output_tokens=usage.output_tokens if usage else 0,
            cost_usd=round(self.ledger.life_usd, 6),
            session_cost_usd=round(self.ledger.total_usd, 6),
            lifetime_s=round(time.monotonic() - self.created_at, 3),
            start_s=round(self.started_s, 3) if self.started_s is not None else None,
        )

    @property
    def busy(self) -> bool:
        """A turn is running, or its result waits for its transcript."""
        return bool(self.guard.running or self._held)

    async def close(self, reason: MoorageError | None = None) -> None:
        """Stop the session on purpose (idle, shutdown), telling clients
        ``reason`` if given; the session is suspended either way. Bounded."""
        if self.closed or self._main is None:
            return
        self._closing = True
        self._close_error = self._close_error or reason
        if not self.ready.is_set():
            self._main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._main
            if not self.closed:
                await self._finish(self._close_error)  # the reason, if given, reaches its clients
            return
        if self.sandbox is not None:
            await self.sandbox.stop(STOP_GRACE_S)
        await asyncio.shield(self._main)

    # -- commands from clients -----------------------------------------------

    async def _await_ready(self) -> Sandbox:
        if self.closed:
            raise SessionError("the session is closed", code=Code.SESSION_CLOSED, fatal=True)
        await asyncio.wait_for(self.ready.wait(), self.settings.sandbox_start_timeout_s + 5)
        if self.start_error is not None:
            raise self.start_error
        if self.closed or self.sandbox is None:
            raise SessionError("the session is closed", code=Code.SESSION_CLOSED, fatal=True)
        return self.sandbox

    async def submit(self, frame: UserFrame) -> None:
        await self._await_ready()
        if self.draining:
            raise ProtocolError(
                "the service is restarting: this session will be suspended; reconnect to continue it",
                code=Code.SERVICE_DRAINING,
            )
        if self.guard.running or self._held:
            raise ProtocolError(
                "a turn is already running: wait for its result or send an interrupt", code=Code.TURN_IN_PROGRESS
            )
        if (scope := self.deps.accounting.exhausted(self.ledger)) is not None:
            self.metrics.budget_exceeded.labels(scope).inc()
            raise budget_error(scope)
        self.broadcast({"type": "user_message", "message": frame.message})  # logged when accepted
        self.guard.start(time.monotonic())
        self.settled.clear()
        self._turn_started = time.monotonic()
        self._cancel_idle()
        # The guard watches from now: a runner that stops reading its input
        # blocks the send below, and the turn's deadline must still kill it.
        if self._watch is None or self._watch.done():
            self._watch = asyncio.create_task(self._watch_turn())
        await self._send(User(user_message_line(frame)))

    async def interrupt(self) -> None:
        await self._await_ready()
        if not self.guard.running:
            raise ProtocolError("no turn is running", code=Code.NO_TURN_RUNNING)
        self.guard.user_interrupt(time.monotonic())
        self._guard_changed.set()
        await self._settle(self.pending.interrupt())  # denied, reason "interrupted"
        await self._send_bounded(Interrupt())

    async def answer(self, frame: Answer) -> None:
        """A client's ``permission_response`` / ``custom_tool_result``: the
        first answer settles the request (``request_not_pending`` after)."""
        await self._await_ready()
        await self._settle([self.pending.answer(frame)])

    # -- fan-out and idleness ------------------------------------------------

    def broadcast(self, frame: dict[str, Any]) -> None:
        """Every client-visible frame: logged (seq, durable) first, fanned out by the log."""
        self.events.publish(frame)

    def _on_log_broken(self, error: MoorageError) -> None:
        if self._log_broken is None and not self.closed:
            self._log_broken = asyncio.create_task(self.close(error))

    def _fanout(self, frame: dict[str, Any]) -> None:
        if frame.get("type") == "error":
            self.metrics.count_error(frame.get("code"))  # never a label the runner chose
        text = dumps(frame)
        for sub in list(self.subscribers):
            if not sub.offer(text):
                self.subscribers.discard(sub)
                sub.close(1008, Code.SLOW_CONSUMER)
                self.log.warning("client_dropped", reason="slow_consumer")
        if not self.subscribers:
            self._schedule_idle()

    def attach(self, sub: Subscriber, replaying: bool = False) -> None:
        """``replaying``: the client replays the log from a seq it has seen (``?after=``), which
        holds every request it has not seen yet; a live-only client is asked again."""
        self.subscribers.add(sub)
        self._cancel_idle()
        for notice in self._notices:
            if not self.events.core.holds(notice):  # else it reaches the client from the log, with its seq
                sub.offer(dumps(notice))
        for request in [] if replaying else self.pending.replay():  # still waiting for an answer: asked again
            sub.offer(dumps(request))

    def detach(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        self._schedule_idle()

    @property
    def in_use(self) -> bool:
        """A client, a turn, or a transcript still being written: not idle."""
        return bool(self.subscribers or self.guard.running or self._held or not self.sink.durable)

    def _schedule_idle(self) -> None:
        if self.in_use or self.closed or not self.ready.is_set():
            return
        if self._idle is None or self._idle.done():
            self._idle_since = time.monotonic()
            self._idle = asyncio.create_task(self._idle_timeout())

    def _cancel_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self._end_idle()

    def _end_idle(self) -> None:
        if self._idle_since is not None:
            self.metrics.session_idle_seconds.observe(time.monotonic() - self._idle_since)
            self._idle_since = None

    async def _idle_timeout(self) -> None:
        await asyncio.sleep(self.settings.idle_timeout_s)
        if self.in_use:
            return
        self.log.info("session_idle_timeout", idle_s=self.settings.idle_timeout_s)
        self.metrics.sandbox_idle_timeouts.labels(self.backend.name).inc()
        self._end_idle()
        self._idle = None
        await self.close()
