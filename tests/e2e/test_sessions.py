"""The service as a process, real WebSocket clients, the real CLI in real
bubblewrap sandboxes; only the model is scripted."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import pytest
import websockets
from moorage.testing.scripted_model import ScriptedModelServer
from support import (
    REAL_KEY,
    Client,
    Service,
    processes_of_uid,
    result_of,
    run_service,
    scaled,
    session_pids,
    tool_output,
    uid_of,
    wait_until,
)


async def test_new_session_streams_sdk_messages_and_a_result(service: Service) -> None:
    """A new session answers with a session frame, then the echo of the user's message, the SDK's
    init, assistant and result frames and the model proxy's request frames, each with the next seq."""
    client = await Client.connect(service)
    assert client.first["type"] == "session" and client.first["state"] == "new"
    assert client.first["last_seq"] == 0
    frames = await client.turn("say hello there")
    types = [f["type"] for f in frames]
    assert types[0] == "user_message" and frames[0]["message"]["content"] == "say hello there"
    # The proxy's model_request_start may overtake the CLI's init (the request and the frame race).
    sdk = [f for f in frames if not f["type"].startswith("model_request_")]
    assert sdk[1]["type"] == "system" and sdk[1]["subtype"] == "init"
    assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1))
    assert "assistant" in types
    assert types.count("model_request_start") == types.count("model_request_end") >= 1
    result = result_of(frames)
    assert result["subtype"] == "success" and result["result"] == "hello there"
    assert result["session_id"] == client.session_id
    await client.close()


async def test_bash_runs_inside_the_sandbox_as_non_root(service: Service) -> None:
    """The agent's Bash tool runs in the sandbox: uid 1000, own hostname, cwd /workspace, host uid not root."""
    client = await Client.connect(service)
    frames = await client.turn("bash id -u; hostname; pwd")
    assert tool_output(frames).split() == ["1000", "moorage-sandbox", "/workspace"]
    pids = session_pids(client.session_id)
    assert pids, "the session's sandbox processes should be running"
    assert all(uid_of(pid) >= 200_000 for pid in pids), "sandbox processes must not run as a host system uid"
    await client.close()


async def test_sandbox_cannot_read_the_api_key(service: Service, model: ScriptedModelServer) -> None:
    """Neither the environment nor /proc inside the sandbox holds the real key; the proxy injects it."""
    client = await Client.connect(service)
    frames = await client.turn(
        "bash env; cat /proc/1/environ /proc/*/environ 2>/dev/null | tr '\\0' '\\n'; "
        "cat /proc/*/cmdline 2>/dev/null | tr '\\0' ' '; grep -rs sk-ant- /home /tmp /run /etc; echo done"
    )
    out = tool_output(frames)
    assert "done" in out and "ANTHROPIC_API_KEY=sk-ant-moorage-sandbox-placeholder" in out
    assert REAL_KEY not in out
    assert REAL_KEY not in json.dumps(frames)
    assert model.model.api_keys and set(model.model.api_keys[-2:]) == {REAL_KEY}
    await client.close()


async def test_sandbox_cannot_reach_host_loopback_ports(service: Service, model: ScriptedModelServer) -> None:
    """Connecting to the service's port or the model's port on 127.0.0.1 fails from inside."""
    model_port = model.url.rsplit(":", 1)[1]
    probe = (
        "import socket,sys\n"
        "for p in sys.argv[1:]:\n"
        "    s=socket.socket(); s.settimeout(2)\n"
        "    print(p, 'open' if s.connect_ex(('127.0.0.1', int(p))) == 0 else 'closed')\n"
    )
    client = await Client.connect(service)
    frames = await client.turn(f'bash python3 -c "{probe}" {service.port} {model_port}; ip -o link 2>&1 | wc -l')
    out = tool_output(frames)
    assert f"{service.port} closed" in out and f"{model_port} closed" in out
    await client.close()


async def test_sessions_cannot_see_each_others_workspaces(service: Service) -> None:
    """A file written by one session is invisible to another session's agent."""
    a = await Client.connect(service)
    b = await Client.connect(service)
    await a.turn("bash echo secret-of-a > /workspace/secret-a.txt && ls /workspace")
    frames = await b.turn("bash ls -a /workspace; find / -name 'secret-a*' -not -path '/proc/*' 2>/dev/null; echo end")
    out = tool_output(frames)
    assert "secret-a" not in out and "end" in out
    check = await a.turn("bash cat /workspace/secret-a.txt")
    assert "secret-of-a" in tool_output(check)
    await a.close()
    await b.close()


