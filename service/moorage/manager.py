"""The sessions of this replica: create, attach, rehydrate, lease, recover.

Every session has a row in the database (``SessionRecords``). A replica runs a
session only while it holds the row's lease (renewed every ``lease_ttl_s/3``),
so two replicas on one database never run the same session at once. Attaching
to a session that is not live here rehydrates it; two connections racing to do
so share one rehydration (one sandbox). On start, and then every lease
period, the recovery sweep suspends sessions this replica owned but no longer
runs (after a crash or kill -9): it reaps their leftover sandboxes and saves
the workspace they left on disk. At most ``max_starting_sandboxes`` sessions
start their sandbox at once (``StartGate``); the rest wait their turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from claude_agent_sdk.types import SessionKey
from moorage_session_store import EventConflict, NewEvent
from moorage_session_store.records import SessionRecord

from .agents import runner_agent
from .channel import Start
from .egress import socket_base
from .egress_policy import EgressConfig, session_policy
from .errors import STORE_ERRORS, Code, SessionError, store_unavailable
from .ma_sessions import session_vault_ids
from .metrics import SWEPT_KINDS, Waits
from .packages import sandbox_layer_problem, wanted
from .pending import AgentTools
from .pool import WarmPool
from .sandbox.uids import reserving
from .session_start import agent_field, start_frame, through_tunnel
from .sessions import Deps, Session
from .storage import NOT_SAVED_FLAG, Retention, StorageQuota
from .sweep import carry_out, decide, look, socket_prefix
from .tunnel import Policy
from .warm_marks import Found, Marked, Marks, choose, parse_marked
from .workspaces import remove_workspace, suspend_record

log = structlog.get_logger(__name__)

HANDOVER_POLL_S = 0.5  # how often a waiting replica looks, and an owner checks for requests
DELETE_WAIT_S = 30.0  # a deleted session that is already ending: how long to wait for it to finish
MARKS_REFRESH_S = 60.0  # how often the agents marked for warm-up are read again (their new versions)
ORPHANS_PER_PASS = 100  # sessions of stopped replicas adopted per lease period (the rest: the next one)


class StartGate:
    """At most ``size`` sandboxes starting at once on this node. Starting is
    CPU-bound: a burst of N concurrent starts shares the CPU, so every one
    finishes late (and past the start timeout); in turns, the first are ready
    in seconds. A start that waits longer than the timeout is refused."""

    def __init__(self, size: int) -> None:
        self._slots = asyncio.Semaphore(size)
        self._held: set[object] = set()

    async def enter(self, timeout_s: float) -> object:
        """A slot (a token for ``leave``), waiting at most ``timeout_s`` for one."""
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout_s)
        except TimeoutError:
            raise SessionError(
                "this node is busy starting sandboxes; retry in a few seconds", code=Code.TOO_MANY_SESSIONS, fatal=True
            ) from None
        token = object()
        self._held.add(token)
        return token

    def leave(self, token: object) -> None:
        """Give a slot back (a second call with the same token does nothing)."""
        if token in self._held:
            self._held.remove(token)
            self._slots.release()

    @property
    def starting(self) -> int:
        return len(self._held)


class KeyedLocks:
    """One ``asyncio.Lock`` per key, kept only while someone holds or waits
    for it: an attach to an unknown id (refused, raising) leaves nothing
    behind, so a stream of bogus ids cannot grow the table."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._entries.get(key, (asyncio.Lock(), 0))
        self._entries[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._entries[key]
            if users == 1:
                del self._entries[key]
            else:
                self._entries[key] = (lock, users - 1)

    def __contains__(self, key: str) -> bool:
        """Someone holds or waits for ``key``'s lock."""
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)


