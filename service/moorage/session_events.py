"""What a session core is fed (inputs) and what it asks for (effects).

Plain frozen dataclasses, no behaviour: ``session_core.SessionCore.handle``
takes one ``Input`` and returns a list of ``Effect``; ``sessions.Session``
makes the inputs from what happens and carries the effects out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .channel import CustomToolUse, PermissionRequest
from .errors import MoorageError, SandboxError
from .pending import Resolution
from .protocol import Answer

JsonFrame = dict[str, Any]


# -- inputs -------------------------------------------------------------------


@dataclass(frozen=True)
class Ready:
    """The runner answered ``ready``: turns may run."""

    now: float


@dataclass(frozen=True)
class UserMessage:
    line: JsonFrame  # the runner's stream-json user line
    now: float


@dataclass(frozen=True)
class InterruptRequested:
    now: float


@dataclass(frozen=True)
class SdkMessage:
    message: JsonFrame
    now: float


@dataclass(frozen=True)
class RunnerRequest:
    """The runner asks a client: a ``permission_request`` or ``custom_tool_use``."""

    frame: PermissionRequest | CustomToolUse
    now: float


@dataclass(frozen=True)
class ClientAnswer:
    """A client's ``permission_response`` / ``custom_tool_result``."""

    answer: Answer
    now: float


@dataclass(frozen=True)
class RunnerFailed:
    """The runner reported an error frame while serving."""

    message: str


@dataclass(frozen=True)
class ChannelBroken:
    """The runner broke the channel protocol (``message`` in our own words)."""

    message: str


@dataclass(frozen=True)
class TranscriptFailed:
    """A transcript write failed: entries wait in memory; the relay retries."""


@dataclass(frozen=True)
class TranscriptDurable:
    now: float


@dataclass(frozen=True)
class Tick:
    now: float


@dataclass(frozen=True)
class Attached:
    now: float


@dataclass(frozen=True)
class Detached:
    now: float


@dataclass(frozen=True)
class TurnRefused:
    """The driver could not start the turn it was told to (budget spent)."""

    error: MoorageError
    now: float


@dataclass(frozen=True)
class Drain:
    """The service is shutting down: no new turns."""


@dataclass(frozen=True)
class CloseRequested:
    """Stop on purpose (idle, shutdown, lease lost), telling clients ``reason``."""

    reason: MoorageError | None = None


@dataclass(frozen=True)
class SandboxEnded:
    """The runner's output ended. ``crash`` is why, had nobody asked it to
    stop (the driver reads the limit counters: OOM, pids, or a plain crash)."""

    crash: SandboxError


@dataclass(frozen=True)
class Aborted:
    """The session cannot go on (its start failed, or a bug): wind down,
    telling clients ``error`` unless a close reason says more."""

    error: MoorageError | None


Input = (
    Ready
    | UserMessage
    | InterruptRequested
    | SdkMessage
    | RunnerRequest
    | ClientAnswer
    | RunnerFailed
    | ChannelBroken
    | TranscriptFailed
    | TranscriptDurable
    | Tick
    | Attached
    | Detached
    | TurnRefused
    | Drain
    | CloseRequested
    | SandboxEnded
    | Aborted
)


# -- effects ------------------------------------------------------------------


@dataclass(frozen=True)
class SendUser:
    """Start a turn: send this user line to the runner."""

    line: JsonFrame


@dataclass(frozen=True)
class SendInterrupt:
    reason: str  # "client", or the guard's code


@dataclass(frozen=True)
class Emit:
    """A frame for every attached client; ``durable`` False for ephemera."""

    frame: JsonFrame
    durable: bool = True


@dataclass(frozen=True)
class Settle:
    """A pending request is settled: tell the runner (``to_runner``) and
    every client (``frame``)."""

    resolution: Resolution


@dataclass(frozen=True)
class TurnEnded:
    """Release a turn's result (its transcript is durable): the driver
    emits it, settles the turn's spend and runs its after-turn checks."""

    result: JsonFrame
    timed_out: bool


@dataclass(frozen=True)
class FlushTranscript:
    """Keep writing the transcript until it is durable (a result waits)."""


@dataclass(frozen=True)
class KillSandbox:
    """No grace: a hostile runner, or a turn that ignored its interrupt."""

    reason: str


@dataclass(frozen=True)
class StopSandbox:
    """Staged stop (close the input, grace, terminate)."""


@dataclass(frozen=True)
class IdleEnded:
    idle_s: float


@dataclass(frozen=True)
class IdleTimedOut:
    """Nothing used the session for ``idle_timeout_s``: close it."""


@dataclass(frozen=True)
class WindDown:
    """The sandbox is gone: release everything, tell clients ``error``
    (fatal) or close them normally, and suspend the session."""

    error: MoorageError | None


Effect = (
    SendUser
    | SendInterrupt
    | Emit
    | Settle
    | TurnEnded
    | FlushTranscript
    | KillSandbox
    | StopSandbox
    | IdleEnded
    | IdleTimedOut
    | WindDown
)
