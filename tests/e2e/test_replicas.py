"""Any replica answers any request (issue 16): two and three service processes on one PostgreSQL,
driven by the unmodified official ``anthropic`` client. A session runs where it started; a stream
on another replica follows it live from the durable log, and events posted to another replica
reach it through the command table — the session never moves for it; a WebSocket on another
replica follows a busy session from the log and drives it the same way. A replica killed mid-turn is
noticed by the others once its lease lapses: the stream says the turn was lost, and the next
message resumes the session where it lands."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from ma_client import ACME, ASK_BASH, GLOBEX, KEYS, TOOLSET, client, say, text, until
from moorage.testing.scripted_model import ScriptedModelServer
from support import Client, Service, events, pg_available, pg_database, result_of, run_service, wait_until

pytestmark = pytest.mark.skipif(not pg_available(), reason="PostgreSQL is not reachable at 127.0.0.1:5432")


def replica(model: ScriptedModelServer, database: str, **overrides: str) -> Any:
    return run_service(
        model.url,
        MOORAGE_DATABASE_URL=f"postgresql://postgres@127.0.0.1:5432/{database}",
        MOORAGE_API_KEYS=KEYS,
        MOORAGE_WARM_SANDBOXES="1",
        MOORAGE_WARM_AGENTS="0",  # routing is the subject: fewer CLIs on three replicas
        **overrides,
    )


@pytest.fixture(scope="module")
def replicas(model: ScriptedModelServer) -> Iterator[tuple[Service, Service, Service]]:
    with pg_database() as name, replica(model, name) as a, replica(model, name) as b, replica(model, name) as c:
        yield a, b, c


def session_on(api: anthropic.Anthropic, *tools: Any) -> str:
    agent = api.beta.agents.create(name="Anywhere", model="claude-opus-5", tools=list(tools) or [TOOLSET])
    env = api.beta.environments.create(name=f"anywhere-{time.monotonic_ns()}")
    return api.beta.sessions.create(agent=agent.id, environment_id=env.id).id


def test_a_stream_on_one_replica_follows_a_session_running_on_another(
    replicas: tuple[Service, Service, Service],
) -> None:
    """The session runs on A; a stream opened on B sees both turns — one sent to A, one sent to B
    and carried to A as a command — with no gap and no duplicate, the same events with the same
    ids as A's list; the session never left A."""
    a, b, _ = replicas
    on_a, on_b = client(a), client(b)
    session_id = session_on(on_a)
    with on_b.beta.sessions.events.stream(session_id) as stream:
        to_a = on_a.beta.sessions.events.send(session_id, events=[say("bash echo sent to a")])
        first = until(stream, "session.status_idle")
        to_b = on_b.beta.sessions.events.send(session_id, events=[say("bash echo sent to b")])
        second = until(stream, "session.status_idle")
    assert to_a.data is not None and to_b.data is not None
    assert first[0].id == to_a.data[0].id and second[0].id == to_b.data[0].id  # the echo is the logged event
    assert text(next(e for e in first if e.type == "agent.message")) == "tool said: sent to a"
    assert text(next(e for e in second if e.type == "agent.message")) == "tool said: sent to b"
    streamed = [e.id for e in first + second]
    history = [e.id for e in on_a.beta.sessions.events.list(session_id)]
    assert streamed == history[history.index(to_a.data[0].id) :]  # nothing missed, nothing twice
    assert [e.id for e in on_b.beta.sessions.events.list(session_id)] == history
    assert not events(b, "session_rehydrating", session_id) and not events(a, "session_handed_over", session_id)


