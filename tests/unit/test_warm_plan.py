"""Which specs get started agents, and how many (warm_plan): pure, with a hand-moved clock."""

from __future__ import annotations

import json
from typing import Any

from moorage.warm_plan import Bounds, Demand, shortfall, surplus, targets, warm_key

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
