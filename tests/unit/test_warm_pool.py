"""The warm pool's started agents (pool.WarmPool with warm_plan), with stand-in sandboxes whose
runner answers ``loaded`` and ``prestart`` as the real one does, and a hand-moved clock."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

from moorage.channel import Loaded, Prestarted, RunnerError, RunnerFrame, Start
from moorage.egress import ModelProxy
from moorage.metrics import Metrics
from moorage.pool import WarmPool
from moorage.sandbox.base import SandboxBackend, SandboxSpec
from moorage.warm_plan import Bounds
from support import eventually

DEFAULT = Start({"session_id": "", "max_turns": 3, "resume": False}, "unix:/model")
OTHER = Start({"session_id": "", "max_turns": 3, "resume": False}, "unix:/model", agent={"system": "be brief"})
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

    async def start(self, spec: SandboxSpec) -> Runner:
        spec.workspace.mkdir(parents=True)
        self.runners.append(runner := Runner(self.fail_prestart))
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


def pool(tmp_path: Path, total: int = 2, loaded: int = 0) -> tuple[WarmPool, Backend, Clock, Metrics]:
    backend, clock, metrics = Backend(), Clock(), Metrics(())
    warm = WarmPool(
        cast(SandboxBackend, backend),
        cast(ModelProxy, Proxy()),
        tmp_path,
        loaded,
        10.0,
        metrics,
        Bounds(total=total, per_spec=2, idle_s=600.0),
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