def test_an_approval_posted_to_a_third_replica_unblocks_the_tool_waiting_on_the_first(
    replicas: tuple[Service, Service, Service],
) -> None:
    """Bash ``always_ask`` on A, the stream on B, the confirmation posted to C: the tool runs on A
    and B's stream shows the confirmation (the id C answered with), the result and the answer."""
    a, b, c = replicas
    on_a = client(a)
    session_id = session_on(on_a, ASK_BASH)
    with client(b).beta.sessions.events.stream(session_id) as stream:
        on_a.beta.sessions.events.send(session_id, events=[say("bash echo allowed from c")])
        waiting = until(stream, "session.status_idle")
        use = next(e for e in waiting if e.type == "agent.tool_use")
        assert waiting[-1].stop_reason.type == "requires_action" and waiting[-1].stop_reason.event_ids == [use.id]
        echo = client(c).beta.sessions.events.send(
            session_id, events=[{"type": "user.tool_confirmation", "tool_use_id": use.id, "result": "allow"}]
        )
        done = until(stream, "session.status_idle")
    assert echo.data is not None and done[0].id == echo.data[0].id and done[0].type == "user.tool_confirmation"
    assert text(next(e for e in done if e.type == "agent.message")) == "tool said: allowed from c"
    assert done[-1].stop_reason.type == "end_turn"
    assert not events(c, "session_rehydrating", session_id)


def test_a_resource_added_on_another_replica_reaches_the_sandbox_where_the_session_runs(
    replicas: tuple[Service, Service, Service],
) -> None:
    """The session runs on A; a file uploaded to B and added on B is put into A's sandbox (the
    add is forwarded, not the session moved) before B answers: A's next turn reads it; an output
    written there is listed and downloaded through C."""
    a, b, c = replicas
    on_a, on_b, on_c = client(a), client(b), client(c)
    session_id = session_on(on_a)
    # Running on A first: a resource added while the sandbox still starts may be put by the start
    # as well as by the forwarded add (CI saw both); this test is about the forwarded one.
    wait_until(lambda: bool(events(a, "session_ready", session_id)), 60, "the session's sandbox to run on A")
    upload = on_b.beta.files.upload(file=("far.txt", b"from replica b", "text/plain"))
    on_b.beta.sessions.resources.add(session_id, type="file", file_id=upload.id, mount_path="/workspace/far.txt")
    with on_a.beta.sessions.events.stream(session_id) as stream:
        on_a.beta.sessions.events.send(session_id, events=[say("bash cp /workspace/far.txt /mnt/session/outputs/")])
        done = until(stream, "session.status_idle")
    assert "tool said" in text(next(e for e in done if e.type == "agent.message"))
    assert [e["live"] for e in events(a, "resource_mounted", session_id)] == [True]
    assert not events(b, "session_rehydrating", session_id)
    wait_until(lambda: bool(list(on_c.beta.files.list(scope_id=session_id))), 30, "the output to be listed")
    listed = list(on_c.beta.files.list(scope_id=session_id))
    assert [f.filename for f in listed] == ["far.txt"]
    assert on_c.beta.files.download(listed[0].id).read() == b"from replica b"


async def test_a_websocket_on_another_replica_shares_a_busy_session_without_moving_it(
    replicas: tuple[Service, Service, Service],
) -> None:
    """A client on A keeps the session busy there; a WebSocket to B for it is served on B, without
    a handover: the replay, a pong, and a turn sent on B that runs on A — both clients get the
    same frames with the same seqs."""
    a, b, _ = replicas
    on_a = await Client.connect(a, token=ACME)
    await on_a.turn("say first on a")
    sid = on_a.session_id
    on_b = await Client.connect(b, sid, token=ACME, query="?after=0")
    try:
        assert on_b.first["type"] == "session" and on_b.first["state"] == "attached", on_b.first
        assert result_of(await on_b.until("result"))["result"] == "first on a"  # replayed from the log
        await on_b.send({"type": "ping", "id": "p1"})
        assert (await on_b.until("pong"))[-1]["id"] == "p1"
        from_b = await on_b.turn("say second from b")
        from_a = await on_a.until("result")
        assert result_of(from_b)["result"] == "second from b"
        seqs = [(f["seq"], f["type"]) for f in from_b if "seq" in f]
        assert seqs and seqs == [(f["seq"], f["type"]) for f in from_a if "seq" in f]
        assert seqs[0][1] == "user_message"
        assert events(a, "handover_declined", sid) and events(b, "client_attached_remotely", sid)
        assert not events(b, "session_rehydrating", sid)
    finally:
        await on_b.close()
        await on_a.close()


