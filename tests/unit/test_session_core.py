"""The session core without I/O: inputs in, effects out, time passed in."""

from __future__ import annotations

from typing import Any

import pytest
from moorage.channel import ChannelViolation, CustomToolUse, PermissionRequest
from moorage.errors import Code, MoorageError, ProtocolError, SandboxError, SessionError
from moorage.pending import AgentTools, CustomTool, Pending
from moorage.protocol import PermissionResponseFrame
from moorage.session_core import (
    Limits,
    SessionCore,
    State,
)
from moorage.session_events import (
    Aborted,
    Attached,
    ChannelBroken,
    ClientAnswer,
    CloseRequested,
    Detached,
    Drain,
    Effect,
    Emit,
    FlushTranscript,
    IdleEnded,
    IdleTimedOut,
    InterruptRequested,
    KillSandbox,
    Ready,
    RunnerFailed,
    RunnerRequest,
    SandboxEnded,
    SdkMessage,
    SendInterrupt,
    SendUser,
    Settle,
    StopSandbox,
    Tick,
    TranscriptDurable,
    TranscriptFailed,
    TurnEnded,
    TurnRefused,
    UserMessage,
    WindDown,
)

LIMITS = Limits(max_turns=3, turn_timeout_s=100.0, interrupt_grace_s=5.0, idle_timeout_s=60.0, max_queued=2)
CRASH = SandboxError("the agent sandbox stopped unexpectedly", code=Code.SANDBOX_CRASHED)


def line(text: str) -> dict[str, Any]:
    return {"type": "user", "message": {"role": "user", "content": text}, "parent_tool_use_id": None}


def result(text: str = "ok", **extra: Any) -> dict[str, Any]:
    return {"type": "result", "subtype": "success", "result": text, **extra}


def assistant(msg_id: str) -> dict[str, Any]:
    return {"type": "assistant", "message": {"id": msg_id, "content": []}}


def ready(clients: int = 1) -> SessionCore:
    core = SessionCore(LIMITS)
    for _ in range(clients):
        core.handle(Attached(0.0))
    core.handle(Ready(0.0))
    return core


def state(core: SessionCore) -> State:
    """The core's state, read through a call (mypy would narrow the attribute across ``handle``)."""
    return core.state


def kinds(effects: list[Effect]) -> list[type]:
    return [type(e) for e in effects]


def emitted(effects: list[Effect]) -> list[dict[str, Any]]:
    return [e.frame for e in effects if isinstance(e, Emit)]


# -- states and turns ----------------------------------------------------------


def test_a_new_core_starts_and_becomes_idle_when_ready() -> None:
    core = SessionCore(LIMITS)
    assert state(core) is State.STARTING and not core.busy
    assert core.handle(Ready(1.0)) == []
    assert state(core) is State.IDLE


def echo(text: str) -> Emit:
    """The accepted user message, logged as typed."""
    return Emit({"type": "user_message", "message": line(text)["message"]})


def test_a_user_message_when_idle_starts_a_turn_at_once() -> None:
    core = ready()
    assert core.handle(UserMessage(line("hi"), 1.0)) == [echo("hi"), SendUser(line("hi"))]
    assert state(core) is State.RUNNING and core.busy and core.guard.running


def test_a_message_sent_while_starting_waits_for_ready() -> None:
    core = SessionCore(LIMITS)
    assert core.handle(UserMessage(line("early"), 0.5)) == [echo("early"), Emit({"type": "queued", "position": 1})]
    assert core.handle(Ready(1.0)) == [SendUser(line("early"))]
    assert state(core) is State.RUNNING


def test_sdk_messages_are_emitted_durable_and_stream_events_ephemeral() -> None:
    core = ready()
    core.handle(UserMessage(line("hi"), 1.0))
    assert core.handle(SdkMessage(assistant("m1"), 2.0)) == [Emit(assistant("m1"), durable=True)]
    delta = {"type": "stream_event", "event": {}}
    assert core.handle(SdkMessage(delta, 2.1)) == [Emit(delta, durable=False)]


def test_a_result_ends_the_turn_when_the_transcript_is_durable() -> None:
    core = ready()
    core.handle(UserMessage(line("hi"), 1.0))
    assert core.handle(SdkMessage(result(), 2.0)) == [TurnEnded(result(), timed_out=False)]
    assert state(core) is State.IDLE and not core.busy