class SessionManager:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self.settings = deps.settings
        self.records = deps.records
        self.sessions: dict[str, Session] = {}
        self._locks = KeyedLocks()  # one rehydration per session id at a time
        self._lease_task: asyncio.Task[None] | None = None
        self._handover_task: asyncio.Task[None] | None = None
        self._reaper_task: asyncio.Task[None] | None = None
        self._marks_task: asyncio.Task[None] | None = None
        self.marked = parse_marked(self.settings.warm_agent_ids)  # agents marked for warm-up
        self._marks = Marks()
        self.quota = StorageQuota(self.settings.tenant_storage_bytes)
        self.retention = Retention(self.settings.session_retention_days)
        self.gate = StartGate(self.settings.max_starting_sandboxes)
        self._starting: dict[Session, asyncio.Task[None]] = {}
        self.draining = False

    def waits(self) -> list[Waits]:
        """What each live session waits with: its queued messages, its requests for a client."""
        return [(len(s.core.queue), s.core.pending.kinds()) for s in self.sessions.values()]

    @functools.cached_property
    def egress(self) -> EgressConfig:
        """The operator's side of every session's egress policy (built once, at first use)."""
        return EgressConfig.of(self.settings, self.deps.backend.name)

    async def start(self) -> None:
        self.deps.metrics.session_waits.source = self.waits  # read at every scrape
        await self.recover(after_crash=True)
        await self.sweep()  # what the previous run left that no session owns: before the pool fills
        # Agents of the operator's default spec, and of the agents the operator marked for warm-up,
        # are kept started (warm_plan: pinned); the marked ones are read again every minute.
        await self.pin_warm()
        if self.marked and self.deps.agents is not None and self.pool.bounds.total > 0:
            self._marks_task = asyncio.create_task(self._marks_loop())
        self._lease_task = asyncio.create_task(self._lease_loop())
        self._handover_task = asyncio.create_task(self._handover_loop())
        self._reaper_task = asyncio.create_task(self._reaper_loop())

    @property
    def pool(self) -> WarmPool:
        return self.deps.pool

    async def pin_warm(self) -> None:
        """Pin the operator's default spec and the current version of each agent marked for
        warm-up (``MOORAGE_WARM_AGENT_IDS``; warm_marks.choose decides). Never raises for a mark:
        one that is unknown or archived is skipped (and logged once), one that cannot be read now
        keeps the version it had."""
        before = self._marks.versions
        self._marks, skipped = choose(self.marked, await self._read_marks(), self._marks)
        for mark, reason in skipped:
            log.warning("warm_agent_skipped", agent_id=mark.agent_id, tenant=mark.tenant, reason=reason)
        templates = [self._template(None, session_policy(None, None, self.egress))]
        for mark, found in self._marks.versions.items():
            if before.get(mark) != found:
                log.info("warm_agent_pinned", agent_id=mark.agent_id, tenant=mark.tenant, version=found.version)
            agent = runner_agent(mark.agent_id, found.version, found.spec)
            templates.append(self._template(agent, session_policy(None, agent, self.egress)))
        self.pool.pin(*templates)

    async def _read_marks(self) -> dict[Marked, Found | None]:
        """Each marked agent's current version (None: no such agent); those the store could not
        be asked about now are left out."""
        read: dict[Marked, Found | None] = {}
        agents = self.deps.agents
        if agents is None or self.pool.bounds.total <= 0:  # no started agents: nothing to read them for
            return read
        for mark in self.marked:
            try:
                record = await agents.get(mark.tenant, mark.agent_id)
            except STORE_ERRORS as exc:
                log.warning("warm_agent_unread", agent_id=mark.agent_id, tenant=mark.tenant, error=type(exc).__name__)
                continue
            read[mark] = None if record is None else Found(record.version, record.spec, record.archived_at is not None)
        return read

    async def _marks_loop(self) -> None:
        """A new version of a marked agent replaces the old one's agents within a minute or so."""
        while True:
            await asyncio.sleep(MARKS_REFRESH_S)
            await self.pin_warm()
            self.pool.refill()

    def runs(self, session_id: str) -> bool:
        """Is the session live on this replica (started or starting, not ending)?"""
        live = self.sessions.get(session_id)
        return live is not None and not live.closed

    def check_draining(self) -> None:
        if self.draining:
            raise SessionError(
                "the service is restarting: connect again (another replica, or this one once it is back)",
                code=Code.SERVICE_DRAINING,
                fatal=True,
            )

    def check_capacity(self, tenant: str) -> None:
        """Refuse a new sandbox past the node's or the tenant's limit (1013: retry later)."""
        live = [s for s in self.sessions.values() if not s.closed]
        if len(live) >= self.settings.max_sessions_per_node:
            raise SessionError(
                f"this node runs its limit of {self.settings.max_sessions_per_node} sessions; retry in a minute",
                code=Code.TOO_MANY_SESSIONS,
                fatal=True,
            )
        if sum(s.tenant == tenant for s in live) >= self.settings.max_sessions_per_tenant:
            raise SessionError(
                f"this tenant runs its limit of {self.settings.max_sessions_per_tenant} sessions here; "
                "close one or retry later",
                code=Code.TOO_MANY_SESSIONS,
                fatal=True,
            )

    async def _admit(self, tenant: str) -> object:
        """Wait for a start slot; then check the caps again (others started meanwhile)."""
        self.check_draining()
        self.check_capacity(tenant)
        token = await self.gate.enter(self.settings.sandbox_start_timeout_s)
        try:
            self.check_capacity(tenant)
        except BaseException:
            self.gate.leave(token)
            raise
        return token

    async def create(
        self,
        tenant: str,
        agent: dict[str, Any] | None = None,
        environment: dict[str, Any] | None = None,
        api: dict[str, Any] | None = None,
    ) -> Session:
        """A new session, its sandbox starting, running ``agent`` (a pinned
        ``agents.runner_agent``; None: the operator's default) in ``environment`` (``{"id": env_id,
        "spec": stored spec}``; None: the operator's egress, ``MOORAGE_EGRESS_ALLOW``). ``api``: the
        HTTP view's fields (``ma_sessions``), whose ``budget_cents`` caps what the session may
        spend. Refuses an environment this server cannot honour now."""
        self.check_draining()
        egress = session_policy(environment, agent, self.egress)  # before anything is stored
        layered = self._check_packages(environment)
        await self._check_quota(tenant)  # before a start slot: refused at once
        token = await self._admit(tenant)
        vault_ids = tuple(session_vault_ids(api))
        # A started agent of this spec, if the pool has one: the session takes its id. Not for a
        # session with packages: pooled sandboxes were started without its layer.
        claimed = None if vault_ids or layered else self.pool.claim(self._template(agent, egress))
        session_id = claimed.session_id if claimed is not None else str(uuid.uuid4())
        try:
            options: dict[str, Any] = {"max_turns": self.settings.max_turns}
            if agent is not None:
                options["agent"] = agent  # the whole version: rehydration needs no agents read
            if environment is not None:
                options["environment"] = environment  # its spec as it is now: the same egress after rehydration
            pinned = (str(agent["id"]), int(agent["version"])) if agent is not None else None
            await self.records.create(session_id, tenant, options, api=api, agent=pinned)
            if not await self.records.acquire_lease(session_id, self.deps.replica, self.settings.lease_ttl_s):
                raise SessionError("could not lease a new session", code=Code.SESSION_LOCKED, fatal=True)
        except BaseException as exc:
            self.gate.leave(token)
            if claimed is not None:
                self.pool.release(claimed)
            if isinstance(exc, STORE_ERRORS):
                raise SessionError(store_unavailable(exc), code=Code.STORE_UNAVAILABLE, fatal=True) from exc
            raise
        session = Session(
            session_id,
            tenant,
            self.deps,
            self._closed,
            agent=agent,
            environment=environment,
            egress=egress,
            budget_usd=budget_usd(api),
            vault_ids=vault_ids,
            claimed=claimed,
        )
        return self._launch(session, token)

    def _check_packages(self, environment: dict[str, Any] | None) -> bool:
        """Whether the session's environment has packages (packages.py); refuses one whose layer
        this server cannot mount or could not build just now, and starts building it otherwise."""
        spec = environment["spec"] if environment is not None else None
        if not wanted(spec):
            return False
        env_id = str(environment["id"]) if environment is not None else ""
        why = sandbox_layer_problem(self.deps.backend.name, wanted(spec))
        if why is not None:
            raise SessionError(f"environment {env_id}: {why}", code=Code.PACKAGES_NOT_SUPPORTED, fatal=True)
        layers = self.deps.packages
        if layers is not None:
            if (failed := layers.failure(spec)) is not None:
                raise SessionError(
                    f"environment {env_id}: its packages could not be built: {failed}",
                    code=Code.ENVIRONMENT_BUILD_FAILED,
                    fatal=True,
                )
            layers.prepare(spec)  # the session's start waits for it
        return True

    def _template(self, agent: dict[str, Any] | None, egress: Policy) -> Start:
        """The start frame a new session of ``agent`` (None: the operator's default) with
        ``egress`` sends, under no session id yet: its spec for the warm pool."""
        # The same helpers as the session's own start frame (session_start): the two must match.
        wire = agent_field(agent, AgentTools.parse(self.settings.default_agent))
        return start_frame(self.settings, "", agent=wire, tunnel=through_tunnel(self.deps.proxy, egress))

    async def attach(self, session_id: str, tenant: str) -> tuple[Session, str]:
        """A live session ('attached'), or a suspended one rehydrated here."""
        self.check_draining()
        if not is_session_id(session_id):  # answered like an unknown id, without a query
            raise _not_found()
        live = self.sessions.get(session_id)
        if live is not None and not live.closed:
            if live.tenant != tenant:
                raise _not_found()
            return live, "attached"
        async with self._locks.hold(session_id):
            live = self.sessions.get(session_id)
            if live is not None and not live.closed:  # a racing attach got here first
                if live.tenant != tenant:
                    raise _not_found()
                return live, "rehydrated" if live.rehydrate else "attached"
            await self._before_rehydrate(session_id, tenant)
            session = await self._rehydrate(session_id, tenant)
        return session, "rehydrated"

    async def _before_rehydrate(self, session_id: str, tenant: str) -> None:
        """Before taking a start slot: an unknown (or another tenant's) id is
        refused at once, so bogus attaches cost no slot and a tenant at its cap
        still hears ``session_not_found``. If the session runs on another
        replica, ask for it and wait (bounded) until that replica lets it go:
        any replica can serve any session, not only its current owner."""
        try:
            record = await self.records.get(session_id)
        except STORE_ERRORS:
            return  # _rehydrate reports the outage
        if record is None or record.tenant != tenant or record.state == "closed":
            raise _not_found()
        expired = record.lease_expires_at is not None and record.lease_expires_at < datetime.now(UTC)
        if record.owner in (None, self.deps.replica) or expired:
            return  # free, ours, or its owner is gone: the lease is ours to take
        await self.ask_handover(record)

    async def ask_handover(self, record: SessionRecord) -> bool:
        """Ask the replica running ``record``'s session to let it go, and wait (bounded) for it:
        ``True`` once it did, ``False`` if it keeps it (in use there: it declines at once) or did
        not answer within ``MOORAGE_HANDOVER_WAIT_S``."""
        try:
            if not await self.records.request_handover(record.id, self.deps.replica):
                return True  # nobody else holds it
            log.info("handover_requested", session_id=record.id, owner=record.owner)
            for _ in range(max(1, int(self.settings.handover_wait_s / HANDOVER_POLL_S))):
                await asyncio.sleep(HANDOVER_POLL_S)
                current = await self.records.get(record.id)
                if current is None or current.owner is None:
                    return True
                if current.owner == record.owner and current.handover_requested_at is None:
                    return False  # declined
        except STORE_ERRORS:
            pass  # the caller's next step reports the outage
        return False

    async def _handover_loop(self) -> None:
        """Give up sessions another replica asked for if nobody uses them here; decline the
        others at once."""
        while True:
            await asyncio.sleep(HANDOVER_POLL_S)
            since = datetime.now(UTC) - timedelta(seconds=self.settings.handover_wait_s)
            try:
                wanted = await self.records.handover_requests(self.deps.replica, since)
            except STORE_ERRORS:
                continue
            live = [s for i in wanted if (s := self.sessions.get(i)) is not None and not s.closed]
            free = [s for s in live if not s.in_use]
            for session in free:
                log.info("session_handed_over", session_id=session.id)
            for session in live:
                if session.in_use:  # the asker follows it from where it is instead (ws_remote.py)
                    log.info("handover_declined", session_id=session.id)
                    with contextlib.suppress(*STORE_ERRORS):
                        await self.records.decline_handover(session.id, self.deps.replica)
            await asyncio.gather(*(s.close() for s in free), return_exceptions=True)

    async def _rehydrate(self, session_id: str, tenant: str) -> Session:
        token = await self._admit(tenant)
        try:
            return await self._rehydrate_admitted(session_id, tenant, token)
        except BaseException:
            self.gate.leave(token)
            raise

    async def _rehydrate_admitted(self, session_id: str, tenant: str, token: object) -> Session:
        try:
            record = await self.records.get(session_id)
            if record is None or record.tenant != tenant or record.state == "closed":
                # Another tenant's session answers exactly like an unknown one.
                raise _not_found()
            pinned, environment = record.options.get("agent"), record.options.get("environment")
            egress = session_policy(environment, pinned, self.egress)  # the operator may have changed since
            if not await self.records.acquire_lease(session_id, self.deps.replica, self.settings.lease_ttl_s):
                raise SessionError(
                    "the session is running on another replica; try again", code=Code.SESSION_LOCKED, fatal=True
                )
            if record.state == "active" and record.owner == self.deps.replica:
                # Ours, but not live: left by a crash before the sweep ran.
                await self._recover_one(record)
            resume = record.turns > 0 or bool(await self.deps.store.load(_key(tenant, session_id)))
        except STORE_ERRORS as exc:
            raise SessionError(store_unavailable(exc), code=Code.STORE_UNAVAILABLE, fatal=True) from exc
        log.info("session_rehydrating", session_id=session_id, tenant=tenant, resume=resume)
        session = Session(
            session_id,
            tenant,
            self.deps,
            self._closed,
            True,
            resume,
            record.cost_usd,
            agent=pinned,  # the agent version it started with
            environment=environment,
            egress=egress,
            budget_usd=budget_usd(record.api),
            vault_ids=tuple(session_vault_ids(record.api)),  # kept in the record: the same vaults again
        )
        await self._storage_notices(session, record.options)
        return self._launch(session, token)

    def _launch(self, session: Session, token: object) -> Session:
        """Start the session's sandbox; its start slot is given back once it is ready (or failed)."""
        self.sessions[session.id] = session
        session.launch()
        self._starting[session] = asyncio.create_task(self._started(session, token))
        return session

    async def _started(self, session: Session, token: object) -> None:
        try:
            await session.ready.wait()
        finally:
            self.gate.leave(token)
            self._starting.pop(session, None)

    def _closed(self, session: Session) -> None:
        if (waiting := self._starting.pop(session, None)) is not None:
            waiting.cancel()  # closed before it was ready: the slot goes back now
        if self.sessions.get(session.id) is session:
            del self.sessions[session.id]

    async def _lease_loop(self) -> None:
        period = self.settings.lease_ttl_s / 3
        while True:
            await asyncio.sleep(period)
            for session in list(self.sessions.values()):
                if session.closed:  # ending: it gives its lease back itself
                    continue
                try:
                    held = await self.records.renew_lease(session.id, self.deps.replica, self.settings.lease_ttl_s)
                except STORE_ERRORS as exc:
                    log.warning("lease_renew_failed", session_id=session.id, error=type(exc).__name__)
                    continue
                # A session that ended during the renewal released its lease: not lost.
                if not held and not session.closed:
                    log.error("lease_lost", session_id=session.id)
                    await session.close()
            with contextlib.suppress(*STORE_ERRORS):
                await self.recover()
            with contextlib.suppress(*STORE_ERRORS):
                await self.adopt_orphans()

    async def recover(self, after_crash: bool = False) -> None:
        """Suspend sessions this replica owns in the database but does not run. ``after_crash``
        (at start): they ran in this replica's previous process, which died; their logs say so."""
        for record in await self.records.list(state="active", owner=self.deps.replica):
            if record.id in self.sessions or record.id in self._locks:
                continue
            if after_crash:
                await self._log_lost(record.id)
            await self._recover_one(record)

    async def adopt_orphans(self) -> None:
        """Suspend the sessions of replicas that stopped renewing their leases (killed, cut off
        from the database, gone for good): a turn they ran is lost, the transcript is not, and the
        next request rehydrates the session wherever it lands. The workspace is its last
        checkpoint: the other replica's disk is not ours to read. Each session's log says what
        happened, so a stream on any replica reports it."""
        expired = await self.records.orphans(datetime.now(UTC), self.deps.replica, ORPHANS_PER_PASS)
        for record in expired:
            if record.id in self.sessions or record.id in self._locks:
                continue
            async with self._locks.hold(record.id):
                if not await self.records.acquire_lease(record.id, self.deps.replica, self.settings.lease_ttl_s):
                    continue  # its owner came back, or another replica adopts it
                current = await self.records.get(record.id)
                if current is None or current.state != "active":  # adopted and suspended already
                    await self.records.release_lease(record.id, self.deps.replica)
                    continue
                bound = log.bind(session_id=record.id, tenant=record.tenant, owner=record.owner)
                bound.warning("session_adopted", detail="its replica stopped renewing the lease")
                await self._log_lost(record.id)
                await suspend_record(self.deps, record.id, None, bound)

    async def _log_lost(self, session_id: str) -> None:
        """Append to the session's log that the replica running it stopped (for its streams, its
        replay and its Managed Agents view: a fatal error ends a running turn there)."""
        lost = SessionError(
            "the replica running this session stopped; a turn it was running is lost. "
            "The next message resumes the session with its history",
            code=Code.SANDBOX_CRASHED,
            fatal=True,
        ).frame()
        for _ in range(3):  # a racing writer took the seq: read the last one again
            last = await self.deps.events.last_seq(session_id)
            with contextlib.suppress(EventConflict):
                await self.deps.events.append(session_id, [NewEvent(last + 1, "error", lost, datetime.now(UTC))])
                return

    async def sweep(self) -> None:
        """Remove what a crashed run left under the state dir that no session
        of this replica still owns (see sweep.py); one log line, a counter."""
        try:  # a session the recovery could not suspend keeps its workspace
            left = await self.records.list(state="active", owner=self.deps.replica)
        except STORE_ERRORS as exc:
            log.warning("state_sweep_skipped", error=type(exc).__name__)
            return
        keep = {Path(str(h["workspace"])).name for r in left if (h := r.sandbox or {}).get("workspace")}
        keep |= {s.workspace.name for s in self.sessions.values() if s.workspace is not None}
        state_dir = self.settings.state_dir
        found = await asyncio.to_thread(look, state_dir, Path(socket_base()), socket_prefix(state_dir))
        plan = decide(found, keep, self.deps.proxy.socket_dir, os.geteuid())
        removed = await asyncio.to_thread(carry_out, plan) if plan else dict.fromkeys(SWEPT_KINDS, 0)
        for kind, count in removed.items():
            self.deps.metrics.state_swept.labels(kind).inc(count)
        log.info("state_swept", kept=len(keep), **removed)

    async def _recover_one(self, record: SessionRecord) -> None:
        handle = record.sandbox or {}
        if handle:
            await self.deps.backend.reap(handle)
        workspace = Path(handle["workspace"]) if handle.get("workspace") else None
        bound = log.bind(session_id=record.id, tenant=record.tenant)
        bound.info("session_recovering", had_sandbox=bool(handle))
        if workspace is not None and handle.get("workspace_mounted") and not workspace.is_mount():
            # Its filesystem went with the host: what is left is an empty
            # mount point, not the session's files. Keep the last checkpoint.
            bound.warning("workspace_lost_with_host", detail="rehydrating from the last workspace checkpoint")
            await asyncio.to_thread(remove_workspace, workspace)
            workspace = None
        with reserving(handle.get("uid")):  # archived as that uid: nobody else may take it meanwhile
            await suspend_record(self.deps, record.id, workspace, bound)

    # -- storage: quota, deletion, retention ------------------------------------

    async def _check_quota(self, tenant: str) -> None:
        """Refuse a new session while the tenant stores its quota or more."""
        if self.quota.limit <= 0:
            return
        try:
            used = await self.records.tenant_storage_bytes(tenant)
        except STORE_ERRORS as exc:
            raise SessionError(store_unavailable(exc), code=Code.STORE_UNAVAILABLE, fatal=True) from exc
        if not self.quota.admits_session(used):
            log.info("session_refused", reason=str(Code.STORAGE_QUOTA_EXCEEDED), tenant=tenant, stored_bytes=used)
            raise self.quota.session_refused(used)

    async def _storage_notices(self, session: Session, options: dict[str, Any]) -> None:
        """A rehydrated session's clients hear that its last workspace save was refused (once), and
        that its tenant is over quota now. Only told: nothing here refuses the session."""
        if self.quota.limit <= 0 and not options.get(NOT_SAVED_FLAG):
            return
        try:
            if options.get(NOT_SAVED_FLAG):
                session.notice(self.quota.workspace_not_saved())
                rest = {k: v for k, v in options.items() if k != NOT_SAVED_FLAG}
                await self.records.update(session.id, options=rest)
            if self.quota.limit > 0:
                used = await self.records.tenant_storage_bytes(session.tenant)
                if not self.quota.admits_session(used):
                    session.notice(self.quota.over_quota(used))
        except STORE_ERRORS as exc:
            log.warning("storage_count_failed", session_id=session.id, error=type(exc).__name__)

    async def delete(self, session_id: str, tenant: str) -> None:
        """Delete one of ``tenant``'s sessions and everything it stored. A session live here is
        stopped first (its clients get a fatal ``session_deleted``); one live on another replica is
        asked for, as an attach would, and refused with ``session_locked`` if it is not let go. An
        unknown id, or another tenant's, raises ``session_not_found``."""
        if not is_session_id(session_id):
            raise _not_found()
        async with self._locks.hold(session_id):  # no attach rehydrates it meanwhile
            await self._delete_locked(session_id, tenant)
        self.deps.metrics.sessions_deleted.labels("request").inc()
        log.info("session_deleted", session_id=session_id, tenant=tenant)

    async def _delete_locked(self, session_id: str, tenant: str) -> None:
        live = self.sessions.get(session_id)
        if live is not None and live.tenant != tenant:
            raise _not_found()
        try:
            record = await self.records.get(session_id)
            if record is None or record.tenant != tenant:
                raise _not_found()
            if live is not None:
                await live.close(SessionError("this session was deleted", code=Code.SESSION_DELETED, fatal=True))
                # Already ending (closed by something else): let it finish writing before it goes.
                for _ in range(int(DELETE_WAIT_S / 0.05)):
                    if self.sessions.get(session_id) is not live:
                        break
                    await asyncio.sleep(0.05)
            else:
                await self._before_rehydrate(session_id, tenant)  # held elsewhere: ask for it, bounded
            if not await self.records.purge(session_id, owner=self.deps.replica):
                if await self.records.get(session_id) is None:
                    raise _not_found()  # a concurrent delete won
                raise SessionError(
                    "the session is in use on another replica; try again", code=Code.SESSION_LOCKED, fatal=True
                )
        except STORE_ERRORS as exc:
            raise SessionError(store_unavailable(exc), code=Code.STORE_UNAVAILABLE, fatal=True) from exc
        if live is not None and live.workspace is not None:
            # Left on disk when its suspension could not reach the database; no sweep would find it now.
            await asyncio.to_thread(remove_workspace, live.workspace)

    async def _reaper_loop(self) -> None:
        while True:
            await asyncio.sleep(self.retention.period_s)
            try:
                await self.reap_once(datetime.now(UTC))
            except STORE_ERRORS as exc:
                log.warning("sessions_reap_failed", error=type(exc).__name__)
            try:
                await self.expire_files(datetime.now(UTC))
            except STORE_ERRORS as exc:
                log.warning("files_expire_failed", error=type(exc).__name__)

    async def expire_files(self, now: datetime) -> int:
        """One sweep of the files: delete those expired at ``now`` (their bytes with them) and
        uploads a crash abandoned; one log line when any went."""
        if self.deps.files is None:
            return 0
        deleted = await self.deps.files.delete_expired(now)
        if deleted:
            self.deps.metrics.files_deleted.labels("expired").inc(deleted)
            log.info("files_expired", deleted=deleted)
        return deleted

    async def reap_once(self, now: datetime) -> int:
        """One sweep: delete the sessions due under the retention policy, in batches; one log line."""
        cutoff = self.retention.cutoff(now)
        if cutoff is None:
            return 0
        deleted = batches = 0
        while True:
            ids = await self.records.reap_suspended(cutoff, self.retention.batch)
            batches += 1
            deleted += len(ids)
            self.deps.metrics.sessions_deleted.labels("retention").inc(len(ids))
            if not self.retention.another_batch(len(ids), batches):
                break
        log.info("sessions_reaped", deleted=deleted, batches=batches, suspended_before=cutoff.isoformat())
        return deleted

    async def drain(self, grace_s: float) -> None:
        """Shut down gently: no new sessions or turns, running turns get up to
        ``grace_s`` to finish, then every session is suspended and its clients
        are told to reconnect (close 1012), to this replica's successor."""
        self.draining = True
        for session in self.sessions.values():
            session.draining = True
        busy = [s for s in self.sessions.values() if s.busy]
        log.info("service_draining", sessions=len(self.sessions), running_turns=len(busy), grace_s=grace_s)
        if busy:
            waits = [asyncio.create_task(s.settled.wait()) for s in busy]
            await asyncio.wait(waits, timeout=grace_s)
            for wait in waits:
                wait.cancel()
            busy = [s for s in busy if s.busy and not s.closed]
        if busy:
            log.warning("drain_grace_expired", unfinished_turns=len(busy))
        reason = SessionError(
            "the service is restarting: this session is suspended; reconnect to continue it",
            code=Code.SERVICE_DRAINING,
        )
        await asyncio.gather(*(s.close(reason) for s in list(self.sessions.values())), return_exceptions=True)
        log.info("service_drained", unfinished_turns=len(busy))

    async def close(self) -> None:
        for task in (self._lease_task, self._handover_task, self._reaper_task, self._marks_task):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(s.close() for s in list(self.sessions.values())), return_exceptions=True)


def budget_usd(api: dict[str, Any] | None) -> float | None:
    """The session's own budget in USD (the HTTP view's ``budget``), if it has one."""
    cents = (api or {}).get("budget_cents")
    return cents / 100 if isinstance(cents, int) else None


def _not_found() -> SessionError:
    return SessionError("no such session", code=Code.SESSION_NOT_FOUND, fatal=True)


def is_session_id(text: str) -> bool:
    """What ``create`` hands out: a canonical UUID. Anything else (a NUL
    byte, which PostgreSQL refuses in text) never reaches the database."""
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


def _key(tenant: str, session_id: str) -> SessionKey:
    return {"project_key": tenant, "session_id": session_id}