async def test_another_tenant_reaches_nothing_through_a_replica_that_does_not_run_the_session(
    replicas: tuple[Service, Service, Service], model: ScriptedModelServer
) -> None:
    """Acme's session runs on A; globex, on B, gets exactly what an unknown id gets — over HTTP
    (list, send, stream) and over the WebSocket — and no command reaches A for it."""
    a, b, _ = replicas
    session_id = session_on(client(a))
    globex = client(b, GLOBEX)
    with pytest.raises(anthropic.NotFoundError):
        globex.beta.sessions.events.send(session_id, events=[say("say not yours")])
    with pytest.raises(anthropic.NotFoundError):
        globex.beta.sessions.events.list(session_id)
    with pytest.raises(anthropic.NotFoundError):
        globex.beta.sessions.events.stream(session_id)
    ws = await Client.connect(b, session_id, token=GLOBEX)
    assert ws.first["type"] == "error" and ws.first["code"] == "session_not_found"
    await ws.close()
    assert "not yours" not in json.dumps([r.get("messages") for r in model.model.requests])
    assert [e.type for e in client(a).beta.sessions.events.list(session_id)] == []  # nothing was logged


def test_a_replica_killed_mid_turn_is_reported_and_the_session_goes_on_elsewhere(model: ScriptedModelServer) -> None:
    """kill -9 of A while its turn waits on the model (B reports it running, from A's log): once
    A's lease lapses, B adopts the session and its stream on B says the turn was lost
    (``session.error``, then idle); a message sent to B rehydrates the session there
    (``session.status_rescheduled``), with its history, and the stream shows that turn too."""
    lease = {"MOORAGE_LEASE_TTL_S": "3"}
    with pg_database("_killed") as name, replica(model, name, **lease) as a, replica(model, name, **lease) as b:
        on_a, on_b = client(a), client(b)
        session_id = session_on(on_a)
        with on_b.beta.sessions.events.stream(session_id) as stream:
            on_a.beta.sessions.events.send(session_id, events=[say("say remember the harbour")])
            until(stream, "session.status_idle")  # a turn in the transcript
            on_a.beta.sessions.events.send(session_id, events=[say("sleep 10")])
            until(stream, "session.status_running")
            assert on_b.beta.sessions.retrieve(session_id).status == "running"  # as A's log says
            assert [s.status for s in on_b.beta.sessions.list() if s.id == session_id] == ["running"]
            a.proc.kill()
            lost = until(stream, "session.status_idle", timeout=30)
            assert [e.type for e in lost][-2:] == ["session.error", "session.status_idle"], [e.type for e in lost]
            assert "replica running this session stopped" in lost[-2].error.message
            assert lost[-1].stop_reason.type == "retries_exhausted"
            again = on_b.beta.sessions.events.send(session_id, events=[say("say back on b")])
            after = until(stream, "session.status_idle")
        # B starts a sandbox for it (rescheduled), then the message runs there.
        assert after[0].type == "session.status_rescheduled"
        assert again.data is not None and after[1].id == again.data[0].id
        assert text(next(e for e in after if e.type == "agent.message")) == "back on b"
        assert events(b, "session_adopted", session_id) and events(b, "session_rehydrating", session_id)
        # The resumed session knew its history (the turn's request; side requests carry less).
        turns = [m for r in model.model.requests if "back on b" in (m := json.dumps(r.get("messages")))]
        assert any("remember the harbour" in m for m in turns), turns
        assert on_b.beta.sessions.retrieve(session_id).status == "idle"