# -- the queue -------------------------------------------------------------------


def test_messages_during_a_turn_queue_and_run_in_order() -> None:
    core = ready()
    core.handle(UserMessage(line("one"), 1.0))
    assert core.handle(UserMessage(line("two"), 1.1)) == [echo("two"), Emit({"type": "queued", "position": 1})]
    assert core.handle(UserMessage(line("three"), 1.2)) == [echo("three"), Emit({"type": "queued", "position": 2})]
    effects = core.handle(SdkMessage(result("one"), 2.0))
    assert effects == [TurnEnded(result("one"), False), SendUser(line("two"))]
    assert state(core) is State.RUNNING and core.guard.started_at == 2.0
    assert core.handle(SdkMessage(result("two"), 3.0)) == [TurnEnded(result("two"), False), SendUser(line("three"))]
    assert core.handle(SdkMessage(result("three"), 4.0)) == [TurnEnded(result("three"), False)]
    assert state(core) is State.IDLE and not core.queue


def test_a_message_past_the_queue_bound_is_refused_with_queue_full() -> None:
    core = ready()
    core.handle(UserMessage(line("one"), 1.0))
    core.handle(UserMessage(line("two"), 1.0))
    core.handle(UserMessage(line("three"), 1.0))
    with pytest.raises(ProtocolError) as caught:
        core.handle(UserMessage(line("four"), 1.0))
    assert caught.value.code == Code.QUEUE_FULL and not caught.value.fatal
    assert list(core.queue) == [line("two"), line("three")]


def test_a_zero_queue_refuses_every_message_during_a_turn() -> None:
    core = SessionCore(Limits(3, 100.0, 5.0, 60.0, max_queued=0))
    core.handle(Ready(0.0))
    core.handle(UserMessage(line("one"), 1.0))
    with pytest.raises(ProtocolError, match="MOORAGE_MAX_QUEUED_TURNS"):
        core.handle(UserMessage(line("two"), 1.0))


def test_interrupt_acts_on_the_running_turn_and_queued_messages_stay() -> None:
    core = ready()
    core.handle(UserMessage(line("long"), 1.0))
    core.handle(UserMessage(line("next"), 1.5))
    assert core.handle(InterruptRequested(2.0)) == [SendInterrupt("client")]
    assert list(core.queue) == [line("next")]
    effects = core.handle(SdkMessage(result("stopped", subtype="error_during_execution"), 3.0))
    assert kinds(effects) == [TurnEnded, SendUser] and effects[1] == SendUser(line("next"))


def test_interrupt_with_no_turn_running_is_refused() -> None:
    core = ready()
    with pytest.raises(ProtocolError) as caught:
        core.handle(InterruptRequested(1.0))
    assert caught.value.code == Code.NO_TURN_RUNNING


def test_interrupt_while_the_result_waits_for_the_transcript_is_refused() -> None:
    core = ready()
    core.handle(UserMessage(line("one"), 1.0))
    core.handle(TranscriptFailed())
    core.handle(SdkMessage(result(), 2.0))
    core.handle(UserMessage(line("queued"), 2.1))
    with pytest.raises(ProtocolError):
        core.handle(InterruptRequested(2.2))
    assert list(core.queue) == [line("queued")]


def test_a_refused_turn_drops_the_queue_with_the_refusal() -> None:
    core = ready()
    core.handle(UserMessage(line("one"), 1.0))
    core.handle(UserMessage(line("two"), 1.1))
    core.handle(UserMessage(line("three"), 1.2))
    assert kinds(core.handle(SdkMessage(result(), 2.0))) == [TurnEnded, SendUser]
    spent = ProtocolError("spent", code=Code.BUDGET_EXCEEDED)
    effects = core.handle(TurnRefused(spent, 2.1))
    assert emitted(effects) == [spent.frame(), spent.frame()]
    assert state(core) is State.IDLE and not core.queue and not core.guard.running


def test_draining_refuses_new_messages_and_drops_queued_ones_after_the_turn() -> None:
    core = ready()
    core.handle(UserMessage(line("one"), 1.0))
    core.handle(UserMessage(line("two"), 1.1))
    core.handle(Drain())
    with pytest.raises(ProtocolError) as caught:
        core.handle(UserMessage(line("three"), 1.2))
    assert caught.value.code == Code.SERVICE_DRAINING
    effects = core.handle(SdkMessage(result(), 2.0))
    assert kinds(effects) == [TurnEnded, Emit]
    assert emitted(effects)[0]["code"] == Code.SERVICE_DRAINING
    assert not core.busy


