"""Commands for a session another replica runs (issue 16): any replica takes any request, and the
session stays where it runs.

A ``POST /v1/sessions/{id}/events`` that lands on a replica other than the session's owner (the
replica holding its lease) is not served by moving the session: the receiving replica (the
*sender*) writes the request body to ``session_commands`` and waits; the owner claims it, applies
it exactly as it applies a request made to it (``events_api.run_command``), and writes the answer
back; the sender returns that answer. The table is the channel and the lease the source of truth,
so replicas need no address of each other and nothing beyond the database they already share.
PostgreSQL ``LISTEN/NOTIFY`` (``notify.py``) wakes the owner when a command arrives and the sender
when it is done; both also poll (``POLL_S``), so a lost notification delays a command, never
loses it, and SQLite (one replica, but the same code) works unchanged.

Why the database and not forwarding to the owner's address: a command written before the owner
dies is still there when the next replica takes the session; nothing new to configure,
authenticate or expose between replicas; and the added latency (a notification round trip, about
a millisecond on one host; see ``bench/bench_replicas.py``) is small next to a turn.

What the sender decides while it waits is ``decide`` (pure): the answer is there; the owner let
the session go before claiming the command (withdraw it and serve here, as for a session nobody
owns); the owner does not claim it within ``CLAIM_WAIT_S`` (withdraw, ``session_locked``, safe to
retry); or it claimed it and did not answer in time (the outcome is unknown: not safe to resend).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from moorage_session_store import SessionRecord, SessionRecords
from moorage_session_store.commands import Command, SessionCommands

from .errors import STORE_ERRORS, Code, MoorageError, store_unavailable
from .http_api import ApiError

log = structlog.get_logger(__name__)

#: How often the sender re-reads its command and the owner looks for commands with no news.
POLL_S = 0.5
#: How long an owner may leave a command unclaimed before the sender gives up (safe to retry).
CLAIM_WAIT_S = 5.0
#: Commands older than this are left-overs of senders that died: pruned.
KEEP_COMMANDS = timedelta(hours=1)
PRUNE_EVERY_S = 600.0

Apply = Callable[[Command], Awaitable[dict[str, Any]]]


def refused(message: str, code: Code, *, retry: bool) -> ApiError:
    """The sender's answer when the owner did not (or may not have) applied the command."""
    return ApiError(message, code=code, headers={} if retry else {"x-should-retry": "false"})


class SessionGone(ApiError):
    """The command went with its session: deleted while the sender waited."""

    def __init__(self, session_id: str) -> None:
        super().__init__(
            f"session {session_id} was deleted", code=Code.SESSION_NOT_FOUND, headers={"x-should-retry": "false"}
        )


def owned_elsewhere(record: SessionRecord, replica: str, now: datetime) -> bool:
    """Does another replica run the session now (an active session, its lease unexpired)?"""
    return (
        record.state == "active"
        and record.owner is not None
        and record.owner != replica
        and record.lease_expires_at is not None
        and record.lease_expires_at > now
    )


class Step(enum.Enum):
    WAIT = "wait"
    DONE = "done"  # the owner answered: return its answer
    GONE = "gone"  # the command is gone with its session (deleted)
    TAKE_BACK = "take_back"  # unclaimed, and nobody else runs the session: withdraw, serve here
    GIVE_UP = "give_up"  # unclaimed past the claim wait: withdraw, safe to retry
    UNCONFIRMED = "unconfirmed"  # claimed, no answer in time: the outcome is unknown


def decide(command: Command | None, owner_runs_it: bool, waited_s: float, deadline_s: float) -> Step:
    """The sender's next step, from its command as stored, whether another replica still runs the
    session (asked only for an unclaimed command), and how long it has waited."""
    if command is None:
        return Step.GONE
    if command.done_at is not None:
        return Step.DONE
    if command.claimed_by is not None:
        return Step.UNCONFIRMED if waited_s >= deadline_s else Step.WAIT
    if not owner_runs_it:
        return Step.TAKE_BACK
    return Step.GIVE_UP if waited_s >= min(CLAIM_WAIT_S, deadline_s) else Step.WAIT


