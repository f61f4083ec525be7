"""The start gate: how many sandboxes may start at once on a node."""

from __future__ import annotations

import asyncio

import pytest
from moorage.errors import SessionError
from moorage.manager import StartGate


async def test_starts_past_the_gate_size_wait_for_a_slot() -> None:
    """With two slots taken a third start waits, and gets the slot the moment one is given back."""
    gate = StartGate(2)
    first = await gate.enter(1.0)
    await gate.enter(1.0)
    third = asyncio.create_task(gate.enter(5.0))
    await asyncio.sleep(0)
    assert not third.done() and gate.starting == 2
    gate.leave(first)
    await asyncio.wait_for(third, 1.0)
    assert gate.starting == 2


async def test_a_start_that_waits_too_long_is_told_to_retry() -> None:
    """No slot within the timeout: too_many_sessions, fatal (the client retries later)."""
    gate = StartGate(1)
    await gate.enter(1.0)
    with pytest.raises(SessionError) as refused:
        await gate.enter(0.01)
    assert refused.value.code == "too_many_sessions" and refused.value.fatal is True
    assert gate.starting == 1


async def test_giving_a_slot_back_twice_frees_it_once() -> None:
    """A second leave with the same token does not open a slot nobody gave back."""
    gate = StartGate(1)
    token = await gate.enter(1.0)
    gate.leave(token)
    gate.leave(token)
    await gate.enter(1.0)
    with pytest.raises(SessionError):
        await gate.enter(0.01)