# -- results held until the transcript is durable ---------------------------------


def test_a_result_waits_until_its_transcript_is_durable() -> None:
    core = ready()
    core.handle(UserMessage(line("one"), 1.0))
    core.handle(UserMessage(line("two"), 1.1))
    core.handle(TranscriptFailed())
    assert core.handle(SdkMessage(result("one"), 2.0)) == [FlushTranscript()]
    assert state(core) is State.SETTLING and core.busy and core.in_use
    # The next turn waits with it: results stay in order.
    assert list(core.queue) == [line("two")]
    effects = core.handle(TranscriptDurable(3.0))
    assert effects == [TurnEnded(result("one"), False), SendUser(line("two"))]


def test_a_turn_timeout_result_carries_its_flag() -> None:
    core = ready()
    core.handle(UserMessage(line("slow"), 0.0))
    assert core.handle(Tick(100.0)) == [SendInterrupt(str(Code.TURN_TIMEOUT))]
    assert core.handle(SdkMessage(result(), 101.0)) == [TurnEnded(result(), timed_out=True)]


# -- guards ------------------------------------------------------------------------


def test_max_turns_interrupts_and_the_result_says_error_max_turns() -> None:
    core = ready()
    core.handle(UserMessage(line("loop"), 0.0))
    for n in range(3):
        assert kinds(core.handle(SdkMessage(assistant(f"m{n}"), 1.0))) == [Emit]
    effects = core.handle(SdkMessage(assistant("m3"), 1.0))
    assert effects[-1] == SendInterrupt(str(Code.MAX_TURNS_EXCEEDED))
    (ended,) = core.handle(SdkMessage(result(), 2.0))
    assert isinstance(ended, TurnEnded) and ended.result["subtype"] == "error_max_turns"


def test_the_wall_clock_interrupts_then_kills_an_ignored_interrupt() -> None:
    core = ready()
    core.handle(UserMessage(line("slow"), 10.0))
    assert core.next_deadline() == 110.0
    assert core.handle(Tick(109.0)) == []
    assert core.handle(Tick(110.0)) == [SendInterrupt(str(Code.TURN_TIMEOUT))]
    assert core.next_deadline() == 115.0
    assert core.handle(Tick(114.0)) == []
    effects = core.handle(Tick(115.0))
    assert effects == [KillSandbox(str(Code.TURN_TIMEOUT))]
    (end,) = core.handle(SandboxEnded(CRASH))
    assert isinstance(end, WindDown) and end.error is not None
    assert end.error.code == Code.TURN_TIMEOUT and end.error.fatal


def test_a_client_interrupt_ignored_past_the_grace_kills() -> None:
    core = ready()
    core.handle(UserMessage(line("slow"), 0.0))
    core.handle(InterruptRequested(1.0))
    assert core.next_deadline() == 6.0
    assert kinds(core.handle(Tick(6.0))) == [KillSandbox]


# -- attach, detach and idleness -------------------------------------------------


def test_idle_needs_no_client_no_turn_and_a_durable_transcript() -> None:
    core = ready(clients=1)
    assert core.idle_since is None and core.next_deadline() is None
    assert core.handle(Detached(5.0)) == []
    assert core.idle_since == 5.0 and core.next_deadline() == 65.0
    assert core.handle(Attached(10.0)) == [IdleEnded(5.0)]
    assert core.idle_since is None
    core.handle(Detached(20.0))
    assert core.handle(Tick(79.0)) == []
    assert core.handle(Tick(80.0)) == [IdleEnded(60.0), IdleTimedOut(), StopSandbox()]
    assert state(core) is State.CLOSING
    (end,) = core.handle(SandboxEnded(CRASH))
    assert end == WindDown(None)  # asked to stop: suspended, not crashed


def test_a_turn_keeps_a_session_without_clients_from_idling() -> None:
    core = ready(clients=1)
    core.handle(UserMessage(line("work"), 1.0))
    core.handle(Detached(2.0))  # the client left mid-turn
    assert core.idle_since is None and core.in_use
    core.handle(SdkMessage(result(), 50.0))
    assert core.idle_since == 50.0  # idle from the turn's end


