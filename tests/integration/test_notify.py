"""PostgreSQL notifications between replicas (``moorage.notify.Notifications`` and the
``pg_notify`` calls of the store): appended events, new and finished commands reach a listener
on another ``Database`` object; the listener survives a handler that raises and a killed
connection (it reconnects, says so, and hears the next notification). On SQLite it does nothing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import structlog
from moorage.notify import APPLICATION_NAME, Notifications
from moorage_session_store import (
    COMMANDS_CHANNEL,
    DONE_CHANNEL,
    EVENTS_CHANNEL,
    Database,
    NewEvent,
    SessionCommands,
    SessionEvents,
    SessionRecords,
)
from sqlalchemy import text
from support import scaled


@pytest.fixture
async def dbs(pg_name: str) -> AsyncIterator[tuple[Database, Database]]:
    """Two replicas' databases: a writer and the one the listener belongs to."""
    url = f"postgresql://postgres@127.0.0.1:5432/{pg_name}"
    writer, reader = await Database.connect(url), await Database.connect(url)
    try:
        await writer.migrate()
        yield writer, reader
    finally:
        await writer.close()
        await reader.close()


class Heard:
    """The payloads a listener got, per channel, and a bounded wait for one."""

    def __init__(self) -> None:
        self.payloads: list[tuple[str, str]] = []
        self._changed = asyncio.Event()

    def handler(self, channel: str) -> Callable[[str], None]:
        def heard(payload: str) -> None:
            self.payloads.append((channel, payload))
            self._changed.set()

        return heard

    async def wait_for(self, channel: str, payload: str) -> None:
        async with asyncio.timeout(scaled(10)):
            while (channel, payload) not in self.payloads:
                self._changed.clear()
                await self._changed.wait()


def _listener(db: Database, heard: Heard, on_reconnect: Callable[[], None] | None = None) -> Notifications:
    channels = (EVENTS_CHANNEL, COMMANDS_CHANNEL, DONE_CHANNEL)
    return Notifications(db, {channel: heard.handler(channel) for channel in channels}, on_reconnect)


async def _session(db: Database) -> str:
    session_id = str(uuid.uuid4())
    await SessionRecords(db).create(session_id, "acme", {})
    return session_id


def _events(first: int, n: int) -> list[NewEvent]:
    return [NewEvent(s, "assistant", {"type": "assistant"}, datetime.now(UTC)) for s in range(first, first + n)]


async def test_events_and_commands_reach_a_listener_of_another_database_object(dbs: tuple[Database, Database]) -> None:
    writer, reader = dbs
    heard = Heard()
    notes = _listener(reader, heard)
    await notes.start()
    try:
        assert notes.connected
        sid = await _session(writer)
        await SessionEvents(writer).append(sid, _events(1, 3))
        await heard.wait_for(EVENTS_CHANNEL, f"{sid} 3")  # the batch's last seq
        commands = SessionCommands(writer)
        command_id = await commands.enqueue(sid, "acme", {"type": "interrupt"}, "other")
        await heard.wait_for(COMMANDS_CHANNEL, sid)
        await commands.claim(sid, "owner")
        await commands.complete(command_id, {"ok": True})
        await heard.wait_for(DONE_CHANNEL, str(command_id))
    finally:
        await notes.close()
    assert not notes.connected


async def test_a_handler_that_raises_is_logged_and_the_listener_goes_on(dbs: tuple[Database, Database]) -> None:
    writer, reader = dbs
    heard = Heard()

    def broken(_payload: str) -> None:
        raise RuntimeError("handler bug")

    notes = Notifications(reader, {EVENTS_CHANNEL: broken, COMMANDS_CHANNEL: heard.handler(COMMANDS_CHANNEL)})
    await notes.start()
    try:
        sid = await _session(writer)
        with structlog.testing.capture_logs() as logs:
            await SessionEvents(writer).append(sid, _events(1, 1))
            await SessionCommands(writer).enqueue(sid, "acme", {"type": "interrupt"}, "other")
            await heard.wait_for(COMMANDS_CHANNEL, sid)
        assert [e["handler"] for e in logs if e["event"] == "notify_handler_failed"] == [EVENTS_CHANNEL]
        assert notes.connected
    finally:
        await notes.close()


async def test_a_killed_connection_is_replaced_and_on_reconnect_called(
    dbs: tuple[Database, Database], pg_name: str
) -> None:
    writer, reader = dbs
    heard, reconnected = Heard(), asyncio.Event()
    notes = _listener(reader, heard, on_reconnect=reconnected.set)
    with structlog.testing.capture_logs() as logs:
        await notes.start()
        try:
            assert not reconnected.is_set()  # the first connection is not a reconnection
            async with writer.engine.begin() as conn:
                killed = await conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE application_name = :app AND datname = :db"
                    ),
                    {"app": APPLICATION_NAME, "db": pg_name},
                )
                assert killed.scalars().all() == [True]
            async with asyncio.timeout(scaled(10)):
                await reconnected.wait()
            assert notes.connected
            sid = await _session(writer)
            await SessionEvents(writer).append(sid, _events(1, 2))
            await heard.wait_for(EVENTS_CHANNEL, f"{sid} 2")
        finally:
            await notes.close()
    names = [e["event"] for e in logs if e["event"].startswith("notify_")]
    assert names == ["notify_listening", "notify_lost", "notify_reconnected"]


async def test_on_sqlite_there_is_nothing_to_listen_to(tmp_path: Path) -> None:
    db = await Database.connect(f"sqlite:///{tmp_path / 'one.db'}")
    try:
        notes = Notifications(db, {EVENTS_CHANNEL: lambda _p: None})
        await notes.start()
        assert not notes.connected
        await notes.close()
    finally:
        await db.close()
