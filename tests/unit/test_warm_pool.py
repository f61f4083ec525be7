"""The warm pool's started agents (pool.WarmPool with warm_plan), with stand-in sandboxes whose
runner answers ``loaded`` and ``prestart`` as the real one does, and a hand-moved clock."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from moorage.agents import runner_agent
from moorage.channel import Loaded, Prestarted, RunnerError, RunnerFrame, Start
from moorage.egress import ModelProxy
from moorage.manager import SessionManager
from moorage.metrics import Metrics
from moorage.pool import WarmPool
from moorage.sandbox.base import SandboxBackend, SandboxSpec
from moorage.settings import Settings
from moorage.warm_plan import Bounds, warm_key
from moorage_session_store import DatabaseUnavailable
from moorage_session_store.agents import AgentRecord
from structlog.testing import capture_logs
from support import eventually

DEFAULT = Start({"session_id": "", "max_turns": 3, "resume": False}, "unix:/model")
OTHER = Start({"session_id": "", "max_turns": 3, "resume": False}, "unix:/model", agent={"system": "be brief"})
THIRD = Start({"session_id": "", "max_turns": 3, "resume": False}, "unix:/model", agent={"system": "be thorough"})
WITH_CREDENTIALS = Start({"session_id": "", "resume": False}, "unix:/model", mcp_proxy=("gh",))


class Runner:
    """A stand-in sandbox: ``loaded`` at once, ``prestarted`` (or an error) for a ``prestart``."""

    def __init__(self, fail_prestart: bool) -> None:
        self.frames: asyncio.Queue[RunnerFrame | None] = asyncio.Queue()
        self.frames.put_nowait(Loaded())
        self.fail_prestart = fail_prestart
        self.sent: list[dict[str, Any]] = []
        self.returncode: int | None = None
        self.handle: dict[str, str] = {}
        self.memory: int | None = None  # what its memory cgroup holds (None: cannot tell)

    def memory_bytes(self) -> int | None:
        return self.memory

    async def send(self, frame: dict[str, Any]) -> None:
        self.sent.append(frame)
        if frame["kind"] == "prestart":
            self.frames.put_nowait(RunnerError("the CLI did not start") if self.fail_prestart else Prestarted())

    async def recv(self) -> RunnerFrame | None:
        return await self.frames.get()

    async def stop(self, grace_s: float) -> int | None:
        self.returncode = 0
        return 0


class Backend:
    name = "local"

    def __init__(self) -> None:
        self.runners: list[Runner] = []
        self.fail_prestart = False
        self.memory: int | None = None  # what each new sandbox is measured to hold

    async def start(self, spec: SandboxSpec) -> Runner:
        spec.workspace.mkdir(parents=True)
        self.runners.append(runner := Runner(self.fail_prestart))
        runner.memory = self.memory
        return runner


class Proxy:
    tunnel = None

    async def open(self, sandbox_id: str) -> Path:
        return Path("/nonexistent.sock")

    async def close_sandbox(self, sandbox_id: str) -> None:
        pass


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def pool(
    tmp_path: Path, total: int = 2, loaded: int = 0, memory_bytes: int = 0
) -> tuple[WarmPool, Backend, Clock, Metrics]:
    backend, clock, metrics = Backend(), Clock(), Metrics(())
    warm = WarmPool(
        cast(SandboxBackend, backend),
        cast(ModelProxy, Proxy()),
        tmp_path,
        loaded,
        10.0,
        metrics,
        Bounds(total=total, per_spec=2, idle_s=600.0, memory_bytes=memory_bytes),
        clock,
    )
    return warm, backend, clock, metrics


def count(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def workspaces(folder: Path) -> list[Path]:
    return await asyncio.to_thread(lambda: list(folder.iterdir()))


def started(warm: WarmPool) -> int:
    return sum(len(entries) for entries in warm.agents.values())


async def test_the_default_spec_is_started_ahead_and_claimed_once_under_its_own_session_id(tmp_path: Path) -> None:
    warm, backend, _, metrics = pool(tmp_path)
    warm.pin(DEFAULT)
    warm.refill()
    await eventually(lambda: started(warm) == 1, 10, "a started agent")
    runner = backend.runners[0]
    prestart = runner.sent[0]
    assert prestart["kind"] == "prestart" and prestart["options"]["session_id"], "started under a session id"

    claimed = warm.claim(DEFAULT)
    assert claimed is not None and claimed.loaded.sandbox is cast(Any, runner)
    assert claimed.session_id == prestart["options"]["session_id"]
    assert claimed.start.wire() == {**prestart, "kind": "start"}, "the session sends what was prestarted"
    assert count(metrics, "moorage_warm_agent_claims_total", result="hit") == 1

    await eventually(lambda: started(warm) == 1, 10, "the refill")
    again = warm.claim(DEFAULT)
    assert again is not None
    assert again.loaded.sandbox is not cast(Any, runner), "a claimed agent is never handed out twice"
    assert again.session_id != claimed.session_id
    await warm.close()


async def test_another_spec_misses_once_then_is_kept_warm_until_it_is_idle(tmp_path: Path) -> None:
    warm, _, clock, metrics = pool(tmp_path)
    warm.pin(DEFAULT)
    warm.refill()
    await eventually(lambda: started(warm) == 1, 10, "the default's agent")
    assert warm.claim(OTHER) is None
    assert count(metrics, "moorage_warm_agent_claims_total", result="miss") == 1
    await eventually(lambda: started(warm) == 2, 10, "an agent of the spec just used")

    clock.now += 601  # nobody asked for it since
    warm.refill()
    await eventually(lambda: started(warm) == 1, 10, "the idle spec's agent let go")
    assert count(metrics, "moorage_warm_agent_evictions_total", reason="idle") == 1
    assert list(warm.templates) == list(warm.demands) and len(warm.demands) == 1, "the idle spec is forgotten"
    assert warm.claim(DEFAULT) is not None, "the pinned spec stays"
    await warm.close()


async def test_a_session_with_credentials_never_claims_and_is_not_counted(tmp_path: Path) -> None:
    warm, backend, _, metrics = pool(tmp_path)
    warm.pin(DEFAULT)
    warm.refill()
    await eventually(lambda: started(warm) == 1, 10, "a started agent")
    assert warm.claim(WITH_CREDENTIALS) is None
    assert count(metrics, "moorage_warm_agent_claims_total", result="miss") == 0
    assert started(warm) == 1 and len(backend.runners) == 1
    await warm.close()


async def test_an_agent_that_fails_to_start_is_discarded_and_the_pool_gives_up_after_three(tmp_path: Path) -> None:
    warm, backend, _, metrics = pool(tmp_path)
    backend.fail_prestart = True
    warm.pin(DEFAULT)
    warm.refill()
    await eventually(lambda: count(metrics, "moorage_warm_agent_starts_total", outcome="failed") == 3, 10, "3 failures")
    assert warm._filler is not None
    await asyncio.wait_for(warm._filler, 10)
    assert started(warm) == 0 and warm.claim(DEFAULT) is None
    await warm.close()  # also waits for the discards under way
    assert all(r.returncode is not None for r in backend.runners), "the failed ones stopped"
    assert not await workspaces(tmp_path), "no workspace stays behind"


async def test_a_dead_agent_is_not_handed_out(tmp_path: Path) -> None:
    warm, backend, _, metrics = pool(tmp_path)
    warm.pin(DEFAULT)
    warm.refill()
    await eventually(lambda: started(warm) == 1, 10, "a started agent")
    backend.runners[0].returncode = 137  # its CLI died while it waited
    assert warm.claim(DEFAULT) is None
    assert count(metrics, "moorage_warm_agent_evictions_total", reason="dead") == 1
    await warm.close()


async def test_close_stops_every_warm_sandbox(tmp_path: Path) -> None:
    warm, backend, _, metrics = pool(tmp_path, total=2, loaded=1)
    warm.pin(DEFAULT)
    warm.refill()
    await eventually(lambda: started(warm) == 1 and len(warm.ready) == 1, 10, "an agent and a loaded sandbox")
    await warm.close()
    assert all(r.returncode is not None for r in backend.runners)
    assert not await workspaces(tmp_path)
    assert count(metrics, "moorage_warm_agents") == 0


async def test_after_three_failures_the_pool_pauses_and_backs_off(tmp_path: Path) -> None:
    """A spec whose CLI cannot start is not retried every tick: three tries, then a pause that
    doubles (10 s, 20 s, …); claims and takes in the pause start nothing."""
    warm, backend, clock, metrics = pool(tmp_path)
    backend.fail_prestart = True
    warm.pin(DEFAULT)
    warm.refill()
    await eventually(lambda: len(backend.runners) == 3 and warm._filler is not None and warm._filler.done(), 10, "3")
    clock.now += 9.9
    warm.refill()
    assert warm.claim(DEFAULT) is None and warm.take() is None
    assert len(backend.runners) == 3, "paused: nothing started"
    clock.now += 0.1
    warm.refill()
    await eventually(lambda: len(backend.runners) == 6 and warm._filler is not None and warm._filler.done(), 10, "6")
    clock.now += 19.9
    warm.refill()
    assert len(backend.runners) == 6, "the second pause is twice as long"
    clock.now += 0.1
    backend.fail_prestart = False
    warm.refill()
    await eventually(lambda: started(warm) == 1, 10, "a start after the pause")
    assert count(metrics, "moorage_warm_agent_starts_total", outcome="failed") == 6
    await warm.close()


MIB = 1024**2


def key(template: Start) -> str:
    found = warm_key(template.wire())
    assert found is not None
    return found


async def test_a_spec_no_longer_pinned_goes_unless_sessions_of_it_came_lately(tmp_path: Path) -> None:
    warm, _, clock, metrics = pool(tmp_path, total=3)
    warm.pin(DEFAULT, OTHER, THIRD)
    warm.refill()
    await eventually(lambda: started(warm) == 3, 10, "an agent of each pinned spec")
    assert warm.claim(THIRD) is not None, "a session of THIRD came"
    warm.pin(DEFAULT)  # OTHER and THIRD no longer marked, or superseded by new versions
    warm.refill()
    await eventually(lambda: key(OTHER) not in warm.demands, 10, "the spec nobody used let go and forgotten")
    assert count(metrics, "moorage_warm_agent_evictions_total", reason="idle") == 1
    await eventually(lambda: len(warm.agents.get(key(THIRD), [])) == 1, 10, "THIRD refilled behind its claim")
    assert not warm.demands[key(THIRD)].pinned

    clock.now += 601  # like any unpinned spec: until nobody asked for it for idle_s
    warm.refill()
    await eventually(lambda: list(warm.demands) == [key(DEFAULT)], 10, "THIRD let go once idle")
    assert started(warm) == 1 and warm.claim(DEFAULT) is not None
    await warm.close()


async def test_a_memory_budget_bounds_the_agents_at_what_they_were_measured_to_hold(tmp_path: Path) -> None:
    warm, backend, _, metrics = pool(tmp_path, total=3, memory_bytes=500 * MIB)
    assert count(metrics, "moorage_warm_agents_limit") == 2, "before any is measured: ~200 MiB each"
    backend.memory = 150 * MIB
    warm.pin(DEFAULT, OTHER, THIRD)
    warm.refill()
    await eventually(lambda: started(warm) == 3, 10, "a third, once two were measured at 150 MiB")
    assert count(metrics, "moorage_warm_agents_limit") == 3, "the count bounds: four would fit"

    for runner in backend.runners:
        runner.memory = 240 * MIB  # they grew: two fit
    warm.refill()
    await eventually(lambda: started(warm) == 2, 10, "one let go")
    assert count(metrics, "moorage_warm_agents_limit") == 2
    assert count(metrics, "moorage_warm_agent_evictions_total", reason="surplus") == 1, "pinned: not idle"
    await warm.close()


async def test_without_a_budget_nothing_is_measured(tmp_path: Path) -> None:
    warm, backend, _, metrics = pool(tmp_path, total=2)
    backend.memory = 10 * 1024 * MIB  # would fit none
    warm.pin(DEFAULT, OTHER)
    warm.refill()
    await eventually(lambda: started(warm) == 2, 10, "both")
    assert count(metrics, "moorage_warm_agents_limit") == 2
    await warm.close()


# -- the agents the operator marked for warm-up (SessionManager.pin_warm) -------------------------


class AgentStore:
    """Stored agents as ``moorage_session_store.Agents.get`` answers for their current version."""

    def __init__(self) -> None:
        self.agents: dict[tuple[str, str], AgentRecord] = {}
        self.down = False

    def put(self, tenant: str, agent_id: str, version: int, archived: bool = False) -> None:
        now = datetime.now(UTC)
        spec = {"name": f"{agent_id} v{version}", "system": f"version {version}"}
        self.agents[tenant, agent_id] = AgentRecord(
            agent_id, tenant, version, spec, now, now, now if archived else None, version
        )

    async def get(self, tenant: str, agent_id: str, version: int | None = None) -> AgentRecord | None:
        if self.down:
            raise DatabaseUnavailable("the database is down")
        return self.agents.get((tenant, agent_id))


def manager_of(warm: WarmPool, agents: AgentStore, marked: str) -> SessionManager:
    deps = SimpleNamespace(
        settings=Settings(warm_agent_ids=marked),
        pool=warm,
        agents=agents,
        proxy=Proxy(),
        backend=SimpleNamespace(name="local"),
        records=None,
    )
    return SessionManager(cast(Any, deps))


def pinned(warm: WarmPool) -> set[tuple[str, int] | None]:
    """The pinned specs, by their agent's id and version (None: the operator's default)."""
    found: set[tuple[str, int] | None] = set()
    for spec, demand in warm.demands.items():
        agent = warm.templates[spec].agent if demand.pinned else None
        if demand.pinned:
            found.add((agent["id"], agent["version"]) if agent and "id" in agent else None)
    return found


def session_template(manager: SessionManager, store: AgentStore, tenant: str, agent_id: str) -> Start:
    """What ``SessionManager.create`` claims with for a new session of the agent (its current
    version, the operator's egress)."""
    record = store.agents[tenant, agent_id]
    return manager._template(runner_agent(record.id, record.version, record.spec), manager.egress.operator)


def skips(logs: list[MutableMapping[str, Any]]) -> list[tuple[str, str]]:
    return [(e["agent_id"], e["reason"]) for e in logs if e["event"] == "warm_agent_skipped"]


async def test_marked_agents_are_pinned_at_their_current_version_and_a_new_one_replaces_it(tmp_path: Path) -> None:
    warm, _, _, _ = pool(tmp_path, total=3)
    store = AgentStore()
    store.put("acme", "agent_a", 1)
    manager = manager_of(warm, store, "agent_a@acme,agent_gone@acme")
    with capture_logs() as logs:
        await manager.pin_warm()
        await manager.pin_warm()
    assert pinned(warm) == {None, ("agent_a", 1)}, "the default spec and the marked agent's"
    assert skips(logs) == [("agent_gone", "not_found")], "an unknown id is said once, not every minute"
    warm.refill()
    await eventually(lambda: started(warm) == 2, 10, "an agent of each")

    store.put("acme", "agent_a", 2)
    await manager.pin_warm()
    assert pinned(warm) == {None, ("agent_a", 2)}
    warm.refill()
    await eventually(
        lambda: started(warm) == 2 and all(t.agent is None or t.agent["version"] == 2 for t in warm.templates.values()),
        10,
        "version 1's agent let go, version 2's started",
    )
    claimed = warm.claim(session_template(manager, store, "acme", "agent_a"))
    assert claimed is not None and claimed.start.agent is not None and claimed.start.agent["version"] == 2, (
        "a new session of the agent claims it"
    )
    await warm.close()


async def test_a_marked_agent_unreadable_keeps_its_version_and_archived_is_unpinned(tmp_path: Path) -> None:
    warm, _, _, _ = pool(tmp_path, total=3)
    store = AgentStore()
    store.put("acme", "agent_a", 1)
    store.put("default", "agent_b", 4)
    manager = manager_of(warm, store, "agent_a@acme,agent_b")
    await manager.pin_warm()
    assert pinned(warm) == {None, ("agent_a", 1), ("agent_b", 4)}, "a bare id is the open tenant's"

    store.down = True
    with capture_logs() as logs:
        await manager.pin_warm()  # never raises
    assert pinned(warm) == {None, ("agent_a", 1), ("agent_b", 4)}, "an outage lets nothing go"
    assert [e["event"] for e in logs] == ["warm_agent_unread", "warm_agent_unread"]

    store.down = False
    store.put("acme", "agent_a", 1, archived=True)
    with capture_logs() as logs:
        await manager.pin_warm()
    assert pinned(warm) == {None, ("agent_b", 4)}
    assert skips(logs) == [("agent_a", "archived")]
    await warm.close()


async def test_marks_are_not_read_when_the_pool_keeps_no_started_agents(tmp_path: Path) -> None:
    warm, _, _, _ = pool(tmp_path, total=0)
    store = AgentStore()
    store.down = True  # a read would be logged
    manager = manager_of(warm, store, "agent_a@acme")
    with capture_logs() as logs:
        await manager.pin_warm()
    assert logs == [] and pinned(warm) == set()
    await warm.close()
