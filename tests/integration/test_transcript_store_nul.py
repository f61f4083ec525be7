"""A runner-supplied NUL character in a transcript batch: PostgreSQL refuses
it in text columns (an entry's uuid, a subpath). The session must go on: the
batch is answered, nothing is held back, and later entries are saved."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import structlog
from moorage.channel import Rpc
from moorage.relay import RpcRelay
from moorage.sandbox.base import Sandbox
from moorage.seams import TranscriptStore
from moorage.transcripts import POISON_ATTEMPTS, TranscriptSink
from moorage_session_store import Database, SQLModelSessionStore
from moorage_session_store.errors import DatabaseUnavailable


class FakeSandbox:
    """Only what the relay uses: the frames it answers with."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, frame: dict[str, Any]) -> None:
        self.sent.append(frame)


def relay_for(sink: TranscriptSink) -> tuple[RpcRelay, asyncio.Event]:
    durable = asyncio.Event()

    async def on_durable() -> None:
        durable.set()

    return RpcRelay(sink, structlog.get_logger(), lambda: None, on_durable), durable


def append(rpc_id: int, entries: list[dict[str, Any]], subpath: str | None = None) -> Rpc:
    key: dict[str, Any] = {"project_key": "whatever", "session_id": "whatever"}
    if subpath is not None:
        key["subpath"] = subpath
    return Rpc(rpc_id, "store.append", {"key": key, "entries": entries})


async def test_a_nul_in_runner_fields_neither_jams_the_session_nor_loses_later_entries(db: Database) -> None:
    store = SQLModelSessionStore(db)
    sink = TranscriptSink(cast(TranscriptStore, store), "tenant-a", "3b0c9a52-1111-4222-8333-444455556666")
    relay, _ = relay_for(sink)
    sandbox = FakeSandbox()
    box = cast(Sandbox, sandbox)
    await relay.answer(box, append(1, [{"type": "user", "uuid": "u-1\x00", "message": {"content": "a\x00b"}}]))
    await relay.answer(box, append(2, [{"type": "user", "uuid": "sub-1", "note": "x"}], subpath="agent\x00-1"))
    await relay.answer(box, append(3, [{"type": "assistant", "uuid": "u-2", "message": {"content": "later"}}]))
    assert [f["kind"] for f in sandbox.sent] == ["rpc_result"] * 3
    assert sink.durable and not relay.degraded, "nothing is held back"

    main = await store.load({"project_key": "tenant-a", "session_id": sink.session_id})
    assert main is not None
    assert [e["uuid"] for e in main] == ["u-1\ufffd", "u-2"]
    assert cast(dict[str, Any], main[0])["message"]["content"] == "a\ufffdb"
    sub = await store.load({"project_key": "tenant-a", "session_id": sink.session_id, "subpath": "agent\ufffd-1"})
    assert sub is not None and [e["uuid"] for e in sub] == ["sub-1"]
    # A retried batch (the runner's, after a lost answer) still deduplicates.
    await relay.answer(box, append(4, [{"type": "user", "uuid": "u-1\x00", "message": {"content": "a\x00b"}}]))
    again = await store.load({"project_key": "tenant-a", "session_id": sink.session_id})
    assert again is not None and len(again) == 2


class RefusingStore:
    """The real store, except that it refuses (while up) any batch holding a poisoned entry."""

    def __init__(self, store: SQLModelSessionStore) -> None:
        self.store = store
        self.refused = 0

    async def append(self, key: Any, entries: list[dict[str, Any]]) -> None:
        if any(e.get("poison") for e in entries):
            self.refused += 1
            raise ValueError("the database refuses this entry")
        await self.store.append(key, cast(Any, entries))


async def test_a_batch_the_database_keeps_refusing_is_dropped_and_the_session_goes_on(db: Database) -> None:
    store = RefusingStore(SQLModelSessionStore(db))
    sink = TranscriptSink(cast(TranscriptStore, store), "tenant-a", "3b0c9a52-1111-4222-8333-777755556666")
    relay, durable = relay_for(sink)
    sandbox = FakeSandbox()
    box = cast(Sandbox, sandbox)
    await relay.answer(box, append(1, [{"type": "user", "uuid": "bad", "poison": True}]))
    await relay.answer(box, append(2, [{"type": "user", "uuid": "good"}]))
    await asyncio.wait_for(durable.wait(), 30)
    assert store.refused == POISON_ATTEMPTS
    saved = await store.store.load({"project_key": "tenant-a", "session_id": sink.session_id})
    assert saved is not None and [e["uuid"] for e in saved] == ["good"]
    relay.cancel()


class AwayStore:
    """A store whose database is unreachable until ``back`` is set."""

    def __init__(self, store: SQLModelSessionStore) -> None:
        self.store = store
        self.back = False

    async def append(self, key: Any, entries: list[dict[str, Any]]) -> None:
        if not self.back:
            raise DatabaseUnavailable("the database is unavailable")
        await self.store.append(key, cast(Any, entries))


async def test_an_outage_never_drops_a_batch_however_long_it_lasts(db: Database) -> None:
    store = AwayStore(SQLModelSessionStore(db))
    sink = TranscriptSink(cast(TranscriptStore, store), "tenant-a", "3b0c9a52-1111-4222-8333-888855556666")
    await sink.handle("store.append", {"key": {}, "entries": [{"type": "user", "uuid": "kept"}]})
    for _ in range(POISON_ATTEMPTS * 5):
        assert await sink.flush() is False
    store.back = True
    assert await sink.flush() is True
    saved = await store.store.load({"project_key": "tenant-a", "session_id": sink.session_id})
    assert saved is not None and [e["uuid"] for e in saved] == ["kept"]
