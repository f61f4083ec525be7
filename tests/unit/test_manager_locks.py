"""SessionManager's per-id rehydration locks: nothing is left behind by an
attach that was refused, however many bogus ids a client tries."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, cast

import pytest
from moorage.errors import Code, SessionError
from moorage.manager import KeyedLocks, SessionManager
from moorage.seams import RecordStore
from moorage.sessions import Deps
from moorage.settings import Settings


class Records:
    """Only the call an attach to an unknown id makes: the id is not there,
    or it is another tenant's."""

    def __init__(self, other_tenants: set[str]) -> None:
        self.other = other_tenants

    async def get(self, session_id: str) -> Any:
        if session_id in self.other:
            return type("Record", (), {"tenant": "someone-else", "state": "suspended"})()
        return None


def manager(records: Records) -> SessionManager:
    nothing = cast(Any, None)
    deps = Deps(
        Settings(), nothing, nothing, nothing, cast(RecordStore, records), nothing, "r1", nothing, nothing, nothing
    )
    return SessionManager(deps)


async def test_attaches_to_unknown_ids_leave_no_lock_behind() -> None:
    other = {str(uuid.uuid4()) for _ in range(100)}
    sessions = manager(Records(other))
    ids = [str(uuid.uuid4()) for _ in range(10_000)] + sorted(other)
    for session_id in ids:
        with pytest.raises(SessionError) as refused:
            await sessions.attach(session_id, "tenant-a")
        assert refused.value.code == Code.SESSION_NOT_FOUND
    assert len(sessions._locks) == 0


async def test_keyed_locks_serialise_one_key_and_forget_it_when_unused() -> None:
    locks = KeyedLocks()
    order: list[str] = []
    inside = asyncio.Event()
    release = asyncio.Event()

    async def first() -> None:
        async with locks.hold("k"):
            inside.set()
            order.append("first-in")
            await release.wait()
            order.append("first-out")

    async def second() -> None:
        await inside.wait()
        async with locks.hold("k"):
            order.append("second-in")

    tasks = [asyncio.create_task(first()), asyncio.create_task(second())]
    await inside.wait()
    await asyncio.sleep(0)  # let the second one queue on the lock
    assert "k" in locks and len(locks) == 1
    release.set()
    await asyncio.gather(*tasks)
    assert order == ["first-in", "first-out", "second-in"]
    assert len(locks) == 0

    with pytest.raises(RuntimeError):
        async with locks.hold("k"):
            raise RuntimeError("refused")
    assert "k" not in locks