def test_unsaved_transcript_keeps_the_session_from_idling() -> None:
    core = ready(clients=0)
    assert core.idle_since == 0.0
    core.handle(TranscriptFailed())
    core.handle(Tick(1.0))
    assert core.idle_since is None
    core.handle(TranscriptDurable(2.0))
    assert core.idle_since == 2.0


def test_a_session_ready_with_no_client_starts_idle() -> None:
    core = SessionCore(LIMITS)
    core.handle(Ready(3.0))
    assert core.idle_since == 3.0 and core.next_deadline() == 63.0


def test_detach_and_reattach_during_a_turn_keeps_the_turn() -> None:
    core = ready(clients=1)
    core.handle(UserMessage(line("work"), 1.0))
    core.handle(Detached(2.0))
    core.handle(Attached(3.0))
    assert state(core) is State.RUNNING and core.clients == 1
    assert kinds(core.handle(SdkMessage(result(), 4.0))) == [TurnEnded]


# -- how a session ends ------------------------------------------------------------


def test_a_crash_during_a_turn_winds_down_with_the_crash() -> None:
    core = ready()
    core.handle(UserMessage(line("work"), 1.0))
    core.handle(UserMessage(line("queued"), 1.1))
    (end,) = core.handle(SandboxEnded(CRASH))
    assert end == WindDown(CRASH)
    assert state(core) is State.CLOSED and not core.queue and not core.guard.running
    assert not core.busy and core.next_deadline() is None


def test_the_runners_own_error_names_a_plain_crash() -> None:
    core = ready()
    core.handle(RunnerFailed("the CLI exited with 1"))
    (end,) = core.handle(SandboxEnded(CRASH))
    assert isinstance(end, WindDown) and end.error is not None and end.error.message == "the CLI exited with 1"


def test_a_limit_that_bit_says_more_than_the_runners_error() -> None:
    core = ready()
    core.handle(RunnerFailed("the CLI died"))
    oom = SandboxError("out of memory", code=Code.SANDBOX_OUT_OF_MEMORY)
    assert core.handle(SandboxEnded(oom)) == [WindDown(oom)]


def test_a_broken_channel_kills_at_once_and_is_the_reason() -> None:
    core = ready()
    core.handle(UserMessage(line("work"), 1.0))
    assert core.handle(ChannelBroken("result outside a turn")) == [KillSandbox("channel_violation")]
    assert core.handle(ChannelBroken("again")) == []
    (end,) = core.handle(SandboxEnded(CRASH))
    assert isinstance(end, WindDown) and end.error is not None
    assert end.error.code == Code.SANDBOX_CRASHED and end.error.message == "result outside a turn"


def test_close_with_a_reason_tells_clients_that_reason() -> None:
    core = ready()
    reason = MoorageError("the service is restarting", code=Code.SERVICE_DRAINING)
    assert core.handle(CloseRequested(reason)) == [StopSandbox()]
    assert core.handle(CloseRequested(None)) == []
    assert core.handle(SandboxEnded(CRASH)) == [WindDown(reason)]
    assert core.handle(SandboxEnded(CRASH)) == []  # once


def test_commands_after_the_end_are_refused_as_session_closed() -> None:
    core = ready()
    core.handle(SandboxEnded(CRASH))
    with pytest.raises(SessionError) as caught:
        core.handle(UserMessage(line("late"), 9.0))
    assert caught.value.code == Code.SESSION_CLOSED and caught.value.fatal
    with pytest.raises(SessionError):
        core.handle(InterruptRequested(9.0))


def test_a_failed_start_winds_down_with_its_error_or_the_close_reason() -> None:
    failed = SandboxError("did not start", code=Code.SANDBOX_START_FAILED)
    assert SessionCore(LIMITS).handle(Aborted(failed)) == [WindDown(failed)]
    core = SessionCore(LIMITS)
    reason = MoorageError("shutting down", code=Code.SERVICE_DRAINING)
    core.handle(CloseRequested(reason))
    assert core.handle(Aborted(None)) == [WindDown(reason)]