class CommandRouter:
    """Both ends on this replica: ``send`` (a request for a session run elsewhere) and the
    owner's consumer (``wake``, by notification or by the poll), which applies commands with
    ``apply`` once ``start`` gave it."""

    def __init__(
        self,
        store: SessionCommands,
        records: SessionRecords,
        replica: str,
        runs_here: Callable[[str], bool],
        answer_wait_s: float,
    ) -> None:
        self.store = store
        self.records = records
        self.replica = replica
        self.runs_here = runs_here
        self.answer_wait_s = answer_wait_s  # a claimed command: the owner may be starting its sandbox
        self._apply: Apply | None = None
        self._answered: dict[int, asyncio.Event] = {}
        self._consuming: dict[str, asyncio.Task[None]] = {}
        self._poll: asyncio.Task[None] | None = None

    # -- the sender -------------------------------------------------------------

    async def send(self, record: SessionRecord, body: dict[str, Any]) -> dict[str, Any] | None:
        """Have the owner apply ``body``; its answer (``{"data"}`` or ``{"error"}``), or ``None`` if
        the owner let the session go before taking it (the caller serves it here)."""
        loop = asyncio.get_running_loop()
        command_id = await self.store.enqueue(record.id, record.tenant, body, self.replica)
        answered = self._answered[command_id] = asyncio.Event()
        started = loop.time()
        try:
            while True:
                waited = loop.time() - started
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(answered.wait(), max(0.0, min(POLL_S, self.answer_wait_s - waited)))
                answered.clear()
                command = await self.store.get(command_id)
                runs = False
                if command is not None and command.done_at is None and command.claimed_by is None:
                    current = await self.records.get(record.id)
                    runs = current is not None and owned_elsewhere(current, self.replica, datetime.now(UTC))
                step = decide(command, runs, loop.time() - started, self.answer_wait_s)
                if step is Step.WAIT:
                    continue
                if step is Step.DONE:
                    assert command is not None and command.result is not None
                    await self.store.forget(command_id)
                    return command.result
                if step is Step.GONE:
                    raise SessionGone(record.id)
                if step is Step.UNCONFIRMED:
                    log.warning("command_unconfirmed", session_id=record.id, command_id=command_id)
                    raise refused(
                        "the replica running this session took the event but did not confirm it; "
                        "list the events before sending it again",
                        Code.STORE_UNAVAILABLE,
                        retry=False,
                    )
                if not await self.store.withdraw(command_id):
                    continue  # claimed meanwhile: wait for its answer
                if step is Step.TAKE_BACK:
                    return None
                log.warning("command_not_claimed", session_id=record.id, command_id=command_id)
                raise refused(
                    "the replica running this session did not take the event; try again",
                    Code.SESSION_LOCKED,
                    retry=True,
                )
        finally:
            self._answered.pop(command_id, None)

    async def forward(self, record: SessionRecord, body: dict[str, Any]) -> list[Any] | None:
        """If another replica runs the session, have it apply ``body``: the data of its answer,
        its refusal raised as it said it. ``None``: serve it here (nobody else runs it, or the
        owner let it go before taking ``body``)."""
        if self.runs_here(record.id) or not owned_elsewhere(record, self.replica, datetime.now(UTC)):
            return None
        answer = await self.send(record, body)
        if answer is None:
            return None
        if "error" in answer:
            raise refusal(answer["error"])
        data: list[Any] = answer["data"]
        return data

    def answered(self, payload: str) -> None:
        """A notification: command ``payload`` has its answer."""
        with contextlib.suppress(ValueError):
            if (event := self._answered.get(int(payload))) is not None:
                event.set()

    # -- the owner --------------------------------------------------------------

    def start(self, apply: Apply) -> None:
        self._apply = apply
        self._poll = asyncio.create_task(self._poll_forever())

    def wake(self, session_id: str) -> None:
        """Commands may wait for ``session_id``: consume them if it runs here (one consumer per
        session, so they apply in the order they were sent)."""
        if self._apply is None or not self.runs_here(session_id) or session_id in self._consuming:
            return
        task = asyncio.create_task(self._consume(session_id))
        self._consuming[session_id] = task
        task.add_done_callback(lambda _t: self._consuming.pop(session_id, None))

    async def _consume(self, session_id: str) -> None:
        assert self._apply is not None
        try:
            while self.runs_here(session_id):
                claimed = await self.store.claim(session_id, self.replica)
                if not claimed:
                    return
                for command in claimed:
                    result = await self._apply(command)
                    await self._complete(command, result)
        except STORE_ERRORS as exc:  # the poll tries again; a claimed command's sender times out
            log.warning("command_consume_failed", session_id=session_id, error=type(exc).__name__)

    async def _complete(self, command: Command, result: dict[str, Any]) -> None:
        delay = 0.1
        for attempt in range(5):
            try:
                await self.store.complete(command.id, result)
                return
            except STORE_ERRORS:
                if attempt == 4:
                    raise
                await asyncio.sleep(delay)
                delay *= 2

    async def _poll_forever(self) -> None:
        """The fallback for lost notifications, and the clean-up of abandoned commands."""
        loop = asyncio.get_running_loop()
        pruned = loop.time()
        while True:
            await asyncio.sleep(POLL_S)
            try:
                for session_id in await self.store.waiting_sessions(self.replica):
                    self.wake(session_id)
                if loop.time() - pruned >= PRUNE_EVERY_S:
                    pruned = loop.time()
                    await self.store.prune(datetime.now(UTC) - KEEP_COMMANDS)
            except STORE_ERRORS:
                continue

    async def close(self) -> None:
        tasks = [t for t in (self._poll, *self._consuming.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def error_result(exc: MoorageError) -> dict[str, Any]:
    """An owner's refusal, as its sender raises it again (``refusal``)."""
    headers = exc.headers if isinstance(exc, ApiError) else {}
    return {"error": {"code": str(exc.code), "message": exc.message, "headers": headers, "fatal": exc.fatal}}


def store_error_result(exc: BaseException) -> dict[str, Any]:
    return {"error": {"code": str(Code.STORE_UNAVAILABLE), "message": store_unavailable(exc), "headers": {}}}


def refusal(error: dict[str, Any]) -> ApiError:
    """The owner's ``{"error"}`` answer, as the sender's endpoint renders it."""
    try:
        code = Code(str(error.get("code")))
    except ValueError:
        code = Code.INTERNAL
    headers = error.get("headers")
    kept = {str(k): str(v) for k, v in headers.items()} if isinstance(headers, dict) else {}
    refused = ApiError(str(error.get("message", "")), code=code, headers=kept)
    refused.fatal = bool(error.get("fatal"))
    return refused