async def test_tool_loop_stops_at_the_turn_limit_and_session_stays_usable(service: Service) -> None:
    """A model that calls tools forever is stopped at MOORAGE_MAX_TURNS with error_max_turns."""
    client = await Client.connect(service)
    frames = await client.turn("loop")
    result = result_of(frames)
    assert result["subtype"] == "error_max_turns"
    tool_calls = [f for f in frames if f["type"] == "assistant"]
    assert len(tool_calls) == 3
    after = result_of(await client.turn("say still here"))
    assert after["subtype"] == "success" and after["result"] == "still here"
    await client.close()


async def test_interrupt_stops_a_running_turn(service: Service) -> None:
    """An interrupt ends a long turn promptly and the next message works."""
    client = await Client.connect(service)
    await client.say("bash python3 -c 'import time; time.sleep(60)'; echo never")
    await client.until("assistant", timeout=30)
    await client.send({"type": "interrupt"})
    frames = await client.until("result", timeout=15)
    assert "never" not in tool_output(frames)
    after = result_of(await client.turn("say back"))
    assert after["result"] == "back"
    await client.close()


async def test_three_quick_messages_run_in_order(service: Service) -> None:
    """Three user frames sent at once: the second and third are acknowledged as queued
    (positions 1 and 2), then the three turns run one after the other, results in order."""
    client = await Client.connect(service)
    for word in ("one", "two", "three"):
        await client.say(f"say {word}")
    frames: list[dict[str, object]] = []
    for _ in range(3):
        frames += await client.until("result", timeout=60)
    assert [f["result"] for f in frames if f["type"] == "result"] == ["one", "two", "three"]
    assert [f["position"] for f in frames if f["type"] == "queued"] == [1, 2]
    assert not [f for f in frames if f["type"] == "error"]
    await client.close()


async def test_interrupt_stops_the_running_turn_and_keeps_the_queued_one(service: Service) -> None:
    """An interrupt ends the running turn only: the message queued behind it runs next."""
    client = await Client.connect(service)
    await client.say("bash python3 -c 'import time; time.sleep(60)'; echo never")
    await client.until("assistant", timeout=30)
    await client.say("say queued")
    queued = (await client.until("queued", timeout=15))[-1]
    assert queued["position"] == 1 and queued["seq"] > 0  # logged, like every frame of the conversation
    await client.send({"type": "interrupt"})
    first = await client.until("result", timeout=15)
    assert "never" not in tool_output(first)
    assert result_of(await client.until("result", timeout=60))["result"] == "queued"
    await client.close()


async def test_bad_frames_get_error_frames_and_the_connection_stays_open(service: Service) -> None:
    """Malformed JSON, wrong shapes and unknown types each get an error frame with a stable code."""
    client = await Client.connect(service)
    cases = [
        ("{not json", "invalid_json"),
        ("[1,2]", "invalid_frame"),
        (json.dumps({"type": "warp_drive"}), "unknown_frame_type"),
        (json.dumps({"type": "user"}), "invalid_frame"),
        (json.dumps({"type": "user", "message": {"role": "user", "content": ""}}), "invalid_frame"),
        (json.dumps({"type": "interrupt"}), "no_turn_running"),
        (json.dumps({"type": "permission_response", "allow": True}), "invalid_frame"),
        (json.dumps({"type": "permission_response", "id": "toolu_1", "behavior": "allow"}), "request_not_pending"),
    ]
    for raw, code in cases:
        await client.send(raw)
        frame = await client.recv()
        assert frame["type"] == "error" and frame["code"] == code and frame["fatal"] is False, (raw, frame)
    await client.send({"type": "ping", "id": 7})
    assert await client.recv() == {"type": "pong", "id": 7}
    assert result_of(await client.turn("say fine"))["result"] == "fine"
    await client.close()


async def test_second_connection_attaches_and_sees_the_same_stream(service: Service) -> None:
    """WS /v1/sessions/{id} attaches to a live session; both connections get every frame."""
    first = await Client.connect(service)
    await first.turn("say warm")
    second = await Client.connect(service, first.session_id)
    last_seq = second.first.pop("last_seq")
    assert second.first == {
        "type": "session",
        "session_id": first.session_id,
        "state": "attached",
        "protocol": 1,
        "sandbox": "ready",
    }
    assert last_seq > 0
    await second.say("say from the second")
    a = result_of(await first.until("result"))
    b = result_of(await second.until("result"))
    assert a["result"] == b["result"] == "from the second"
    await first.close()
    await second.close()