def test_held_results_are_released_at_the_end_without_starting_queued_turns() -> None:
    core = ready()
    core.handle(UserMessage(line("one"), 1.0))
    core.handle(UserMessage(line("two"), 1.1))
    core.handle(TranscriptFailed())
    core.handle(SdkMessage(result("one"), 2.0))
    core.handle(CloseRequested(None))
    core.handle(SandboxEnded(CRASH))
    assert core.handle(TranscriptDurable(3.0)) == [TurnEnded(result("one"), False)]


# -- approvals and custom tools ---------------------------------------------------

TOOLS = AgentTools(("Bash",), (CustomTool("weather", "", {"type": "object"}),))


def asking() -> SessionCore:
    core = SessionCore(LIMITS, Pending(30.0, TOOLS))
    core.handle(Attached(0.0))
    core.handle(Ready(0.0))
    core.handle(UserMessage(line("run it"), 1.0))
    return core


def settled(effects: list[Effect]) -> list[dict[str, Any]]:
    return [e.resolution.frame for e in effects if isinstance(e, Settle)]


def test_a_request_is_emitted_and_the_first_answer_settles_it() -> None:
    core = asking()
    (ask,) = core.handle(RunnerRequest(PermissionRequest("toolu_1", "Bash", {"command": "ls"}), 2.0))
    assert ask == Emit({"type": "permission_request", "id": "toolu_1", "tool": "Bash", "input": {"command": "ls"}})
    (settle,) = core.handle(ClientAnswer(PermissionResponseFrame("toolu_1", "allow"), 3.0))
    assert isinstance(settle, Settle) and settle.resolution.frame["behavior"] == "allow"
    assert settle.resolution.frame["source"] == "client"
    with pytest.raises(ProtocolError) as caught:  # a second client, too late
        core.handle(ClientAnswer(PermissionResponseFrame("toolu_1", "deny"), 3.1))
    assert caught.value.code == Code.REQUEST_NOT_PENDING


def test_a_request_for_a_tool_the_agent_does_not_ask_about_breaks_the_channel() -> None:
    core = asking()
    with pytest.raises(ChannelViolation):
        core.handle(RunnerRequest(PermissionRequest("toolu_1", "Read", {}), 2.0))


def test_a_pending_request_is_denied_at_its_deadline() -> None:
    core = asking()
    core.handle(RunnerRequest(CustomToolUse("call_1", "weather", {"city": "Oslo"}), 2.0))
    assert core.next_deadline() == 32.0  # before the turn's own deadline (101)
    assert core.handle(Tick(31.0)) == []
    (frame,) = settled(core.handle(Tick(32.0)))
    assert frame["type"] == "custom_tool_result" and frame["is_error"] and frame["source"] == "timeout"
    assert core.next_deadline() == 101.0


def test_an_interrupt_denies_what_is_pending_before_interrupting() -> None:
    core = asking()
    core.handle(RunnerRequest(PermissionRequest("toolu_1", "Bash", {}), 2.0))
    effects = core.handle(InterruptRequested(3.0))
    assert kinds(effects) == [Settle, SendInterrupt]
    assert settled(effects)[0]["source"] == "interrupted" and not core.pending.replay()


def test_a_request_still_pending_when_the_turn_ends_is_denied_first() -> None:
    core = asking()
    core.handle(RunnerRequest(PermissionRequest("toolu_1", "Bash", {}), 2.0))
    effects = core.handle(SdkMessage(result(), 3.0))
    assert kinds(effects) == [Settle, TurnEnded]


def test_a_pending_request_survives_detach_and_is_replayed() -> None:
    core = asking()
    core.handle(RunnerRequest(PermissionRequest("toolu_1", "Bash", {}), 2.0))
    core.handle(Detached(3.0))
    core.handle(Attached(4.0))
    assert [f["id"] for f in core.pending.replay()] == ["toolu_1"]
    assert kinds(core.handle(ClientAnswer(PermissionResponseFrame("toolu_1", "deny", "no"), 5.0))) == [Settle]


def test_the_end_of_the_session_clears_pending_requests() -> None:
    core = asking()
    core.handle(RunnerRequest(PermissionRequest("toolu_1", "Bash", {}), 2.0))
    core.handle(SandboxEnded(CRASH))
    assert not core.pending.replay()
    with pytest.raises(SessionError):
        core.handle(ClientAnswer(PermissionResponseFrame("toolu_1", "allow"), 3.0))
