"""Sessions: one sandbox each, any number of attached connections.

A session starts its sandbox as soon as it is created (the CLI warms up while
the user types), relays client commands to the runner and broadcasts every
runner message to every attached connection. It enforces one turn at a time,
the max-turns backstop and the per-turn wall clock (``protocol.TurnGuard``),
and stops its sandbox once no client has been attached and no turn has run
for ``idle_timeout_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import structlog

from .egress import ModelProxy
from .errors import Code, MoorageError, ProtocolError, SandboxError, SessionError, close_code
from .pool import WarmPool, start_loaded
from .protocol import Action, TurnGuard, UserFrame, user_message_line
from .sandbox.base import Sandbox, SandboxBackend
from .settings import Settings

log = structlog.get_logger(__name__)

STOP_GRACE_S = 5.0
MODEL_PROXY = "unix:/run/moorage/model.sock"  # where every backend mounts the proxy


class Subscriber(Protocol):
    """An attached client connection, as a session sees it."""

    def offer(self, text: str) -> bool:
        """Queue one frame without waiting; False when the client is too slow."""

    def close(self, code: int, reason: str) -> None:
        """Send what is queued, then close."""


def dumps(frame: dict[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)


class Session:
    def __init__(
        self,
        session_id: str,
        tenant: str,
        settings: Settings,
        backend: SandboxBackend,
        proxy: ModelProxy,
        pool: WarmPool,
        on_closed: Callable[[Session], None],
    ) -> None:
        self.id = session_id
        self.tenant = tenant
        self.settings = settings
        self.backend = backend
        self.proxy = proxy
        self._on_closed = on_closed
        self.log = log.bind(session_id=session_id, tenant=tenant, backend=backend.name)
        self.pool = pool
        self.sandbox: Sandbox | None = None
        self.sandbox_id = ""
        self.workspace: Path | None = None
        self.guard = TurnGuard(settings.max_turns, settings.turn_timeout_s, settings.interrupt_grace_s)
        self.subscribers: set[Subscriber] = set()
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
        self._watch: asyncio.Task[None] | None = None
        self._idle: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------

    def launch(self) -> None:
        self._main = asyncio.create_task(self._run(), name=f"session-{self.id}")

    async def _run(self) -> None:
        try:
            await self._start_sandbox()
        except MoorageError as exc:
            self.start_error = exc
            self.ready.set()
            self.log.warning("sandbox_start_failed", code=str(exc.code), error=exc.message)
            await self._finish(exc)
            return
        self.ready.set()
        self._schedule_idle()
        error: MoorageError | None = None
        try:
            await self._pump()
            if not self._closing:
                error = SandboxError("the agent sandbox stopped unexpectedly", code=Code.SANDBOX_CRASHED)
        except Exception as exc:  # a bug in the pump must not leave the sandbox running
            self.log.exception("session_pump_failed")
            error = MoorageError(f"internal error: {type(exc).__name__}")
            error.fatal = True
        await self._finish(self._close_error or error)

    async def _start_sandbox(self) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        loaded = self.pool.take()
        warm = loaded is not None
        if loaded is None:
            loaded = await start_loaded(
                self.backend, self.proxy, self.pool.workspaces, self.settings.sandbox_start_timeout_s, self.id
            )
        self.sandbox, self.sandbox_id, self.workspace = loaded.sandbox, loaded.sandbox_id, loaded.workspace
        options: dict[str, Any] = {"session_id": self.id, "max_turns": self.settings.max_turns}
        if self.settings.max_budget_usd is not None:
            options["max_budget_usd"] = self.settings.max_budget_usd
        if self.settings.model:
            options["model"] = self.settings.model
        try:
            await self.sandbox.send({"kind": "start", "options": options, "model_proxy": MODEL_PROXY})
            first = await asyncio.wait_for(self.sandbox.recv(), self.settings.sandbox_start_timeout_s)
        except (TimeoutError, SandboxError) as exc:
            raise SandboxError(f"sandbox did not start: {exc or 'timed out'}", code=Code.SANDBOX_START_FAILED) from exc
        if first is None or first.get("kind") != "ready":
            detail = (first or {}).get("message", "the runner exited before it was ready")
            raise SandboxError(f"sandbox did not start: {detail}", code=Code.SANDBOX_START_FAILED)
        self.started_s = loop.time() - t0
        self.log.info("session_ready", start_s=round(self.started_s, 3), warm=warm, sandbox_id=self.sandbox_id)

    async def _pump(self) -> None:
        assert self.sandbox is not None
        runner_error: str | None = None
        while (frame := await self.sandbox.recv()) is not None:
            kind = frame.get("kind")
            if kind == "sdk" and isinstance(frame.get("message"), dict):
                await self._on_sdk(frame["message"])
            elif kind == "error":
                runner_error = str(frame.get("message", ""))[:500]
        if runner_error and not self._closing and self._close_error is None:
            self._close_error = SandboxError(runner_error, code=Code.SANDBOX_CRASHED)

    async def _on_sdk(self, message: dict[str, Any]) -> None:
        now = time.monotonic()
        action = self.guard.on_message(message, now)
        if message.get("type") == "result":
            tripped = self.guard.tripped
            message = self.guard.finish_result(message)
            self.turns += 1
            self.broadcast(message)
            if tripped is Code.TURN_TIMEOUT:
                self.broadcast(
                    MoorageError(
                        f"the turn ran past {self.settings.turn_timeout_s:g}s and was interrupted",
                        code=Code.TURN_TIMEOUT,
                    ).frame()
                )
            self._guard_changed.set()
            self._schedule_idle()
            return
        self.broadcast(message)
        if action is Action.INTERRUPT:
            await self._act(action)

    async def _act(self, action: Action) -> None:
        assert self.sandbox is not None
        if action is Action.INTERRUPT:
            self.log.warning("turn_interrupted", reason=str(self.guard.tripped), model_turns=self.guard.model_turns)
            with contextlib.suppress(SandboxError):
                await self.sandbox.send({"kind": "interrupt"})
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
        while (deadline := self.guard.next_deadline()) is not None:
            self._guard_changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._guard_changed.wait(), max(0.0, deadline - time.monotonic()))
            await self._act(self.guard.tick(time.monotonic()))

    async def _finish(self, error: MoorageError | None) -> None:
        """Stop everything this session holds; runs once, from ``_run``."""
        self.closed = True
        for task in (self._watch, self._idle):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        if self.sandbox is not None:
            await self.sandbox.stop(STOP_GRACE_S)
        if self.sandbox_id:
            await self.proxy.close_sandbox(self.sandbox_id)
        if self.workspace is not None:
            await asyncio.to_thread(shutil.rmtree, self.workspace, True)
        if error is not None:
            error.fatal = True
            self.broadcast(error.frame())
        for sub in list(self.subscribers):
            sub.close(close_code(error.code) if error else 1000, error.code if error else "session closed")
        self.subscribers.clear()
        usage = self.proxy.usage.pop(self.sandbox_id, None)
        self.log.info(
            "session_ended",
            reason=str(error.code) if error else "closed",
            turns=self.turns,
            model_requests=usage.requests if usage else 0,
            input_tokens=usage.input_tokens if usage else 0,
            output_tokens=usage.output_tokens if usage else 0,
            lifetime_s=round(time.monotonic() - self.created_at, 3),
            start_s=round(self.started_s, 3) if self.started_s is not None else None,
        )
        self._on_closed(self)

    async def close(self) -> None:
        """Stop the session on purpose (idle, shutdown). Bounded."""
        if self.closed or self._main is None:
            return
        self._closing = True
        if not self.ready.is_set():
            self._main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._main
            if not self.closed:
                await self._finish(None)
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
        sandbox = await self._await_ready()
        if self.guard.running:
            raise ProtocolError(
                "a turn is already running: wait for its result or send an interrupt", code=Code.TURN_IN_PROGRESS
            )
        self.guard.start(time.monotonic())
        self._cancel_idle()
        await sandbox.send({"kind": "user", "message": user_message_line(frame)})
        if self._watch is None or self._watch.done():
            self._watch = asyncio.create_task(self._watch_turn())

    async def interrupt(self) -> None:
        sandbox = await self._await_ready()
        if not self.guard.running:
            raise ProtocolError("no turn is running", code=Code.NO_TURN_RUNNING)
        self.guard.user_interrupt(time.monotonic())
        self._guard_changed.set()
        await sandbox.send({"kind": "interrupt"})

    # -- fan-out and idleness ------------------------------------------------

    def broadcast(self, frame: dict[str, Any]) -> None:
        text = dumps(frame)
        for sub in list(self.subscribers):
            if not sub.offer(text):
                self.subscribers.discard(sub)
                sub.close(1008, Code.SLOW_CONSUMER)
                self.log.warning("client_dropped", reason="slow_consumer")
        if not self.subscribers:
            self._schedule_idle()

    def attach(self, sub: Subscriber) -> None:
        self.subscribers.add(sub)
        self._cancel_idle()

    def detach(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        self._schedule_idle()

    def _schedule_idle(self) -> None:
        if self.subscribers or self.guard.running or self.closed or not self.ready.is_set():
            return
        if self._idle is None or self._idle.done():
            self._idle = asyncio.create_task(self._idle_timeout())

    def _cancel_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    async def _idle_timeout(self) -> None:
        await asyncio.sleep(self.settings.idle_timeout_s)
        if self.subscribers or self.guard.running:
            return
        self.log.info("session_idle_timeout", idle_s=self.settings.idle_timeout_s)
        self._idle = None
        await self.close()


class SessionManager:
    """The live sessions of this process."""

    def __init__(self, settings: Settings, backend: SandboxBackend, proxy: ModelProxy, pool: WarmPool) -> None:
        self.settings = settings
        self.backend = backend
        self.proxy = proxy
        self.pool = pool
        self.sessions: dict[str, Session] = {}

    def create(self, tenant: str) -> Session:
        session = Session(str(uuid.uuid4()), tenant, self.settings, self.backend, self.proxy, self.pool, self._closed)
        self.sessions[session.id] = session
        session.launch()
        return session

    def get(self, session_id: str, tenant: str) -> Session:
        session = self.sessions.get(session_id)
        if session is None or session.tenant != tenant or session.closed:
            # Another tenant's session answers exactly like an unknown one.
            raise SessionError("no such session", code=Code.SESSION_NOT_FOUND, fatal=True)
        return session

    def _closed(self, session: Session) -> None:
        self.sessions.pop(session.id, None)

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in list(self.sessions.values())), return_exceptions=True)
