"""The adversarial harness: the runner replaced by a hostile one inside a real
bubblewrap sandbox, driven by the real session manager.

A fake ``moorage_runner`` package (the real runner's files, plus
``hostile.py`` and a ``__main__`` that reads which behaviour to play from a
file beside it) is mounted into every sandbox in place of the real one. Each
test plays one behaviour (malformed, huge, deep, out-of-order, unknown-kind,
NaN/Infinity, label-like strings, floods, exits and silences) in a session,
then checks that only that session ended (with the code a client should
see), that every slot came back (start gate, session counts, uid, cgroup,
proxy socket), that no sandbox process is left, that the service's memory
stayed bounded, and that the same manager still serves a normal session:
real runner, real CLI, scripted model.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import shutil
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from leaks import cgroups_of
from moorage.accounting import Accounting
from moorage.egress import ModelProxy
from moorage.manager import SessionManager
from moorage.metrics import Metrics
from moorage.pool import WarmPool
from moorage.protocol import UserFrame
from moorage.sandbox.cgroups import Limits, SandboxCgroup
from moorage.sandbox.local import LocalBackend, Runtime
from moorage.sessions import Deps, Session
from moorage.settings import Settings
from moorage.testing.scripted_model import ScriptedModelServer
from moorage.transcripts import TranscriptSink
from moorage_session_store import Database, Files, SQLModelSessionStore
from moorage_session_store.events import SessionEvents
from moorage_session_store.records import SessionRecords
from prometheus_client import generate_latest
from support import eventually, processes_of_uid, scaled

pytestmark = pytest.mark.asyncio(loop_scope="module")

UID_BASE, UID_COUNT = 236_000, 16
HOSTILE = Path(__file__).parent.parent / "hostile_runner" / "hostile.py"
# What the service may grow by over the whole harness (huge lines, floods):
# well under one unbounded 32 MiB-line queue, far under a sandbox's budget.
MEMORY_SLACK_BYTES = 256 * 1024 * 1024
PROTOCOL = "broke the channel protocol"

MAIN = """\
import os
import sys

try:
    with open(os.path.join(os.path.dirname(__file__), "behaviour")) as f:
        behaviour = f.read().strip()
except OSError:
    behaviour = "real"
if behaviour == "real":
    from moorage_runner.runner import main

    main()
else:
    from moorage_runner.hostile import run

    run(behaviour)
