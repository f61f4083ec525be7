"""The session's decisions, without I/O: inputs in, effects out.

``SessionCore`` holds a session's state (a ``State`` and a few fields that
only make sense in some states) and is fed everything that happens to the
session: client commands, runner frames, store acknowledgements, clock ticks
(``now`` is always passed in), attach/detach and the sandbox's start and end.
Each ``handle`` returns the effects the driver (``sessions.Session``) must
carry out, in order: send to the runner, emit a client-visible frame, end a
turn (the driver's bookkeeping), kill or stop the sandbox, wind down.

Refusals addressed to one client (``queue_full``, ``no_turn_running``,
``request_not_pending``, ``service_draining``, ``session_closed``) are raised as ``MoorageError`` from
``handle``: they go to the client that asked, not to every subscriber.

Rules it keeps:
- One turn runs at a time; a ``user`` message while a turn runs (or while its
  result waits for the transcript) is queued, at most ``max_queued`` deep
  (``queue_full`` beyond), and queued messages run in arrival order.
- ``interrupt`` acts on the running turn only; queued messages stay queued.
- A turn's ``result`` is released only once its transcript is durable
  (``TranscriptDurable``); the next queued turn starts after it.
- The per-turn guard (``protocol.TurnGuard``): max turns and wall clock.
- Approvals and custom tools (``pending.Pending``): a runner's request is
  emitted and waits for the first client answer, its deadline, or the end
  of its turn (an interrupt, the result), which deny it.
- Idle: with no client, no turn, nothing queued and the transcript durable,
  the session closes (and is suspended) ``idle_timeout_s`` after that began.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from .errors import Code, MoorageError, ProtocolError, SandboxError, SessionError
from .pending import Pending
from .protocol import Action, TurnGuard
from .session_events import (
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
    Input,
    InterruptRequested,
    JsonFrame,
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


class State(Enum):
    STARTING = "starting"  # the sandbox is starting; messages wait for it
    IDLE = "idle"  # ready, no turn
    RUNNING = "running"  # a turn runs in the runner
    SETTLING = "settling"  # its result waits for the transcript to be durable
    CLOSING = "closing"  # the sandbox is being stopped (or has ended)
    CLOSED = "closed"  # wound down; nothing more happens


@dataclass(frozen=True)
class Limits:
    max_turns: int
    turn_timeout_s: float
    interrupt_grace_s: float
    idle_timeout_s: float
    max_queued: int


def queued_frame(position: int) -> JsonFrame:
    return {"type": "queued", "position": position}


@dataclass
class SessionCore:
    limits: Limits
    # Approvals and custom tools: requests waiting for a client (pending.py).
    pending: Pending = field(default_factory=lambda: Pending(60.0))
    state: State = State.STARTING
    guard: TurnGuard = field(init=False)
    queue: deque[JsonFrame] = field(default_factory=deque)
    held: list[tuple[JsonFrame, bool]] = field(default_factory=list)  # (result, timed out)
    durable: bool = True
    clients: int = 0
    draining: bool = False
    idle_since: float | None = None
    closing: bool = False  # someone asked the sandbox to stop
    close_error: MoorageError | None = None
    violation: str | None = None
    runner_error: str | None = None

    def __post_init__(self) -> None:
        lim = self.limits
        self.guard = TurnGuard(lim.max_turns, lim.turn_timeout_s, lim.interrupt_grace_s)

    # -- what the driver asks -------------------------------------------------

    @property
    def busy(self) -> bool:
        """A turn runs, its result waits, or messages wait to run."""
        return self.state in (State.RUNNING, State.SETTLING) or bool(self.held) or bool(self.queue)

    @property
    def in_use(self) -> bool:
        """A client, a turn, or a transcript still being written: not idle."""
        return bool(self.clients or self.busy or self.guard.running or not self.durable)

    def next_deadline(self) -> float | None:
        """When ``Tick`` may next have something to do (None: nothing)."""
        if self.state in (State.CLOSING, State.CLOSED):
            return None
        candidates = (self.guard.next_deadline(), self.pending.next_deadline(), self._idle_deadline())
        deadlines = [d for d in candidates if d is not None]
        return min(deadlines, default=None)

    def _idle_deadline(self) -> float | None:
        if self.idle_since is None:
            return None
        return self.idle_since + self.limits.idle_timeout_s

    # -- the one entry point --------------------------------------------------

    def handle(self, event: Input) -> list[Effect]:
        out: list[Effect] = []
        now = _now_of(event)
        match event:
            case Ready():
                if self.state is State.STARTING:
                    self.state = State.IDLE
                    self._next_turn(event.now, out)
            case UserMessage():
                self._on_user(event, out)
            case InterruptRequested():
                self._on_interrupt(event.now, out)
            case SdkMessage():
                self._on_sdk(event.message, event.now, out)
            case RunnerRequest():
                # A request the agent does not ask about breaks the channel
                # protocol: ``ChannelViolation`` propagates to the pump.
                out.append(Emit(self.pending.open(event.frame, event.now)))
            case ClientAnswer():
                self._refuse_if_closed()
                out.append(Settle(self.pending.answer(event.answer)))
            case RunnerFailed():
                self.runner_error = event.message[:500]
            case ChannelBroken():
                if self.violation is None:
                    self.violation = event.message
                    out.append(KillSandbox("channel_violation"))
            case TranscriptFailed():
                self.durable = False
            case TranscriptDurable():
                self.durable = True
                self._release_held(event.now, out)
            case Tick():
                self._on_tick(event.now, out)
            case Attached():
                self.clients += 1
            case Detached():
                self.clients = max(0, self.clients - 1)
            case TurnRefused():
                self._on_refused(event, out)
            case Drain():
                self.draining = True
            case CloseRequested():
                self._on_close(event.reason, out)
            case SandboxEnded():
                self._on_ended(event.crash, out)
            case Aborted():
                if self.state is not State.CLOSED:
                    self._wind_down(self.close_error or event.error, out)
        self._update_idle(now, out)
        return out

    # -- client commands ------------------------------------------------------

    def _refuse_if_closed(self) -> None:
        if self.state in (State.CLOSING, State.CLOSED):
            raise SessionError("the session is closed", code=Code.SESSION_CLOSED, fatal=True)

    def _on_user(self, event: UserMessage, out: list[Effect]) -> None:
        self._refuse_if_closed()
        if self.draining:
            raise ProtocolError(
                "the service is restarting: this session will be suspended; reconnect to continue it",
                code=Code.SERVICE_DRAINING,
            )
        # Accepted: the user's own message goes into the log first, as typed.
        echo = Emit({"type": "user_message", "message": event.line["message"]})
        if self.state is State.IDLE and not self.queue:
            out.append(echo)
            self._start_turn(event.line, event.now, out)
            return
        if len(self.queue) >= self.limits.max_queued:
            raise ProtocolError(
                f"{len(self.queue)} messages already wait for the running turn "
                f"(MOORAGE_MAX_QUEUED_TURNS={self.limits.max_queued}): wait for a result",
                code=Code.QUEUE_FULL,
            )
        out.append(echo)
        self.queue.append(event.line)
        out.append(Emit(queued_frame(len(self.queue))))

    def _on_interrupt(self, now: float, out: list[Effect]) -> None:
        self._refuse_if_closed()
        if not self.guard.running:
            raise ProtocolError("no turn is running", code=Code.NO_TURN_RUNNING)
        self.guard.user_interrupt(now)
        self._deny_pending(out)  # reason "interrupted"
        out.append(SendInterrupt("client"))

    def _deny_pending(self, out: list[Effect]) -> None:
        """The turn is interrupted or over: what still waits is denied, so
        the runner's waiting hook or tool call ends too."""
        out.extend(Settle(resolution) for resolution in self.pending.interrupt())

    # -- turns ----------------------------------------------------------------

    def _start_turn(self, line: JsonFrame, now: float, out: list[Effect]) -> None:
        self.guard.start(now)
        self.state = State.RUNNING
        out.append(SendUser(line))

    def _next_turn(self, now: float, out: list[Effect]) -> None:
        """Start the oldest queued message, if the session may run one."""
        if self.state is not State.IDLE or not self.queue:
            return
        if self.draining:
            while self.queue:
                self.queue.popleft()
                dropped = "the service is restarting: a queued message was dropped"
                out.append(Emit(_error(Code.SERVICE_DRAINING, dropped)))
            return
        self._start_turn(self.queue.popleft(), now, out)

    def _on_refused(self, event: TurnRefused, out: list[Effect]) -> None:
        """The turn never reached the runner: it and every queued message are
        dropped, each with the refusal (the budget will not come back mid-queue)."""
        if self.state is not State.RUNNING:
            return
        self.guard.cancel()
        self.state = State.IDLE
        out.append(Emit(event.error.frame()))
        while self.queue:
            self.queue.popleft()
            out.append(Emit(event.error.frame()))

    def _on_sdk(self, message: JsonFrame, now: float, out: list[Effect]) -> None:
        action = self.guard.on_message(message, now)
        if message.get("type") != "result":
            out.append(Emit(message, durable=message.get("type") != "stream_event"))
            if action is Action.INTERRUPT:
                self._deny_pending(out)
                out.append(SendInterrupt(str(self.guard.tripped)))
            return
        self._deny_pending(out)  # one that came in after an interrupt
        timed_out = self.guard.tripped is Code.TURN_TIMEOUT
        result = self.guard.finish_result(message)
        if self.state is State.RUNNING:
            self.state = State.SETTLING
        if self.durable and not self.held:
            self._end_turn(result, timed_out, now, out)
        else:
            # The transcript of this turn is not in the database yet: hold
            # the result until it is (clients were told why).
            self.held.append((result, timed_out))
            out.append(FlushTranscript())

    def _end_turn(self, result: JsonFrame, timed_out: bool, now: float, out: list[Effect]) -> None:
        out.append(TurnEnded(result, timed_out))
        if self.state is State.SETTLING and not self.held:
            self.state = State.IDLE
            self._next_turn(now, out)

    def _release_held(self, now: float, out: list[Effect]) -> None:
        held, self.held = self.held, []
        for n, (result, timed_out) in enumerate(held):
            if n == len(held) - 1:
                self._end_turn(result, timed_out, now, out)
            else:
                out.append(TurnEnded(result, timed_out))

    def _on_tick(self, now: float, out: list[Effect]) -> None:
        if self.state in (State.CLOSING, State.CLOSED):
            return
        out.extend(Settle(resolution) for resolution in self.pending.expire(now))
        action = self.guard.tick(now)
        if action is Action.INTERRUPT:
            self._deny_pending(out)
            out.append(SendInterrupt(str(self.guard.tripped)))
        elif action is Action.KILL:
            why = self.guard.tripped or Code.TURN_TIMEOUT
            self.close_error = MoorageError(
                f"the turn did not stop within {self.limits.interrupt_grace_s:g}s of being interrupted; "
                "its sandbox was stopped",
                code=why,
                fatal=True,
            )
            out.append(KillSandbox(str(why)))
        deadline = self._idle_deadline()
        if deadline is not None and now >= deadline and not self.in_use:
            out.append(IdleEnded(now - (self.idle_since or now)))
            self.idle_since = None
            out.append(IdleTimedOut())
            self._on_close(None, out)

    # -- the end --------------------------------------------------------------

    def _on_close(self, reason: MoorageError | None, out: list[Effect]) -> None:
        if self.state is State.CLOSED:
            return
        self.close_error = self.close_error or reason
        if not self.closing:
            self.closing = True
            if self.state is not State.CLOSING:
                self.state = State.CLOSING
                out.append(StopSandbox())

    def _on_ended(self, crash: SandboxError, out: list[Effect]) -> None:
        """Why the session ends: a broken channel, else what stopped it on
        purpose (a kill, a close reason), else the runner's own error, else
        the crash the driver saw (a limit that bit says more than the
        runner's 'CLI died')."""
        if self.state is State.CLOSED:
            return
        error: MoorageError | None
        if self.violation is not None:
            error = SandboxError(self.violation, code=Code.SANDBOX_CRASHED)
        elif self.closing or self.close_error is not None:
            error = self.close_error
        elif self.runner_error is not None and crash.code == Code.SANDBOX_CRASHED:
            error = SandboxError(self.runner_error, code=Code.SANDBOX_CRASHED)
        else:
            error = crash
        self._wind_down(error, out)

    def _wind_down(self, error: MoorageError | None, out: list[Effect]) -> None:
        if self.idle_since is not None:
            self.idle_since = None
        self.state = State.CLOSED
        self.queue.clear()
        self.guard.cancel()
        self.pending.clear()  # the runner is gone: nothing waits any more
        out.append(WindDown(error))

    def _update_idle(self, now: float | None, out: list[Effect]) -> None:
        if now is None:
            return
        idle = self.state is State.IDLE and not self.in_use and not self.closing
        if idle and self.idle_since is None:
            self.idle_since = now
        elif not idle and self.idle_since is not None and self.state is not State.CLOSED:
            out.append(IdleEnded(now - self.idle_since))
            self.idle_since = None


def _now_of(event: Input) -> float | None:
    """The input's time, for those that carry one."""
    match event:
        case (
            Ready(now=now)
            | UserMessage(now=now)
            | InterruptRequested(now=now)
            | SdkMessage(now=now)
            | RunnerRequest(now=now)
            | ClientAnswer(now=now)
            | TranscriptDurable(now=now)
            | Tick(now=now)
            | Attached(now=now)
            | Detached(now=now)
            | TurnRefused(now=now)
        ):
            return now
    return None


def _error(code: Code, message: str) -> JsonFrame:
    return MoorageError(message, code=code).frame()
