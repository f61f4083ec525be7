"""Warm sandboxes: started ahead of demand so a new session skips the slow
parts of a cold start (a fresh Python importing claude-agent-sdk, ~1 s; the
Claude Code CLI starting, ~1 s more).

Two kinds, both belonging to no session yet:

- a *loaded* sandbox has its runner loaded (``loaded`` frame sent) and waits
  for ``start``: any session can take it, a rehydrated one included
  (``MOORAGE_WARM_SANDBOXES`` of them);
- a *started agent* is a loaded sandbox that was sent ``prestart``: its CLI
  runs with the exact start frame a new session of one agent spec will send,
  under a session id chosen now, which the session that claims it takes as
  its own. Which specs and how many: ``warm_plan``; how many in all: at most
  ``MOORAGE_WARM_AGENTS``, and no more than fit in
  ``MOORAGE_WARM_AGENTS_MEMORY_BYTES`` at what the pool measured its started
  agents to hold (their memory cgroups, where the backend can tell).

A warm sandbox's workspace and model-proxy socket are keyed by its own
sandbox id, so handing it to a session changes nothing on disk. Its tunnel
allows nothing and its model requests are charged to nobody until a session
claims it; nothing reaches its agent before then. A claimed sandbox is
removed from the pool first, so no two sessions ever share one. Sessions
fall back to a cold start when the pool has nothing for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import structlog

from . import channel
from .channel import (
    ChannelViolation,
    Garbage,
    Phase,
    Prestart,
    Prestarted,
    Reason,
    RunnerChannel,
    RunnerError,
    RunnerFrame,
    Start,
)
from .egress import ModelProxy
from .errors import Code, SandboxError
from .metrics import Metrics
from .sandbox.base import Sandbox, SandboxBackend, SandboxSpec
from .warm_plan import Bounds, Demand, agent_bytes, shortfall, surplus, targets, warm_key, within_budget
from .workspaces import remove_workspace

log = structlog.get_logger(__name__)
NO_AGENTS = Bounds(total=0, per_spec=0, idle_s=0.0)
PAUSE_S = (10.0, 300.0)  # the warm pool's pause after three failed starts in a row: first, most


@dataclass
class Loaded:
    """A started sandbox whose runner has loaded and awaits ``start``."""

    sandbox: Sandbox
    sandbox_id: str
    workspace: Path


@dataclass
class Started:
    """A loaded sandbox whose runner answered ``prestart``: its CLI runs for ``start`` (the
    frame the claiming session sends), under ``session_id`` (which that session takes)."""

    loaded: Loaded
    key: str
    start: Start

    @property
    def session_id(self) -> str:
        return str(self.start.options["session_id"])


def for_session(template: Start, session_id: str) -> Start:
    """``template`` (a spec's start frame) for the session ``session_id``."""
    return replace(template, options={**template.options, "session_id": session_id})


async def prestart(loaded: Loaded, start: Start, timeout_s: float) -> None:
    """Send ``prestart`` and wait (bounded) for ``prestarted``. Raises ``SandboxError``."""
    order = RunnerChannel(Phase.LOADED)
    frame = Prestart(start)
    order.sent(frame)
    try:
        async with asyncio.timeout(timeout_s):
            await loaded.sandbox.send(frame.wire())
            reply = await _first_frame(loaded.sandbox)
        if reply is None:
            raise SandboxError("the runner exited while starting its agent", code=Code.SANDBOX_START_FAILED)
        if isinstance(reply, RunnerError):
            raise SandboxError(f"the agent did not start: {reply.message[:500]}", code=Code.SANDBOX_START_FAILED)
        if not isinstance(order.received(reply), Prestarted):
            raise ChannelViolation(Reason.OUT_OF_ORDER, f"{type(reply).__name__.lower()} while prestarting")
    except ChannelViolation as exc:
        raise SandboxError(exc.message, code=Code.SANDBOX_CRASHED) from None
    except TimeoutError:
        raise SandboxError(f"the agent did not start within {timeout_s:g}s", code=Code.SANDBOX_START_FAILED) from None


async def start_loaded(
    backend: SandboxBackend,
    proxy: ModelProxy,
    workspaces: Path,
    timeout_s: float,
    metrics: Metrics,
    session_id: str = "",
    packages: Path | None = None,
) -> Loaded:
    """Start one sandbox (with an environment's ``packages`` layer, if given: packages.py) and
    wait (bounded) for its runner's ``loaded`` frame."""
    sandbox_id = uuid.uuid4().hex[:12]
    workspace = workspaces / sandbox_id
    socket = await proxy.open(sandbox_id)
    tunnel = await proxy.tunnel.open(sandbox_id) if proxy.tunnel is not None else None
    spec = SandboxSpec(
        session_id=session_id,
        sandbox_id=sandbox_id,
        workspace=workspace,
        model_socket=socket,
        tunnel_socket=tunnel,
        packages=packages,
    )
    try:
        sandbox = await backend.start(spec)
    except BaseException:
        await proxy.close_sandbox(sandbox_id)
        raise
    metrics.sandbox_time.started(sandbox_id, backend.name)
    loaded = Loaded(sandbox, sandbox_id, workspace)
    try:
        first = await asyncio.wait_for(_first_frame(sandbox), timeout_s)
        if first is None:
            raise SandboxError("sandbox did not start: the runner exited while loading", code=Code.SANDBOX_START_FAILED)
        if isinstance(first, RunnerError):
            raise SandboxError(f"sandbox did not start: {first.message[:500]}", code=Code.SANDBOX_START_FAILED)
        if isinstance(first, channel.Loaded) and first.version != channel.CHANNEL_VERSION:
            raise SandboxError(
                f"sandbox did not start: its runner speaks channel version {first.version}, this service "
                f"speaks {channel.CHANNEL_VERSION}; the sandbox image does not match the service (make images)",
                code=Code.SANDBOX_START_FAILED,
            )
        RunnerChannel().received(first)
        if not isinstance(first, channel.Loaded):
            raise ChannelViolation(Reason.OUT_OF_ORDER, "a frame before loaded")
    except ChannelViolation as exc:
        await discard(loaded, proxy, metrics)
        raise SandboxError(exc.message, code=Code.SANDBOX_CRASHED) from None
    except TimeoutError:
        await discard(loaded, proxy, metrics)
        raise SandboxError(
            f"sandbox did not start: the runner did not load within {timeout_s:g}s", code=Code.SANDBOX_START_FAILED
        ) from None
    except BaseException:  # SandboxError above, a cancelled start (the pool closing), a bug: the
        # sandbox, its socket and its workspace (a tmpfs mount) must not outlive us
        await asyncio.shield(discard(loaded, proxy, metrics))
        raise
    return loaded


async def _first_frame(sandbox: Sandbox) -> RunnerFrame | None:
    """The runner's first frame, past stray prints."""
    while isinstance(frame := await sandbox.recv(), Garbage):
        pass
    return frame


async def discard(loaded: Loaded, proxy: ModelProxy, metrics: Metrics) -> None:
    await loaded.sandbox.stop(2.0)
    metrics.sandbox_time.stopped(loaded.sandbox_id)
    await proxy.close_sandbox(loaded.sandbox_id)
    await asyncio.to_thread(remove_workspace, loaded.workspace)


class WarmPool:
    """Keeps up to ``size`` loaded sandboxes and the started agents ``warm_plan`` asks for ready.
    One filler task starts them one at a time (started agents first, in the plan's order)."""

    TEND_S = 10.0  # how often an idle spec's agents are looked at

    def __init__(
        self,
        backend: SandboxBackend,
        proxy: ModelProxy,
        workspaces: Path,
        size: int,
        timeout_s: float,
        metrics: Metrics,
        agents: Bounds = NO_AGENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = metrics
        self.backend = backend
        self.proxy = proxy
        self.workspaces = workspaces
        self.size = size
        self.timeout_s = timeout_s
        self.bounds = agents
        self.clock = clock
        self.ready: list[Loaded] = []
        self.agents: dict[str, list[Started]] = {}  # by spec key, oldest first
        self.demands: dict[str, Demand] = {}
        self.templates: dict[str, Start] = {}  # a spec's start frame (any session id)
        self._filler: asyncio.Task[None] | None = None
        self._tender: asyncio.Task[None] | None = None
        self._closed = False
        self._discards: set[asyncio.Task[None]] = set()
        # After three failures in a row the filler stops; nothing refills before this (a broken
        # host, or an agent spec whose CLI cannot start, is not retried every few seconds).
        self._paused_until = float("-inf")
        self._pause_s = PAUSE_S[0]
        self._agent_bytes: int | None = None  # what one started agent holds, once measured
        self.metrics.warm_agents_limit.set(self.limit)

    def refill(self) -> None:
        if self._closed or self.clock() < self._paused_until:
            return
        if self.bounds.total > 0 and self._tender is None:
            self._tender = asyncio.create_task(self._tend())
        if self._filler is None or self._filler.done():
            self._filler = asyncio.create_task(self._fill())

    def pin(self, *templates: Start) -> None:
        """Keep agents of exactly these specs started while the pool runs (the operator's default,
        the agents marked for warm-up). A spec pinned before and not now is unpinned: like any
        unpinned spec it keeps its agents while sessions of it came within ``idle_s``, else they go
        at the next look (the filler's; ``refill`` or the tick)."""
        if self.bounds.total <= 0:
            return
        keep = {key: t for t in templates if (key := warm_key(t.wire())) is not None}
        for demand in self.demands.values():
            demand.pinned = False
        for key, template in keep.items():
            self.demands.setdefault(key, Demand()).pinned = True
            self.templates[key] = template

    def _have(self) -> dict[str, int]:
        return {key: len(entries) for key, entries in self.agents.items() if entries}

    def _plan(self) -> dict[str, int]:
        return targets(self.demands, self.clock(), replace(self.bounds, total=self.limit))

    @property
    def limit(self) -> int:
        """The started agents the pool may keep now: the count bound, or fewer under the memory
        budget (``warm_plan.within_budget``)."""
        return within_budget(self.bounds, self._agent_bytes)

    def _measure(self) -> None:
        """What a started agent holds, from those ready now (their sandboxes' memory cgroups),
        for the memory budget; and the limit it makes, for the gauge."""
        if self.bounds.memory_bytes > 0:
            measured = [e.loaded.sandbox.memory_bytes() for entries in self.agents.values() for e in entries]
            self._agent_bytes = agent_bytes(measured, self._agent_bytes)
        self.metrics.warm_agents_limit.set(self.limit)

    async def _fill(self) -> None:
        failures = 0
        while not self._closed:
            self._measure()
            self._evict()
            key = shortfall(self._have(), self._plan())
            if key is None and len(self.ready) >= self.size:
                return
            try:
                if key is not None:
                    await self._start_agent(key)
                else:
                    loaded = await start_loaded(self.backend, self.proxy, self.workspaces, self.timeout_s, self.metrics)
                    if self._closed:
                        await discard(loaded, self.proxy, self.metrics)
                        return
                    self.ready.append(loaded)
                failures, self._pause_s = 0, PAUSE_S[0]
            except SandboxError as exc:
                failures += 1
                log.warning("warm_sandbox_failed", error=exc.message, agent=key is not None)
                if failures >= 3:  # do not spin on a broken host: sessions start cold meanwhile
                    self._paused_until = self.clock() + self._pause_s
                    log.warning("warm_pool_paused", seconds=self._pause_s)
                    self._pause_s = min(self._pause_s * 2, PAUSE_S[1])
                    return

    async def _start_agent(self, key: str) -> None:
        # The id of the session that will claim it, chosen now: its sandbox is labelled with it.
        start = for_session(self.templates[key], str(uuid.uuid4()))
        loaded = await start_loaded(
            self.backend, self.proxy, self.workspaces, self.timeout_s, self.metrics, str(start.options["session_id"])
        )
        try:
            await prestart(loaded, start, self.timeout_s)
        except BaseException as exc:
            if isinstance(exc, SandboxError):
                self.metrics.warm_agent_starts.labels("failed").inc()
            await asyncio.shield(discard(loaded, self.proxy, self.metrics))
            raise
        self.metrics.warm_agent_starts.labels("ok").inc()
        if self._closed:
            await discard(loaded, self.proxy, self.metrics)
            return
        self.agents.setdefault(key, []).append(Started(loaded, key, start))
        self.metrics.warm_agents.inc()

    def _evict(self) -> None:
        """Let go of started agents over the plan (oldest first) and of dead ones; forget the
        specs the plan no longer names (their demand and start frame: memory stays bounded
        however many agent versions come and go)."""
        for entries in self.agents.values():
            for dead in [e for e in entries if e.loaded.sandbox.returncode is not None]:
                entries.remove(dead)
                self._drop(dead.loaded, "dead")
        plan = self._plan()
        now = self.clock()
        for key, extra in surplus(self._have(), plan).items():
            # Idle: nothing keeps the spec any more. A spec still pinned or used lately that has
            # no room left (others came first, the memory budget fell) is over its share.
            demand = self.demands.get(key, Demand())
            wanted = key in plan or demand.pinned or now - demand.last <= self.bounds.idle_s
            for _ in range(extra):
                self._drop(self.agents[key].pop(0).loaded, "surplus" if wanted else "idle")
        for key in [k for k, d in self.demands.items() if k not in plan and not d.pinned]:
            if not self.agents.get(key):
                self.demands.pop(key, None)
                self.templates.pop(key, None)
                self.agents.pop(key, None)

    def _drop(self, loaded: Loaded, reason: str) -> None:
        self.metrics.warm_agents.dec()
        self.metrics.warm_agent_evictions.labels(reason).inc()
        self._discard_later(loaded)

    async def _tend(self) -> None:
        """Every ``TEND_S``: let idle specs' agents go (nothing else would wake the filler)."""
        while not self._closed:
            await asyncio.sleep(self.TEND_S)
            self.refill()

    def _discard_later(self, loaded: Loaded) -> None:
        task = asyncio.create_task(discard(loaded, self.proxy, self.metrics))
        self._discards.add(task)
        task.add_done_callback(self._discards.discard)

    def claim(self, template: Start) -> Started | None:
        """A started agent of ``template``'s spec, now the caller's (its session takes the
        agent's session id), or None. Either way the spec counts as asked for; refills behind."""
        key = warm_key(template.wire())
        if key is None or self.bounds.total <= 0 or self._closed:
            return None
        self.demands.setdefault(key, Demand()).asked(self.clock(), self.bounds.window_s)
        self.templates[key] = template
        entries = self.agents.get(key, [])
        found = None
        while entries and found is None:
            entry = entries.pop(0)
            if entry.loaded.sandbox.returncode is None:
                found = entry
                self.metrics.warm_agents.dec()
            else:
                self._drop(entry.loaded, "dead")
        self.metrics.warm_agent_claims.labels("hit" if found is not None else "miss").inc()
        self.refill()
        return found

    def release(self, started: Started) -> None:
        """A claimed agent its session never used (the session could not be made): stopped."""
        self._discard_later(started.loaded)

    def take(self) -> Loaded | None:
        """A loaded sandbox, or None when the pool is empty. Refills behind."""
        while self.ready:
            loaded = self.ready.pop(0)
            if loaded.sandbox.returncode is None:
                self.refill()
                return loaded
            self._discard_later(loaded)
        self.refill()
        return None

    async def close(self) -> None:
        self._closed = True
        for task in (self._filler, self._tender):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        ready, self.ready = self.ready, []
        started = [entry.loaded for entries in self.agents.values() for entry in entries]
        self.agents = {}
        self.metrics.warm_agents.set(0)
        everything = [*ready, *started]
        await asyncio.gather(*(discard(w, self.proxy, self.metrics) for w in everything), return_exceptions=True)
        await asyncio.gather(*self._discards, return_exceptions=True)