"""


@dataclass(frozen=True)
class Outcome:
    code: str | None  # the fatal error a client sees (None: the session was ready; the test closes it)
    protocol: bool = True  # the message says the sandbox broke the channel protocol
    turn: bool = False  # the behaviour waits for a user turn (the test sends one once it is ready)
    words: str = ""  # what the message says (our words for the reason)


# Each behaviour of tests/hostile_runner/hostile.py and how its session must end.
OUTCOMES: dict[str, Outcome] = {
    "malformed_json": Outcome("sandbox_crashed"),
    "non_object_in_braces": Outcome("sandbox_crashed"),
    "huge_line": Outcome("sandbox_crashed"),
    "many_tiny_values": Outcome("sandbox_crashed"),
    "deep_nesting": Outcome("sandbox_crashed"),
    "deep_nesting_under_parser_limit": Outcome("sandbox_crashed"),
    "sdk_before_ready": Outcome("sandbox_crashed"),
    "result_before_user": Outcome("sandbox_crashed"),
    "permission_request_outside_a_turn": Outcome("sandbox_crashed"),
    "rpc_result_from_runner": Outcome("sandbox_crashed"),
    "unknown_kind": Outcome("sandbox_crashed"),
    "kind_not_a_string": Outcome("sandbox_crashed"),
    "nan": Outcome("sandbox_crashed"),
    "infinity": Outcome("sandbox_crashed"),
    "rpc_bad_params": Outcome("sandbox_crashed"),
    "rpc_bad_params_after_ready": Outcome("sandbox_crashed"),
    "rpc_unknown_method": Outcome("sandbox_crashed"),
    "sdk_message_not_an_object": Outcome("sandbox_crashed"),
    "ready_before_loaded": Outcome("sandbox_crashed"),
    "not_utf8": Outcome("sandbox_crashed"),
    # Valid frames: the session ends when the runner does, as a crash.
    "label_injection": Outcome("sandbox_crashed", protocol=False),
    "flood": Outcome("sandbox_crashed", protocol=False),
    "exit_mid_start": Outcome("sandbox_start_failed", protocol=False),
    "exit_before_loaded": Outcome("sandbox_start_failed", protocol=False),
    # The sandbox image and the service do not match: the start fails, saying so.
    "old_channel_version": Outcome("sandbox_start_failed", protocol=False),
    "never_answers": Outcome("sandbox_start_failed", protocol=False),
    "garbage_then_ready": Outcome(None, protocol=False),
    "output_unasked": Outcome("sandbox_crashed", words="output unasked"),
    "outputs_done_unasked": Outcome("sandbox_crashed", words="outputsdone unasked"),
    "file_put_unasked": Outcome("sandbox_crashed", words="file_put for no put_file"),
    "output_lying_size": Outcome("sandbox_crashed", turn=True, words="more bytes than its size"),
    "output_short_of_its_size": Outcome("sandbox_crashed", turn=True, words="fewer bytes than its size"),
    "output_over_the_cap": Outcome("sandbox_crashed", turn=True, words="not marked too_large"),
    "output_bad_name": Outcome("sandbox_crashed", turn=True, words="output.name"),
    "outputs_done_miscounted": Outcome("sandbox_crashed", turn=True, words="counts another number"),
}


class Recorder:
    """A subscriber that keeps every frame a client would get."""

    def __init__(self) -> None:
        self.frames: list[str] = []
        self.closed: tuple[int, str] | None = None

    def offer(self, text: str) -> bool:
        self.frames.append(text)
        return True

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def errors(self) -> list[dict[str, Any]]:
        import json

        return [f for f in map(json.loads, self.frames) if f.get("type") == "error"]

    def result(self) -> dict[str, Any] | None:
        import json

        return next((f for f in map(json.loads, self.frames) if f.get("type") == "result"), None)


@dataclass
class Harness:
    manager: SessionManager
    backend: LocalBackend
    proxy: ModelProxy
    metrics: Metrics
    behaviour_file: Path
    cgroups: list[SandboxCgroup] = field(default_factory=list)
    uids: set[int] = field(default_factory=set)
    baseline_rss: int = 0

    def play(self, behaviour: str) -> None:
        self.behaviour_file.write_text(behaviour)


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def fake_runner_package(root: Path) -> Path:
    """The real runner's files plus hostile.py, under a switching __main__."""
    spec = importlib.util.find_spec("moorage_runner")
    assert spec is not None and spec.origin is not None
    pkg = root / "moorage_runner"
    shutil.copytree(Path(spec.origin).parent, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(HOSTILE, pkg / "hostile.py")
    (pkg / "__main__.py").write_text(MAIN)
    (pkg / "behaviour").write_text("real")
    for path in (root, pkg, *pkg.iterdir()):  # readable by the sandbox's uid
        path.chmod(0o755 if path.is_dir() else 0o644)
    return pkg


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def harness(model: ScriptedModelServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Harness]:
    root = tmp_path_factory.mktemp("hostile")
    root.chmod(0o755)
    pkg = fake_runner_package(root / "lib")
    settings = Settings(
        state_dir=root / "state",
        warm_sandboxes=0,
        sandbox_start_timeout_s=scaled(20),
        idle_timeout_s=600,
        max_turns=3,
        max_starting_sandboxes=2,
        max_sessions_per_node=4,
        max_sessions_per_tenant=2,
        sandbox_uid_base=UID_BASE,
        sandbox_uid_count=UID_COUNT,
    )
    settings.state_dir.mkdir()
    runtime = Runtime(sys.executable, sys.prefix, sys.base_prefix, str(pkg))
    backend = LocalBackend(
        settings.state_dir,
        UID_BASE,
        UID_COUNT,
        runtime=runtime,
        limits=Limits(settings.sandbox_memory_bytes, settings.sandbox_pids, settings.sandbox_cpus),
        start_timeout_s=scaled(60),
    )
    await backend.check()
    db = await Database.connect(f"sqlite:///{settings.state_dir / 'moorage.db'}")
    await db.migrate()
    proxy = ModelProxy(None, model.url, "sk-real")
    metrics = Metrics(tuple(settings.prices))
    accounting = Accounting(metrics, settings.prices, None, None)
    proxy.meter = accounting
    await proxy.start()
    pool = WarmPool(backend, proxy, settings.state_dir / "workspaces", 0, settings.sandbox_start_timeout_s, metrics)
    deps = Deps(
        settings,
        backend,
        proxy,
        pool,
        SessionRecords(db),
        SQLModelSessionStore(db),
        "hostile",
        metrics,
        accounting,
        SessionEvents(db),
        files=Files(db),  # outputs collected after every turn (session_files.py)
    )
    manager = SessionManager(deps)
    await manager.start()
    h = Harness(manager, backend, proxy, metrics, pkg / "behaviour")
    take = backend.uids.take

    def taking() -> int:  # record every sandbox uid, to check no process of ours is left
        uid = take()
        h.uids.add(uid)
        return uid

    backend.uids.take = taking  # type: ignore[method-assign]
    if backend.cgroups is not None:  # record every sandbox cgroup, to check none is left
        create = backend.cgroups.create

        def recording(sandbox_id: str) -> SandboxCgroup:
            cg = create(sandbox_id)
            h.cgroups.append(cg)
            return cg

        backend.cgroups.create = recording  # type: ignore[method-assign]
    try:
        await normal_session(h)  # warm: imports, the CLI's first start, the database
        gc.collect()
        h.baseline_rss = rss_bytes()
        yield h
    finally:
        await manager.close()
        await pool.close()
        await proxy.close()
        await backend.close()
        await db.close()


async def normal_session(h: Harness) -> None:
    """A real runner, the real CLI and the scripted model: one turn, then suspend."""
    h.play("real")
    session = await h.manager.create("tenant-ok")
    client = Recorder()
    session.attach(client)
    await session.submit(UserFrame({"role": "user", "content": "say still serving"}))
    await eventually(lambda: client.result() is not None or session.closed, 60, "the normal session's result")
    result = client.result()
    assert result is not None, f"the normal session failed: {client.errors()}"
    assert result["subtype"] == "success" and result["result"] == "still serving"
    await session.close()
    await all_released(h)


def sandbox_processes(h: Harness) -> list[int]:
    """Processes of the sandboxes this harness started: running as one of its
    uids and, where cgroups exist, inside one of its sandbox cgroups (another
    run on this host may hold one of those uids by now)."""
    ours = {d.name for cg in h.cgroups for d in cg.dirs.values()}
    return [pid for uid in h.uids for pid in processes_of_uid(uid) if not ours or ours & cgroups_of(pid)]


async def all_released(h: Harness) -> None:
    manager, backend = h.manager, h.backend
    await eventually(lambda: manager.gate.starting == 0, 30, "the start gate slot to come back")
    await eventually(lambda: not manager.sessions, 30, "the session to leave the manager (node and tenant counts)")
    await eventually(lambda: not backend.live and not backend.uids.held, 30, "the sandbox and its uid to be released")
    await eventually(lambda: not h.proxy._sites, 10, "the sandbox's model proxy socket to close")
    await eventually(
        lambda: not sandbox_processes(h),
        30,
        "no sandbox process to be left",
    )
    await eventually(
        lambda: not any(d.exists() for cg in h.cgroups for d in cg.dirs.values()), 30, "no sandbox cgroup to be left"
    )


@pytest.mark.parametrize("behaviour", sorted(OUTCOMES))
async def test_hostile_runner_ends_only_its_session(harness: Harness, behaviour: str) -> None:
    """Whatever a replaced runner writes, only its session ends (with a clear
    code, never echoing the runner's bytes), every slot comes back, nothing
    of the sandbox is left, memory stays bounded, and the same manager still
    serves a normal session."""
    expected = OUTCOMES[behaviour]
    harness.play(behaviour)
    session: Session = await harness.manager.create("tenant-hostile")
    client = Recorder()
    session.attach(client)
    if expected.turn:
        await asyncio.wait_for(session.ready.wait(), scaled(60))
        await session.submit(UserFrame({"role": "user", "content": "write outputs"}))
    if expected.code is None:
        await asyncio.wait_for(session.ready.wait(), scaled(60))
        assert not session.closed and session.start_error is None, client.errors()
        await session.close()
    else:
        await eventually(lambda: session.closed, 90, f"the {behaviour} session to end")
    await all_released(harness)
    errors = client.errors()
    if expected.code is not None:
        assert [e["code"] for e in errors] == [expected.code], errors
        if behaviour == "old_channel_version":
            assert "channel version 2" in errors[0]["message"] and "make images" in errors[0]["message"]
        assert errors[0]["fatal"] is True
        assert (PROTOCOL in errors[0]["message"]) is expected.protocol, errors[0]["message"]
        if expected.protocol:
            assert len(errors[0]["message"]) < 200, "the reason is ours, not the runner's bytes"
        assert expected.words in errors[0]["message"], errors[0]["message"]
        assert client.closed is not None and client.closed[0] == 1011
    exposition = generate_latest(harness.metrics.registry).decode()
    assert "moorage_injected_total" not in exposition and "evil" not in exposition
    gc.collect()
    grown = rss_bytes() - harness.baseline_rss
    assert grown < MEMORY_SLACK_BYTES, f"the service grew by {grown} bytes"
    await normal_session(harness)


class Boom(RuntimeError):
    """A bug, injected: not a MoorageError, not a store error."""


def boom(*args: Any, **kwargs: Any) -> Any:
    raise Boom("injected")


async def aboom(*args: Any, **kwargs: Any) -> Any:
    raise Boom("injected")


async def aboom_stream(*args: Any, **kwargs: Any) -> AsyncIterator[bytes]:
    raise Boom("injected")
    yield b""  # an async generator, like the store's chunk streams


@pytest.mark.parametrize("stage", ["start", "restore", "pump", "relay"])
async def test_a_bug_at_any_stage_releases_every_slot(
    harness: Harness, stage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected exception while starting, restoring, pumping or relaying
    (the real runner, a normal turn) ends at most that session and gives
    every slot back."""
    harness.play("real")
    records = harness.manager.records
    tenant = "tenant-bug"
    session_id = ""
    if stage == "restore":  # a suspended session to rehydrate
        first = await harness.manager.create(tenant)
        await asyncio.wait_for(first.ready.wait(), scaled(60))
        await first.close()
        await all_released(harness)
        session_id = first.id
        monkeypatch.setattr(records, "load_workspace_stream", aboom_stream)
    elif stage == "start":
        monkeypatch.setattr(records, "update", aboom)
    elif stage == "pump":
        monkeypatch.setattr(Session, "_on_sdk", aboom)
    else:
        monkeypatch.setattr(TranscriptSink, "handle", aboom)
    if session_id:
        session, _ = await harness.manager.attach(session_id, tenant)
    else:
        session = await harness.manager.create(tenant)
    client = Recorder()
    session.attach(client)
    await asyncio.wait_for(session.ready.wait(), scaled(60))
    if not session.closed and session.start_error is None:
        await session.submit(UserFrame({"role": "user", "content": "say hi"}))
        await eventually(lambda: client.result() is not None or session.closed, 60, "the turn to end")
    await session.close()
    monkeypatch.undo()
    await all_released(harness)
    if stage in ("start", "restore", "pump"):
        assert [e["code"] for e in client.errors()] == ["internal"], client.errors()
    await normal_session(harness)
