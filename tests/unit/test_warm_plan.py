"""Which specs get started agents, and how many (warm_plan): pure, with a hand-moved clock."""

from __future__ import annotations

import json
from typing import Any

from moorage.warm_plan import (
    AGENT_BYTES_ESTIMATE,
    Bounds,
    Demand,
    agent_bytes,
    shortfall,
    surplus,
    targets,
    warm_key,
    within_budget,
)

BOUNDS = Bounds(total=3, per_spec=2, idle_s=600.0, window_s=60.0)


def frame(**extra: Any) -> dict[str, Any]:
    options = {"session_id": "s-1", "max_turns": 3, "resume": False}
    return {"kind": "start", "options": options, "model_proxy": "unix:/m", "store": True, **extra}


def wanted(at: float, times: int = 1, pinned: bool = False) -> Demand:
    demand = Demand(pinned=pinned)
    for _ in range(times):
        demand.asked(at, BOUNDS.window_s)
    return demand


def test_the_key_ignores_the_session_id_and_the_kind_and_nothing_else() -> None:
    one = warm_key(frame())
    assert one is not None
    assert warm_key({**frame(), "kind": "prestart", "options": {**frame()["options"], "session_id": "s-2"}}) == one
    assert warm_key(frame(agent={"system": "be brief"})) != one
    assert warm_key(frame(egress_proxy="unix:/t")) != one
    assert "s-1" not in one and json.loads(one)["options"] == {"max_turns": 3, "resume": False}


def test_resumed_sessions_and_sessions_with_credentials_have_no_key() -> None:
    assert warm_key({**frame(), "options": {"session_id": "s", "resume": True}}) is None
    assert warm_key(frame(mcp_proxy=["gh"])) is None
    assert warm_key(frame(env={"TOKEN": "placeholder"})) is None
    assert warm_key(frame(egress_ca="-----BEGIN CERTIFICATE-----")) is None
    assert warm_key({"kind": "start"}) is None


def test_a_pinned_spec_is_kept_with_no_demand_at_all() -> None:
    assert targets({"default": Demand(pinned=True)}, 10_000.0, BOUNDS) == {"default": 1}


def test_an_unpinned_spec_is_kept_until_it_was_idle_for_idle_s() -> None:
    demands = {"a": wanted(0.0)}
    assert targets(demands, 600.0, BOUNDS) == {"a": 1}
    assert targets(demands, 600.1, BOUNDS) == {}


def test_a_burst_gets_as_many_as_were_asked_for_in_the_window_up_to_per_spec() -> None:
    assert targets({"a": wanted(0.0, times=2)}, 1.0, BOUNDS) == {"a": 2}
    assert targets({"a": wanted(0.0, times=5)}, 1.0, BOUNDS) == {"a": 2}
    # the burst is over: one is kept while the spec is not idle
    assert targets({"a": wanted(0.0, times=5)}, 61.0, BOUNDS) == {"a": 1}


def test_the_total_is_shared_one_each_first_pinned_then_most_recent() -> None:
    demands = {
        "default": Demand(pinned=True),
        "old": wanted(1.0, times=2),
        "new": wanted(5.0, times=2),
        "newest": wanted(9.0, times=2),
    }
    plan = targets(demands, 10.0, BOUNDS)
    assert plan == {"default": 1, "newest": 1, "new": 1}
    assert list(plan) == ["default", "newest", "new"], "the plan is in the order agents are started"
    assert targets(demands, 10.0, Bounds(total=5, per_spec=2, idle_s=600.0)) == {
        "default": 1,
        "newest": 2,
        "new": 1,
        "old": 1,
    }


def test_no_agents_when_the_total_is_zero() -> None:
    assert targets({"default": Demand(pinned=True), "a": wanted(0.0)}, 1.0, Bounds(0, 2, 600.0)) == {}


def test_surplus_and_shortfall() -> None:
    plan = {"default": 1, "a": 2}
    assert shortfall({"default": 1, "a": 1}, plan) == "a"
    assert shortfall({"a": 2}, plan) == "default", "the first in the plan's order comes first"
    assert shortfall({"default": 1, "a": 2}, plan) is None
    assert surplus({"default": 2, "a": 1, "gone": 3}, plan) == {"default": 1, "gone": 3}


MIB = 1024**2


def test_without_a_memory_budget_the_count_alone_bounds_the_total() -> None:
    assert within_budget(Bounds(total=5, per_spec=2, idle_s=600.0), 10**12) == 5
    assert within_budget(Bounds(total=5, per_spec=2, idle_s=600.0, memory_bytes=0), None) == 5


def test_a_memory_budget_lowers_the_total_to_what_fits_never_raises_it() -> None:
    budget = Bounds(total=5, per_spec=2, idle_s=600.0, memory_bytes=1000 * MIB)
    assert within_budget(budget, 300 * MIB) == 3, "1000 MiB holds three of 300 MiB"
    assert within_budget(budget, 100 * MIB) == 5, "ten would fit: the count still bounds"
    assert within_budget(budget, 2000 * MIB) == 0, "not even one fits: none"
    assert within_budget(budget, None) == 1000 * MIB // AGENT_BYTES_ESTIMATE == 5
    assert within_budget(Bounds(5, 2, 600.0, memory_bytes=450 * MIB), None) == 2, "unmeasured: the estimate"


def test_an_agent_is_what_the_measured_ones_hold_on_average_else_the_last_measure() -> None:
    assert agent_bytes([100 * MIB, 300 * MIB], None) == 200 * MIB
    assert agent_bytes([None, 120 * MIB, 0], 500 * MIB) == 120 * MIB, "an unmeasurable one does not count"
    assert agent_bytes([], 180 * MIB) == 180 * MIB, "all claimed just now: what was measured before"
    assert agent_bytes([None, None], None) is None, "never measured (a backend that cannot tell)"
