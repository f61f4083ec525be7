"""The HTTP+SSE side of ``bench.py``'s conversation: a session of the Managed Agents HTTP API
driven with the official ``anthropic`` client (``AsyncAnthropic``), as its docs show it: one
agent (the ``agent_toolset_20260401``: the scripted model acts only for a CLI that has Bash) and
one environment per run, one session per conversation; the event stream is opened first and
held for the whole conversation; a turn is ``events.send`` of the user message, then the stream
read up to that turn's ``session.status_idle``.

Its figures go beside the WebSocket's and the bare SDK's in the same run, with ratios
(``sse_report``, ``sse_table``). Nothing here starts a service or decides pass/fail.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anthropic
from anthropic import AsyncStream

Message = dict[str, Any]

TOOLSET: Any = {"type": "agent_toolset_20260401"}
# Open mode (a loopback bind, no MOORAGE_API_KEYS): any token is tenant "default".
OPEN_TOKEN = "bench-open-mode-token"
IDLE = "session.status_idle"


@dataclass(frozen=True)
class HttpApi:
    """The client and what every session of the run shares (agent, environment)."""

    client: anthropic.AsyncAnthropic
    agent_id: str
    environment_id: str

    @classmethod
    async def open(cls, base_url: str) -> HttpApi:
        # No retries: a refused request is a failed bench, not a slower turn.
        client = anthropic.AsyncAnthropic(base_url=base_url, api_key=OPEN_TOKEN, max_retries=0)
        try:
            agent = await client.beta.agents.create(name="bench", model="claude-opus-5", tools=[TOOLSET])
            env = await client.beta.environments.create(name=f"bench-{time.monotonic_ns()}")
        except BaseException:
            await client.close()
            raise
        return cls(client, agent.id, env.id)

    async def close(self) -> None:
        await self.client.close()


def user_event(text: str) -> Any:
    return {"type": "user.message", "content": [{"type": "text", "text": text}]}


def is_idle(message: Message) -> bool:
    return message.get("type") == IDLE


def failed(message: Message) -> bool:
    """A ``session.error``, or a turn that stopped other than at its end (e.g. ``retries_exhausted``)."""
    if message.get("type") == "session.error":
        return True
    stop = message.get("stop_reason")
    return is_idle(message) and not (isinstance(stop, dict) and stop.get("type") == "end_turn")


class HttpSession:
    """One Managed Agents session: its stream held open, turns sent with ``events.send``.
    ``messages`` are the stream's events as dicts (``bench.read_until`` reads them)."""

    def __init__(self, api: HttpApi) -> None:
        self.api = api
        self.session_id = ""
        self._stream: AsyncStream[Any] | None = None
        self.messages: AsyncIterator[Message] | None = None

    async def connect(self) -> None:
        beta = self.api.client.beta
        session = await beta.sessions.create(agent=self.api.agent_id, environment_id=self.api.environment_id)
        self.session_id = session.id
        # The answer comes once the service has sent the status line: the stream is open.
        self._stream = await beta.sessions.events.stream(session.id)
        self.messages = self._events(self._stream)

    @staticmethod
    async def _events(stream: AsyncStream[Any]) -> AsyncIterator[Message]:
        async for event in stream:
            yield event.to_dict(mode="json")

    async def send(self, text: str) -> None:
        await self.api.client.beta.sessions.events.send(self.session_id, events=[user_event(text)])

    async def close(self) -> None:
        if self._stream is not None:
            with contextlib.suppress(Exception):
                await self._stream.close()


# -- report ----------------------------------------------------------------------------------


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


def sse_report(sse: dict[str, Any], direct: dict[str, Any], service: dict[str, Any]) -> dict[str, Any]:
    """Ratios of the HTTP+SSE side to each reference; each side is ``bench.conversation_side``."""

    def ratios(ref: dict[str, Any]) -> dict[str, float]:
        return {
            "per_turn_p50": _ratio(sse["per_turn"]["median_s"], ref["per_turn"]["median_s"]),
            "per_turn_p95": _ratio(sse["per_turn"]["p95_s"], ref["per_turn"]["p95_s"]),
            "total": _ratio(sse["total_s"], ref["total_s"]),
        }

    return {
        "what": "the same turns through the HTTP API with the official anthropic client: events.send "
        "-> session.status_idle on the session's already open event stream",
        **sse,
        "ratio_to_direct": ratios(direct),
        "ratio_to_service": ratios(service),
    }


def sse_table(conv: dict[str, Any]) -> list[str]:
    """The table's lines for the HTTP+SSE side: per-turn p50 and p95, and the total, in ms,
    beside the bare SDK ("direct") and the WebSocket ("service"), with both ratios."""
    sse = conv["http_sse"]
    to_direct, to_service = sse["ratio_to_direct"], sse["ratio_to_service"]

    def line(label: str, values: tuple[float, float, float], ratios: tuple[float, float], digits: int) -> str:
        cells = "".join(f"{v * 1000:>10.{digits}f}" for v in values)
        return f"{label:36}{cells}{ratios[0]:>8.2f}x{ratios[1]:>8.2f}x"

    def per_turn(side: dict[str, Any], key: str) -> float:
        return float(side["per_turn"][key])

    d, s = conv["direct"], conv["service"]
    return [
        f"{'HTTP+SSE beside them (ms)':36}{'direct':>10}{'service':>10}{'http+sse':>10}{'sse/sdk':>9}{'sse/ws':>9}",
        line(
            "  per turn, p50",
            (per_turn(d, "median_s"), per_turn(s, "median_s"), per_turn(sse, "median_s")),
            (to_direct["per_turn_p50"], to_service["per_turn_p50"]),
            1,
        ),
        line(
            "  per turn, p95",
            (per_turn(d, "p95_s"), per_turn(s, "p95_s"), per_turn(sse, "p95_s")),
            (to_direct["per_turn_p95"], to_service["per_turn_p95"]),
            1,
        ),
        line(
            f"  {conv['turns']}-turn conversation, total",
            (d["total_s"], s["total_s"], sse["total_s"]),
            (to_direct["total"], to_service["total"]),
            0,
        ),
    ]
