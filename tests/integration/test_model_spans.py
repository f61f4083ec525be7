"""Model request spans from a real turn: the real session manager, runner and CLI in a real
bubblewrap sandbox, the scripted model behind the real model proxy, the event log in SQLite.

Every ``/v1/messages`` request the CLI makes is in the session's log as a
``model_request_start`` / ``model_request_end`` pair carrying the scripted model's usage
(``model_spans.py``), and the Managed Agents projection of that log is in the hosted order
(MANAGED_AGENTS.md §6.6).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from moorage.accounting import Accounting
from moorage.egress import ModelProxy
from moorage.ma_events import Projector
from moorage.manager import SessionManager
from moorage.metrics import Metrics
from moorage.pool import WarmPool
from moorage.protocol import UserFrame
from moorage.sandbox.cgroups import Limits
from moorage.sandbox.local import LocalBackend
from moorage.sessions import Deps
from moorage.settings import Settings
from moorage.testing.scripted_model import USAGE, ScriptedModelServer
from moorage_session_store import Database, SQLModelSessionStore
from moorage_session_store.events import SessionEvents, StoredEvent
from moorage_session_store.records import SessionRecords
from support import Recorder, eventually, scaled


@pytest.fixture
async def manager(model: ScriptedModelServer, tmp_path: Path) -> AsyncIterator[tuple[SessionManager, Database]]:
    root = tmp_path / "spans"
    root.mkdir()
    root.chmod(0o755)
    settings = Settings(
        state_dir=root / "state",
        warm_sandboxes=0,
        sandbox_start_timeout_s=scaled(60),
        idle_timeout_s=600,
        max_turns=3,
    )
    settings.state_dir.mkdir()
    backend = LocalBackend(
        settings.state_dir,
        settings.sandbox_uid_base,
        settings.sandbox_uid_count,
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
        "spans",
        metrics,
        accounting,
        SessionEvents(db),
    )
    proxy.observer = deps.spans  # as the app wires it
    sessions = SessionManager(deps)
    await sessions.start()
    try:
        yield sessions, db
    finally:
        await sessions.close()
        await pool.close()
        await proxy.close()
        await backend.close()
        await db.close()


async def test_each_model_request_of_a_real_turn_is_a_span_in_the_log(
    manager: tuple[SessionManager, Database], model: ScriptedModelServer
) -> None:
    sessions, db = manager
    session = await sessions.create("tenant-spans")
    client = Recorder()
    session.attach(client)
    before = len(model.model.requests)
    await session.submit(UserFrame({"role": "user", "content": "bash echo spans"}))
    await eventually(lambda: bool(client.of("result")) or session.closed, 90, "the turn's result")
    (result,) = client.of("result")
    assert result["subtype"] == "success" and result["result"] == "tool said: spans", client.frames
    requests = len(model.model.requests) - before
    assert requests >= 2  # the tool call, then the answer
    session_id = session.id
    await session.close()

    logged: list[StoredEvent] = await SessionEvents(db).read(session_id, 0)
    starts = [e.body for e in logged if e.type == "model_request_start"]
    ends = [e.body for e in logged if e.type == "model_request_end"]
    assert len(starts) == len(ends) == requests, [e.type for e in logged]
    assert (
        sorted(e["id"] for e in ends) == sorted(s["id"] for s in starts) and len(set(e["id"] for e in ends)) == requests
    )
    for end in ends:
        assert end["usage"] == USAGE and end["is_error"] is False  # exactly what the scripted model reported
    # Every client saw them too, with their seq, before the turn's result.
    seen = [f for f in client.frames if f["type"].startswith("model_request_")]
    assert [f["id"] for f in seen] == [e.body["id"] for e in logged if e.type.startswith("model_request_")]
    assert all("seq" in f for f in seen)
    assert client.frames.index(seen[-1]) < client.frames.index(result)

    # The Managed Agents view: §6.6's order, each end naming its start.
    events = [e.wire() for e in Projector().project_all(logged)]
    kinds = [e["type"] for e in events]
    assert kinds[:3] == ["user.message", "session.status_running", "span.model_request_start"], kinds
    assert kinds[-3:] == ["span.model_request_end", "session.usage", "session.status_idle"], kinds
    assert kinds.count("session.status_running") == 1
    start_ids = [e["id"] for e in events if e["type"] == "span.model_request_start"]
    assert [e["model_request_start_id"] for e in events if e["type"] == "span.model_request_end"] == start_ids
    assert events[-1]["stop_reason"] == {"type": "end_turn"}
