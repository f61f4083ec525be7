"""A replica's heartbeat (``moorage.heartbeat``) on a real database: the SQLite guard admits the
first replica and the same one restarting, refuses a second while the first beats, admits it once
the first left or went quiet; on PostgreSQL it admits any number; ``Heartbeat`` beats and leaves."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from moorage.heartbeat import Heartbeat, join
from moorage_session_store import Database, Replicas
from support import scaled

TTL_S = 30.0


async def test_the_guard_admits_one_replica_per_sqlite_database_and_any_number_on_postgresql(db: Database) -> None:
    now = datetime.now(UTC)
    assert await join(db, "a", TTL_S, now) is None
    assert await join(db, "a", TTL_S, now) is None  # the same replica restarting (after kill -9)
    refusal = await join(db, "b", TTL_S, now)
    if db.dialect == "sqlite":
        assert refusal is not None and refusal.startswith("replica a uses this SQLite database")
        assert await join(db, "b", TTL_S, now + timedelta(seconds=TTL_S + 1)) is None  # a went quiet
    else:
        assert refusal is None


async def test_a_heartbeat_keeps_beating_and_a_clean_stop_leaves(db: Database) -> None:
    replicas = Replicas(db)
    since = datetime.now(UTC) - timedelta(seconds=1)
    heartbeat = Heartbeat(replicas, "a", every_s=0.05)
    await heartbeat.start()
    try:
        (first,) = await replicas.alive(since, excluding="b")
        assert first[0] == "a"
        async with asyncio.timeout(scaled(10)):
            latest = first
            while latest == first:  # until the task beats again
                await asyncio.sleep(0.05)
                (latest,) = await replicas.alive(since, excluding="b")
    finally:
        await heartbeat.stop()
    assert await replicas.alive(since, excluding="b") == []  # left: the next replica may start at once
    assert await join(db, "b", TTL_S, datetime.now(UTC)) is None