async def test_unknown_session_id_is_refused(service: Service) -> None:
    """Attaching to an id that does not exist gets session_not_found and close code 4404."""
    client = await Client.connect(service, "00000000-0000-0000-0000-000000000000")
    assert client.first["type"] == "error" and client.first["code"] == "session_not_found"
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await client.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4404


async def test_runner_crash_is_fatal_for_its_session_only(service: Service) -> None:
    """Killing a session's runner gives that client a fatal error; other sessions and the service carry on."""
    victim = await Client.connect(service)
    bystander = await Client.connect(service)
    await victim.turn("say up")
    await victim.say("bash kill -9 $(pgrep -f moorage_runner)")
    frames = await victim.until("error", timeout=30)
    error = frames[-1]
    assert error["code"] == "sandbox_crashed" and error["fatal"] is True
    with pytest.raises(websockets.ConnectionClosed):
        await victim.recv(timeout=10)
    assert result_of(await bystander.turn("say unharmed"))["result"] == "unharmed"
    assert await asyncio.to_thread(service.healthy)
    wait_until(lambda: not session_pids(victim.session_id), 10, "the crashed sandbox's processes to be gone")
    await bystander.close()


async def test_turn_timeout_interrupts_and_reports(model: ScriptedModelServer) -> None:
    """A turn past MOORAGE_TURN_TIMEOUT_S is interrupted, gets a turn_timeout error, and the session goes on."""
    with run_service(model.url, MOORAGE_TURN_TIMEOUT_S=str(scaled(3))) as svc:
        client = await Client.connect(svc)
        frames = await client.turn("bash python3 -c 'import time; time.sleep(120)'", timeout=30)
        assert frames[-1]["type"] == "result"
        error = (await client.until("error", timeout=10))[-1]
        assert error["code"] == "turn_timeout" and error["fatal"] is False
        assert result_of(await client.turn("say recovered"))["result"] == "recovered"
        await client.close()


async def test_a_message_past_the_queue_bound_gets_queue_full(model: ScriptedModelServer) -> None:
    """With MOORAGE_MAX_QUEUED_TURNS=1 a second waiting message is refused with queue_full (not
    fatal); the running turn and the one queued message both finish, in order."""
    with run_service(model.url, MOORAGE_MAX_QUEUED_TURNS="1") as svc:
        client = await Client.connect(svc)
        await client.say("bash sleep 3; echo first")
        await client.until("assistant", timeout=30)
        await client.say("say second")
        await client.say("say third")
        frames = await client.until("error", timeout=30)
        assert frames[-1]["code"] == "queue_full" and frames[-1]["fatal"] is False
        # (A refusal answers at once; the queued frame before it is logged first, so it may follow.)
        frames += await client.until("result", timeout=60)
        assert [f["position"] for f in frames if f["type"] == "queued"] == [1]
        frames += await client.until("result", timeout=60)
        assert "first" in tool_output(frames)
        assert [f["result"] for f in frames if f["type"] == "result"][-1] == "second"
        await client.close()


async def test_disconnect_mid_turn_leaks_no_process(model: ScriptedModelServer) -> None:
    """A client that vanishes mid-turn leaves nothing behind once the session idles out."""
    with run_service(model.url, MOORAGE_IDLE_TIMEOUT_S="1") as svc:
        client = await Client.connect(svc)
        await client.say("bash sleep 2; echo late")
        await client.until("assistant", timeout=30)
        pids = session_pids(client.session_id)
        assert pids
        uid = uid_of(pids[0])
        await client.close()
        await asyncio.to_thread(wait_until, lambda: not processes_of_uid(uid), 30, "every sandbox process to exit")
        assert "session_idle_timeout" in svc.logs()
        # The suspension saves the workspace, then removes it: poll, never a single look.
        await asyncio.to_thread(
            wait_until, lambda: not workspaces_of_uid(svc.state_dir / "workspaces", uid), 30, "the workspace to go"
        )


def workspaces_of_uid(root: Path, uid: int) -> list[Path]:
    found = []
    for path in root.iterdir():
        with contextlib.suppress(FileNotFoundError):  # removed while we looked
            if path.stat().st_uid == uid:
                found.append(path)
    return found


async def test_a_fresh_state_dir_is_created(model: ScriptedModelServer, tmp_path: Path) -> None:
    """First start on a fresh checkout: the state dir and its SQLite database are created."""
    fresh = tmp_path / "not" / "there" / "yet"
    with run_service(model.url, MOORAGE_STATE_DIR=str(fresh)) as svc:
        client = await Client.connect(svc)
        assert result_of(await client.turn("say first start"))["result"] == "first start"
        await client.close()
    assert (fresh / "moorage.db").exists()
