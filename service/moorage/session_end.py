"""How a session ends, whatever ended it: stop the sandbox, give back what
it held (counts, proxy socket, ledger), release results still waiting for
their transcript, tell and close its clients, and suspend it (workspace
snapshot, record marked suspended). Each step is bounded; a failing step is
logged and the rest still run."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from .errors import Code, MoorageError, SandboxError, close_code
from .sandbox.base import Sandbox
from .session_events import (
    TranscriptDurable,
)
from .workspaces import suspend_record

if TYPE_CHECKING:
    from .sessions import Session

STOP_GRACE_S = 5.0


def crash_error(session: Session) -> SandboxError:
    """Why the sandbox ended, had nobody asked it to (the core decides
    whether this is the reason): a limit that bit, else a crash. The
    counters are read only when the end was not asked for."""
    asked = session.core.closing or session.core.violation is not None
    bit = {} if asked else session.checks.limits_bit(session.sandbox)
    if bit.get("oom_kills"):
        return SandboxError(
            f"the agent ran out of memory (limit {session.settings.sandbox_memory_bytes} bytes) and was killed",
            code=Code.SANDBOX_OUT_OF_MEMORY,
        )
    if bit.get("pids_refusals"):  # the agent itself could not start a thread or process
        return SandboxError(
            f"the agent stopped after the sandbox hit its limit of {session.settings.sandbox_pids} "
            "processes and threads",
            code=Code.SANDBOX_PIDS_EXHAUSTED,
        )
    return SandboxError("the agent sandbox stopped unexpectedly", code=Code.SANDBOX_CRASHED)


async def _step(session: Session, what: str, step: Awaitable[object]) -> None:
    try:
        await step
    except Exception:
        session.log.exception("session_cleanup_failed", step=what)


async def _stop_sandbox(session: Session, sandbox: Sandbox) -> None:
    t0 = time.monotonic()
    try:
        await sandbox.stop(STOP_GRACE_S)
    except Exception:
        session.log.exception("session_cleanup_failed", step="sandbox_stop")
        await sandbox.kill()
    session.metrics.sandbox_stop_seconds.labels(session.backend.name).observe(time.monotonic() - t0)
    session.metrics.sandbox_time.stopped(session.sandbox_id)


async def _release_held(session: Session) -> None:
    """Results the transcript held back: delivered if it can be written now."""
    if await session.sink.flush():
        for effect in session.core.handle(TranscriptDurable(time.monotonic())):
            await session.run_effect(effect)


async def wind_down(session: Session, error: MoorageError | None) -> None:
    for task in session.tasks:
        if task is not asyncio.current_task():
            task.cancel()
    if session.sandbox is not None:
        await _step(session, "sandbox_stop", _stop_sandbox(session, session.sandbox))
    await _step(session, "outputs_close", session.files.close())  # an output half stored is dropped
    metrics = session.metrics
    if session.active:
        metrics.sessions_active.labels(session.backend.name).dec()
    elif session.rehydrate:
        metrics.rehydrations.labels("failed").inc()
    if session.sandbox_id:
        await _step(session, "proxy_close", session.proxy.close_sandbox(session.sandbox_id))
        session.deps.accounting.ledgers.pop(session.sandbox_id, None)
        session.deps.spans.unregister(session.sandbox_id)  # before the log drains: open spans end now
    if session.core.held:
        await _step(session, "held_results", _release_held(session))
    session.relay.cancel()
    if error is not None:
        error.fatal = True
        session.emit(error.frame())
    await _step(session, "event_log", session.events.drain(STOP_GRACE_S))  # clients get what is durable
    session.events.close()
    for sub in list(session.subscribers):
        sub.close(close_code(error.code) if error else 1000, error.code if error else "session suspended")
    session.subscribers.clear()
    if not session.sink.durable:
        session.log.error("transcript_entries_unsaved", batches=len(session.sink.unsaved))
    await _step(session, "checkpoints_stop", session.checkpoints.stop())  # the suspension's own save is newer
    suspended = False
    try:
        suspended = await suspend_record(session.deps, session.id, session.workspace, session.log)
    except Exception:
        session.log.exception("session_cleanup_failed", step="suspend")
    usage = session.proxy.usage.pop(session.sandbox_id, None)
    session.log.info(
        "session_ended",
        reason=str(error.code) if error else "suspended",
        suspended=suspended,
        turns=session.turns,
        model_requests=usage.requests if usage else 0,
        input_tokens=usage.input_tokens if usage else 0,
        output_tokens=usage.output_tokens if usage else 0,
        cost_usd=round(session.ledger.life_usd, 6),
        session_cost_usd=round(session.ledger.total_usd, 6),
        lifetime_s=round(time.monotonic() - session.created_at, 3),
        start_s=round(session.started_s, 3) if session.started_s is not None else None,
    )
