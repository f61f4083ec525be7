"""The command table's contract (``moorage_session_store.commands.SessionCommands``) and the
replicas' heartbeats (``moorage_session_store.replicas.Replicas``) on SQLite and PostgreSQL:
commands claimed once each even by racing replicas, withdrawn only while unclaimed, found by their
owner's poll, pruned by age, and gone with their session."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from moorage_session_store import Command, Database, Replicas, SessionCommands, SessionNotFound, SessionRecords
from moorage_session_store.models import REPLICAS
from sqlalchemy import select
from support import scaled


async def _session(db: Database, tenant: str = "acme") -> str:
    session_id = str(uuid.uuid4())
    await SessionRecords(db).create(session_id, tenant, {})
    return session_id


async def test_a_command_is_stored_claimed_completed_and_forgotten(db: Database) -> None:
    commands, sid = SessionCommands(db), await _session(db)
    before = datetime.now(UTC)
    first = await commands.enqueue(sid, "acme", {"type": "interrupt", "text": "héllo ✓"}, "replica-b")
    second = await commands.enqueue(sid, "acme", {"type": "user.message"}, "replica-c")
    assert second > first
    stored = await commands.get(first)
    assert stored is not None
    assert stored == Command(
        first, sid, "acme", {"type": "interrupt", "text": "héllo ✓"}, "replica-b", stored.created_at, None, None, None
    )
    assert before - timedelta(seconds=1) <= stored.created_at <= datetime.now(UTC) + timedelta(seconds=1)

    claimed = await commands.claim(sid, "replica-a")
    assert [c.id for c in claimed] == [first, second]
    assert [c.claimed_by for c in claimed] == ["replica-a", "replica-a"]
    assert [c.sender for c in claimed] == ["replica-b", "replica-c"]
    assert await commands.claim(sid, "replica-a") == []  # each command once

    await commands.complete(first, {"ok": True})
    done = await commands.get(first)
    assert done is not None and done.result == {"ok": True} and done.done_at is not None
    assert done.claimed_by == "replica-a"
    pending = await commands.get(second)
    assert pending is not None and pending.done_at is None and pending.result is None

    await commands.forget(first)
    assert await commands.get(first) is None
    await commands.forget(first)  # gone already: no-op
    await commands.complete(first, {"ok": False})  # gone: no-op
    assert await commands.get(first) is None


async def test_a_command_for_an_unknown_session_is_session_not_found(db: Database) -> None:
    with pytest.raises(SessionNotFound):
        await SessionCommands(db).enqueue(str(uuid.uuid4()), "acme", {"type": "interrupt"}, "r")


async def test_claim_takes_only_the_sessions_own_commands(db: Database) -> None:
    commands, mine, other = SessionCommands(db), await _session(db), await _session(db)
    ours = await commands.enqueue(mine, "acme", {"n": 1}, "r")
    theirs = await commands.enqueue(other, "acme", {"n": 2}, "r")
    assert [c.id for c in await commands.claim(mine, "a")] == [ours]
    assert [c.id for c in await commands.claim(other, "b")] == [theirs]


async def test_racing_replicas_claim_each_command_exactly_once(db: Database) -> None:
    """Six claimers on two connections pools (two replicas) claim while commands keep arriving:
    every command is claimed once, by the claimer the table names."""
    other = await Database.connect(db.url)
    try:
        sid = await _session(db)
        sender = SessionCommands(db)
        enqueued: list[int] = []
        sending = True
        got: dict[str, list[Command]] = {}

        async def send() -> None:
            nonlocal sending
            for n in range(60):
                enqueued.append(await sender.enqueue(sid, "acme", {"n": n}, "sender"))
                await asyncio.sleep(0)
            sending = False

        async def claim(name: str, commands: SessionCommands) -> None:
            mine = got.setdefault(name, [])
            while True:
                was_sending = sending
                taken = await commands.claim(sid, name)
                mine.extend(taken)
                if not taken and not was_sending:
                    return

        claimers = [claim(f"r{i}", SessionCommands(db if i % 2 else other)) for i in range(6)]
        async with asyncio.timeout(scaled(60)):
            await asyncio.gather(send(), *claimers)
        ids = [c.id for taken in got.values() for c in taken]
        assert sorted(ids) == enqueued  # nothing twice, nothing lost
        assert sum(1 for taken in got.values() if taken) >= 1
        for name, taken in got.items():
            assert [c.id for c in taken] == sorted(c.id for c in taken)  # each claim in id order
            for command in taken:
                assert command.claimed_by == name
                stored = await sender.get(command.id)
                assert stored is not None and stored.claimed_by == name
    finally:
        await other.close()


async def test_withdraw_deletes_only_a_command_nobody_claimed(db: Database) -> None:
    commands, sid = SessionCommands(db), await _session(db)
    early = await commands.enqueue(sid, "acme", {"n": 1}, "r")
    assert await commands.withdraw(early)
    assert await commands.get(early) is None
    assert await commands.claim(sid, "owner") == []  # it never runs
    assert not await commands.withdraw(early)  # gone

    late = await commands.enqueue(sid, "acme", {"n": 2}, "r")
    assert [c.id for c in await commands.claim(sid, "owner")] == [late]
    assert not await commands.withdraw(late)  # claimed: the owner runs it
    assert await commands.get(late) is not None


async def test_waiting_sessions_are_the_owners_sessions_with_unclaimed_commands(db: Database) -> None:
    commands, records = SessionCommands(db), SessionRecords(db)
    held, held_idle, elsewhere, unowned = [await _session(db) for _ in range(4)]
    for sid, owner in ((held, "me"), (held_idle, "me"), (elsewhere, "them")):
        assert await records.acquire_lease(sid, owner, 30)
    for sid in (held, elsewhere, unowned):
        await commands.enqueue(sid, "acme", {"n": 1}, "r")
        await commands.enqueue(sid, "acme", {"n": 2}, "r")
    assert await commands.waiting_sessions("me") == [held]  # once, though two wait
    assert await commands.waiting_sessions("them") == [elsewhere]
    await commands.claim(held, "me")
    assert await commands.waiting_sessions("me") == []


async def test_prune_deletes_the_commands_created_before_a_time(db: Database) -> None:
    commands, sid = SessionCommands(db), await _session(db)
    old = [await commands.enqueue(sid, "acme", {"n": n}, "r") for n in range(3)]
    await commands.claim(sid, "owner")
    cut = datetime.now(UTC)
    await asyncio.sleep(0.01)  # created_at is strictly after cut
    new = await commands.enqueue(sid, "acme", {"n": 3}, "r")
    assert await commands.prune(cut) == 3
    assert [await commands.get(i) for i in old] == [None, None, None]
    assert await commands.get(new) is not None


async def test_commands_go_with_their_session_on_delete_purge_and_reaping(db: Database) -> None:
    commands, records = SessionCommands(db), SessionRecords(db)
    deleted, purged, reaped, kept = [await _session(db) for _ in range(4)]
    ids = {sid: await commands.enqueue(sid, "acme", {"n": 1}, "r") for sid in (deleted, purged, reaped, kept)}
    await records.delete(deleted)
    assert await records.purge(purged)
    await records.update(reaped, state="suspended")
    assert reaped in await records.reap_suspended(datetime.now(UTC) + timedelta(seconds=1), 100)
    for sid in (deleted, purged, reaped):
        assert await commands.get(ids[sid]) is None
    assert await commands.get(ids[kept]) is not None


async def test_replicas_beat_are_seen_alive_by_others_and_leave(db: Database) -> None:
    replicas = Replicas(db)
    start = datetime.now(UTC) - timedelta(seconds=1)
    await replicas.beat("a")
    await replicas.beat("b")
    seen = await replicas.alive(start, excluding="a")
    assert [r for r, _at in seen] == ["b"]
    assert start <= seen[0][1] <= datetime.now(UTC) + timedelta(seconds=1)
    assert [r for r, _at in await replicas.alive(start, excluding="c")] in (["a", "b"], ["b", "a"])
    assert await replicas.alive(datetime.now(UTC) + timedelta(seconds=5), excluding="a") == []  # none that recent

    async with db.engine.connect() as conn:
        started = (await conn.execute(select(REPLICAS.c.started_at).where(REPLICAS.c.id == "b"))).scalar_one()
    await asyncio.sleep(0.01)
    await replicas.beat("b")
    async with db.engine.connect() as conn:
        row = (
            await conn.execute(select(REPLICAS.c.started_at, REPLICAS.c.heartbeat_at).where(REPLICAS.c.id == "b"))
        ).one()
    assert row.started_at == started and row.heartbeat_at > started  # a beat moves only the heartbeat

    await replicas.leave("b")
    await replicas.leave("b")  # no row: no-op
    assert await replicas.alive(start, excluding="a") == []


async def test_of_replicas_joining_at_once_exactly_one_joins_and_the_other_sees_it(db: Database) -> None:
    """Two processes starting on one database: the second must see the first, never both join."""
    other = await Database.connect(db.url)
    try:
        since = datetime.now(UTC) - timedelta(seconds=30)
        for round_ in range(5):
            a, b = f"a{round_}", f"b{round_}"
            joined_a, joined_b = await asyncio.gather(Replicas(db).join(a, since), Replicas(other).join(b, since))
            seen = ([r for r, _at in joined_a], [r for r, _at in joined_b])
            assert seen in (([], [a]), ([b], []))  # one joined; the other saw it
            assert len([r for r, _at in await Replicas(db).alive(since, excluding="nobody")]) == 1  # one row written
            await Replicas(db).leave(a)
            await Replicas(db).leave(b)
        await Replicas(db).beat("old")
        assert [r for r, _at in await Replicas(db).join("new", datetime.now(UTC) + timedelta(seconds=5))] == []
        assert {r for r, _at in await Replicas(db).alive(since, excluding="nobody")} == {"old", "new"}  # stale: joined
        assert [r for r, _at in await Replicas(db).join("new", since)] == ["old"]
    finally:
        await other.close()
