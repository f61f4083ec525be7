"""How many started agents to keep warm for each agent spec. Pure: no I/O, no clock of its own.

A *started agent* is a warm sandbox whose Claude Code CLI already runs with the exact ``start``
frame a new session of one spec will send (``prestart``, channel v4): claiming one skips the CLI's
start, the slow part of a session's start. Specs are told apart by their key (``warm_key``: the
start frame without its session id). Which specs, and how many each:

- the operator's default spec is *pinned*: kept warm while the pool is on (the sessions of
  ``make run``, of a bot that uses no agent, of the web console's "new session");
- any other spec is kept warm once a session of it was created, until nothing asked for it for
  ``idle_s`` (a spec used once a day is not worth a CLI all day);
- each spec gets as many as were asked for in the last ``window_s`` (at least one, at most
  ``per_spec``), so a burst of sessions of one spec finds them ready;
- ``total`` bounds them all (each holds a CLI: about 200 MB, docs/architecture.md). When the specs
  want more than that, each wanted spec gets one before any gets a second; pinned specs first,
  then the most recently wanted;
- a memory budget (``memory_bytes``, 0: none) can lower ``total`` further: the pool may keep only
  as many as fit in it, at the bytes a started agent was measured to hold (``within_budget``).
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

# What one started agent is taken to hold before any was measured (or where the sandbox backend
# cannot tell): an idle session's sandbox is ~185 MiB PSS, the bare SDK's CLI ~195 MiB
# (bench_density.py; docs/architecture.md "Warm pool").
AGENT_BYTES_ESTIMATE = 200 * 1024**2

# Start fields that make a start frame one session's own: a session with any of them is never
# served by a started agent (its credentials are granted per sandbox after it is claimed).
PER_SESSION_FIELDS = ("mcp_proxy", "env", "egress_ca")


def warm_key(frame: dict[str, Any]) -> str | None:
    """The spec key of a ``start`` frame (wire form): the frame without its kind and session id,
    as canonical JSON; None for a frame no started agent can serve (a resumed session, a session
    with vault credentials)."""
    options = frame.get("options")
    if not isinstance(options, dict) or options.get("resume") or any(frame.get(f) for f in PER_SESSION_FIELDS):
        return None
    rest = {k: v for k, v in frame.items() if k != "kind"}
    rest["options"] = {k: v for k, v in options.items() if k != "session_id"}
    return json.dumps(rest, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Bounds:
    total: int  # started agents in all (0: none)
    per_spec: int  # the most for one spec
    idle_s: float  # an unpinned spec nobody asked for in this long is let go
    window_s: float = 60.0  # demand is counted over this long
    memory_bytes: int = 0  # what all started agents may hold together (0: no budget, ``total`` only)


@dataclass
class Demand:
    """What the pool knows of one spec: when sessions of it were created."""

    pinned: bool = False
    last: float = float("-inf")
    recent: deque[float] = field(default_factory=deque)

    def asked(self, now: float, window_s: float) -> None:
        self.last = now
        self.recent.append(now)
        self.forget(now, window_s)

    def forget(self, now: float, window_s: float) -> None:
        while self.recent and self.recent[0] <= now - window_s:
            self.recent.popleft()


def targets(demands: dict[str, Demand], now: float, bounds: Bounds) -> dict[str, int]:
    """How many started agents each spec should have now (specs not named: none)."""
    wanted: dict[str, int] = {}
    for key, demand in demands.items():
        demand.forget(now, bounds.window_s)
        if demand.pinned or now - demand.last <= bounds.idle_s:
            wanted[key] = max(1, min(bounds.per_spec, len(demand.recent)))
    if bounds.per_spec <= 0:
        return {}
    order = sorted(wanted, key=lambda k: (not demands[k].pinned, -demands[k].last, k))
    plan = {key: 0 for key in order}
    left = bounds.total
    while left > 0:
        given = False
        for key in order:
            if left > 0 and plan[key] < wanted[key]:
                plan[key] += 1
                left -= 1
                given = True
        if not given:
            break
    return {key: n for key, n in plan.items() if n > 0}


def surplus(have: dict[str, int], plan: dict[str, int]) -> dict[str, int]:
    """How many started agents of each spec to let go: those over the plan."""
    return {key: n - plan.get(key, 0) for key, n in have.items() if n > plan.get(key, 0)}


def shortfall(have: dict[str, int], plan: dict[str, int]) -> str | None:
    """The spec to start an agent for next: the first in the plan's order that has fewer than
    planned (the plan is ordered by priority), or None."""
    return next((key for key, n in plan.items() if have.get(key, 0) < n), None)


def agent_bytes(measured: list[int | None], last: int | None) -> int | None:
    """What one started agent holds: the mean of those measured now (a backend that cannot tell
    gives None), else ``last`` (what was measured before: every agent may just have been claimed),
    else None (nothing was ever measured)."""
    known = [n for n in measured if n is not None and n > 0]
    return sum(known) // len(known) if known else last


def within_budget(bounds: Bounds, per_agent: int | None) -> int:
    """The started agents the pool may keep in all: ``total``, or fewer when that many would not
    fit in the memory budget at ``per_agent`` bytes each (None: ``AGENT_BYTES_ESTIMATE``)."""
    if bounds.memory_bytes <= 0:
        return bounds.total
    return max(0, min(bounds.total, bounds.memory_bytes // max(1, per_agent or AGENT_BYTES_ESTIMATE)))
