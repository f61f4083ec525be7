"""The runner channel (moorage.channel): the strict parser, the order check,
the service's frames, and the runner's copy of the shared constants."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import moorage_runner.channel as runner_channel
import pytest
from moorage import channel
from moorage.channel import (
    MAX_DEPTH,
    MAX_FRAME_BYTES,
    MAX_VALUES,
    ChannelViolation,
    CustomToolResult,
    CustomToolUse,
    FilePut,
    Garbage,
    Interrupt,
    Loaded,
    PermissionRequest,
    PermissionResponse,
    Phase,
    Prestart,
    Prestarted,
    PutFile,
    Ready,
    Reason,
    Restore,
    Restored,
    Rpc,
    RpcError,
    RpcResult,
    RunnerChannel,
    RunnerError,
    Sdk,
    ServiceFrame,
    Snapshot,
    SnapshotRequest,
    Start,
    User,
    Violation,
    decode_frame,
    parse_runner_line,
)

SHARED = (
    "CHANNEL_VERSION",
    "MAX_FRAME_BYTES",
    "MAX_DEPTH",
    "RUNNER_KINDS",
    "SERVICE_KINDS",
    "RPC_METHODS",
    "FILE_CHUNK_BYTES",
    "SESSION_DIR",
)


def line(frame: Any) -> bytes:
    return json.dumps(frame).encode() + b"\n"


def nested(levels: int) -> bytes:
    return b'{"kind":"sdk","message":{"type":"x","v":' + b"[" * (levels - 2) + b"]" * (levels - 2) + b"}}"


def test_runner_copy_of_the_shared_constants_is_equal() -> None:
    """container/ depends on nothing of ours: its copy must not drift."""
    for name in SHARED:
        assert getattr(runner_channel, name) == getattr(channel, name), name


def test_every_frame_the_real_runner_sends_parses() -> None:
    assert parse_runner_line(b'{"kind":"loaded","version":2}\n') == Loaded(2)
    assert parse_runner_line(b'{"kind":"loaded"}') == Loaded(1)  # an image built before versioning
    assert parse_runner_line(b'{"kind":"ready"}') == Ready()
    assert parse_runner_line(b'{"kind":"prestarted"}') == Prestarted()
    assert parse_runner_line(line({"kind": "sdk", "message": {"type": "assistant", "x": 1.5}})) == Sdk(
        {"type": "assistant", "x": 1.5}
    )
    assert parse_runner_line(line({"kind": "rpc", "id": 7, "method": "store.load", "params": {"key": {}}})) == Rpc(
        7, "store.load", {"key": {}}
    )
    assert parse_runner_line(line({"kind": "error", "code": "cli_exited", "message": "gone"})) == RunnerError("gone")
    assert parse_runner_line(line({"kind": "restored", "ok": True, "files": 3})) == Restored(True, 3, "")
    assert parse_runner_line(line({"kind": "restored", "ok": False, "message": "bad"})) == Restored(False, 0, "bad")
    assert parse_runner_line(line({"kind": "snapshot", "ok": True, "data": "QQ==", "last": True})) == Snapshot(
        True, "QQ==", True, ""
    )
    assert parse_runner_line(line({"kind": "permission_request", "id": "toolu_1", "tool": "Bash", "input": {}})) == (
        PermissionRequest("toolu_1", "Bash", {})
    )
    assert parse_runner_line(line({"kind": "custom_tool_use", "id": "c1", "name": "w", "input": {"a": 1}})) == (
        CustomToolUse("c1", "w", {"a": 1})
    )
    assert parse_runner_line(b"Traceback (most recent call last):\n") == Garbage(35)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"kind":"ready",', Reason.NOT_JSON),
        (b'{"kind":"ready"} x', Reason.NOT_JSON),
        (b'{"kind":"sdk","message":{"type":"\xff"}}', Reason.NOT_UTF8),
        (b'{"kind":"sdk","message":{"type":"\\ud800"}}', Reason.NOT_UTF8),
        (b'{"kind":"sdk","message":{"type":"a","c":NaN}}', Reason.NOT_FINITE),
        (b'{"kind":"sdk","message":{"type":"a","c":-Infinity}}', Reason.NOT_FINITE),
        (b'{"kind":"sdk","message":{"type":"a","c":1e999}}', Reason.NOT_FINITE),
        (b'{"kind":"sdk","message":{"type":"a","c":' + b"9" * 5000 + b"}}", Reason.NOT_JSON),
        (nested(MAX_DEPTH + 1), Reason.TOO_DEEP),
        (nested(100_000), Reason.TOO_DEEP),
        (b'{"kind":"rpc_result","id":1}', Reason.UNKNOWN_KIND),
        (b'{"kind":["ready"]}', Reason.UNKNOWN_KIND),
        (b'{"type":"ready"}', Reason.UNKNOWN_KIND),
        (b'{"kind":"rpc","id":1,"method":"store.load","params":[1]}', Reason.BAD_FIELD),
        (b'{"kind":"rpc","id":1,"method":"store.load"}', Reason.BAD_FIELD),
        (b'{"kind":"rpc","id":1,"method":"store.drop","params":{}}', Reason.BAD_FIELD),
        (b'{"kind":"rpc","id":true,"method":"store.load","params":{}}', Reason.BAD_FIELD),
        (b'{"kind":"rpc","id":1.5,"method":"store.load","params":{}}', Reason.BAD_FIELD),
        (b'{"kind":"rpc","id":"","method":"store.load","params":{}}', Reason.BAD_FIELD),
        (b'{"kind":"rpc","id":' + str(2**70).encode() + b',"method":"store.load","params":{}}', Reason.BAD_FIELD),
        (b'{"kind":"sdk","message":"hi"}', Reason.BAD_FIELD),
        (b'{"kind":"sdk","message":{"type":1}}', Reason.BAD_FIELD),
        (b'{"kind":"error","message":{"a":1}}', Reason.BAD_FIELD),
        (b'{"kind":"restored","ok":"yes"}', Reason.BAD_FIELD),
        (b'{"kind":"restored","ok":true,"files":true}', Reason.BAD_FIELD),
        (b'{"kind":"loaded","version":"1"}', Reason.BAD_FIELD),
        (b'{"kind":"snapshot","ok":true,"data":5}', Reason.BAD_FIELD),
        (b'{"kind":"permission_request","id":"","tool":"Bash","input":{}}', Reason.BAD_FIELD),
        (b'{"kind":"permission_request","id":"' + b"x" * 129 + b'","tool":"Bash","input":{}}', Reason.BAD_FIELD),
        (b'{"kind":"permission_request","id":7,"tool":"Bash","input":{}}', Reason.BAD_FIELD),
        (b'{"kind":"permission_request","id":"a","tool":"Bash","input":[]}', Reason.BAD_FIELD),
        (b'{"kind":"permission_request","id":"a","input":{}}', Reason.BAD_FIELD),
        (b'{"kind":"custom_tool_use","id":"a","name":"' + b"n" * 257 + b'","input":{}}', Reason.BAD_FIELD),
        (b'{"kind":"custom_tool_use","id":"a","name":"n"}', Reason.BAD_FIELD),
    ],
)
def test_violations_have_a_stable_reason_and_never_echo_the_bytes(raw: bytes, reason: Reason) -> None:
    with pytest.raises(ChannelViolation) as caught:
        parse_runner_line(raw)
    assert caught.value.reason is reason
    assert decode_frame(raw) == Violation(reason, caught.value.detail)
    message = caught.value.message
    assert "broke the channel protocol" in message and len(message) < 200
    assert raw.decode(errors="replace")[:20] not in message


def test_values_are_bounded_but_strings_count_once() -> None:
    """A line of tiny values would cost ~30x its size parsed; text does not."""
    many = b'{"kind":"sdk","message":{"type":"x","v":[' + b"[]," * MAX_VALUES + b"[]]}}"
    with pytest.raises(ChannelViolation, match="too many values"):
        parse_runner_line(many)
    text = b'{"kind":"sdk","message":{"type":"x","v":"' + b",{[" * MAX_VALUES + b'"}}'
    assert isinstance(parse_runner_line(text), Sdk)
    quoted = b'{"kind":"sdk","message":{"type":"x","v":[' + b'"a,\\",b",' * MAX_VALUES + b'"z"]}}'
    with pytest.raises(ChannelViolation, match="too many values"):
        parse_runner_line(quoted)


def test_depth_is_bounded_exactly_and_size_at_the_cap() -> None:
    assert isinstance(parse_runner_line(nested(MAX_DEPTH)), Sdk)
    with pytest.raises(ChannelViolation, match=str(Reason.TOO_LARGE)):
        parse_runner_line(b"{" + b" " * MAX_FRAME_BYTES + b"}")
    with pytest.raises(ChannelViolation, match=str(Reason.TOO_LARGE)):
        parse_runner_line(b"x" * (MAX_FRAME_BYTES + 1))


def test_order_follows_the_real_runner() -> None:
    ch = RunnerChannel()
    with pytest.raises(ChannelViolation, match="out_of_order"):
        RunnerChannel().received(Ready())
    ch.received(Garbage(3))
    ch.received(Loaded())
    assert ch.phase is Phase.LOADED
    with pytest.raises(ChannelViolation, match="out_of_order"):
        RunnerChannel(Phase.LOADED).received(Rpc(1, "store.load", {}))
    ch.sent(Restore("", last=False))
    assert ch.phase is Phase.LOADED
    ch.sent(Restore("", last=True))
    ch.received(Restored(True, 1, ""))
    ch.sent(Start({}, "unix:/x"))
    assert ch.phase.name == "STARTING"  # (mypy narrowed phase above)
    ch.received(Rpc(1, "store.load", {}))  # resume loads the transcript before ready
    with pytest.raises(ChannelViolation, match="out_of_order"):
        ch.received(Sdk({"type": "system"}))
    ch.received(Ready())
    ch.received(Sdk({"type": "system"}))
    ch.received(Sdk({"type": "result"}), turn_running=True)
    with pytest.raises(ChannelViolation, match="result outside a turn"):
        ch.received(Sdk({"type": "result"}), turn_running=False)
    for late in (Loaded(), Ready(), Restored(True, 0, ""), Snapshot(True, "", True, "")):
        with pytest.raises(ChannelViolation, match="out_of_order"):
            ch.received(late)
    ch.received(PermissionRequest("t", "Bash", {}), turn_running=True)
    ch.received(CustomToolUse("c", "weather", {}), turn_running=True)
    for unasked in (PermissionRequest("t", "Bash", {}), CustomToolUse("c", "weather", {})):
        with pytest.raises(ChannelViolation, match="outside a turn"):
            ch.received(unasked, turn_running=False)
        with pytest.raises(ChannelViolation, match="out_of_order"):
            RunnerChannel(Phase.STARTING).received(unasked, turn_running=True)
    ch.received(RunnerError("bye"))
    with pytest.raises(ChannelViolation, match="frame_too_large"):
        ch.received(Violation(Reason.TOO_LARGE))


def test_a_started_agent_answers_prestart_then_waits_for_its_start() -> None:
    """A warm pool's ``prestart``: ``prestarted``, then the session's ``start`` (files may come
    first), then ``ready``; ``prestarted`` unasked, or anything else while prestarting, breaks it."""
    ch = RunnerChannel(Phase.LOADED)
    ch.sent(Prestart(Start({"session_id": "s-1"}, "unix:/m")))
    for early in (Ready(), Rpc(1, "store.load", {}), Sdk({"type": "system"})):
        with pytest.raises(ChannelViolation, match="out_of_order"):
            RunnerChannel(Phase.PRESTARTING).received(early)
    assert ch.received(Prestarted()) == Prestarted()
    assert ch.phase is Phase.PRESTARTED
    with pytest.raises(ChannelViolation, match="out_of_order"):
        RunnerChannel(Phase.PRESTARTED).received(Prestarted())
    with pytest.raises(ChannelViolation, match="out_of_order"):
        RunnerChannel(Phase.LOADED).received(Prestarted())
    ch.sent(PutFile("/mnt/session/uploads/a", "QQ==", last=True))
    assert ch.received(FilePut("/mnt/session/uploads/a", True, "")) == FilePut("/mnt/session/uploads/a", True, "")
    ch.sent(Start({"session_id": "s-1"}, "unix:/m"))
    assert ch.received(Ready()) == Ready(), "ready after the start"
    assert Prestart(Start({"session_id": "s-1"}, "unix:/m")).wire() == {
        **Start({"session_id": "s-1"}, "unix:/m").wire(),
        "kind": "prestart",
    }


def test_another_channel_version_is_refused() -> None:
    with pytest.raises(ChannelViolation, match="version"):
        RunnerChannel().received(Loaded(1))  # also: a runner built before versioning


def test_service_frames_are_what_the_runner_reads() -> None:
    frames: list[ServiceFrame] = [
        Start({"max_turns": 2}, "unix:/run/moorage/model.sock", egress_proxy="unix:/t"),
        User({"type": "user", "message": {"role": "user", "content": "hi"}}),
        Interrupt(),
        Restore("QQ==", last=True),
        SnapshotRequest(1024),
        RpcResult(1, [{"a": 1}], more=True),
        RpcResult("x", None),
        RpcError(2, "no"),
        PermissionResponse("toolu_1", "deny", "not now"),
        CustomToolResult("c1", [{"type": "text", "text": "22C"}], is_error=False),
        Start({}, "unix:/m", agent={"ask_tools": ["Bash"], "custom_tools": []}),
        Prestart(Start({"session_id": "s-1"}, "unix:/m")),
    ]
    for frame in frames:
        wire = frame.wire()
        assert wire["kind"] in channel.SERVICE_KINDS
        assert runner_channel.parse_service_line(channel.encode_frame(wire)) == wire
    assert Start({}, "unix:/m").wire()["version"] == channel.CHANNEL_VERSION


def test_runner_refuses_what_the_service_never_sends() -> None:
    for raw in (b"[1]", b'{"kind":"bogus"}', b'{"kind":"user","x":NaN}', b'{"kind":"start","version":1}', b"{"):
        with pytest.raises(runner_channel.ChannelError):
            runner_channel.parse_service_line(raw)


def test_the_hostile_runner_speaks_this_channel_version() -> None:
    """Its misbehaviours are judged past ``loaded``: a stale version would fail them all at start."""
    hostile = Path(__file__).parent.parent / "hostile_runner" / "hostile.py"
    loaded = next(line for line in hostile.read_text().splitlines() if line.startswith("LOADED = "))
    assert f'"version":{channel.CHANNEL_VERSION}}}' in loaded, loaded
