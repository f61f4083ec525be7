"""Session store bench: append throughput and load latency of ``SQLModelSessionStore``.

Run: ``.venv/bin/python bench/bench_store.py [--out bench/results_store.json]``.

Each backend gets a database of its own: a SQLite file in a temp directory, and on PostgreSQL a
temp database ``moorage_bench_<hex>`` created next to ``--postgres`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``) and dropped afterwards. PostgreSQL is skipped
with a note when it cannot be reached.

(a) Append: ``--entries`` (default 20,000) entries in sequential batches of ``--batch`` (100), each
    batch one ``append`` call (one transaction), into one main transcript. Entries are shaped like
    Claude Code transcript lines (user/assistant messages with uuid, parentUuid, timestamp, cwd,
    gitBranch; ~500 bytes of JSON). Repeated ``--rounds`` (5) times, each round into a new session;
    the median round's entries/s is the figure (target on SQLite: >= 20,000/s). One unmeasured
    warm-up round of 10 batches runs first. A second figure spreads the same entries round-robin
    over 10 sessions, as a service with many concurrent sessions would.
    As a yardstick for the machine, plain synchronous sqlite3 inserting the same batches (INSERT +
    COMMIT only, same pragmas and indexes) is timed too; the ratio store / plain is reported.
(b) Load: one transcript of ``--load-entries`` (10,000) entries, loaded ``--rounds`` times;
    median and max milliseconds.

Prints a table and writes JSON (every sample, machine facts). Exits 0 whatever the figures; 1 only
if the bench itself cannot run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import socket
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from claude_agent_sdk.types import SessionKey, SessionStoreEntry
from hostprobe import write_report
from moorage_session_store import Database, SQLModelSessionStore
from moorage_session_store.database import async_url
from sqlalchemy.engine import make_url

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


def make_entries(count: int, session_id: str) -> list[SessionStoreEntry]:
    """Transcript-like lines of about 500 bytes each, alternating user and assistant turns."""
    entries: list[SessionStoreEntry] = []
    parent: str | None = None
    start = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
    for i in range(count):
        this = str(uuid.uuid4())
        stamp = (start + datetime.timedelta(seconds=i)).isoformat().replace("+00:00", "Z")
        base: dict[str, Any] = {
            "parentUuid": parent,
            "isSidechain": False,
            "userType": "external",
            "cwd": "/workspace/project",
            "sessionId": session_id,
            "version": "2.1.0",
            "gitBranch": "main",
            "uuid": this,
            "timestamp": stamp,
        }
        if i % 2 == 0:
            text = f"Please look at file src/module_{i}.py and explain what the function does. " * 2
            base |= {"type": "user", "message": {"role": "user", "content": text}}
        else:
            text = f"The function in module_{i} parses the configuration file and returns it as a dict."
            base |= {
                "type": "assistant",
                "requestId": f"req_{i:08d}",
                "message": {
                    "id": f"msg_{i:08d}",
                    "role": "assistant",
                    "model": "claude-sonnet-4-5",
                    "content": [{"type": "text", "text": text}],
                    "usage": {"input_tokens": 1200 + i, "output_tokens": 80},
                },
            }
        entries.append(base)  # type: ignore[arg-type]
        parent = this
    return entries


async def bench_append(store: SQLModelSessionStore, args: argparse.Namespace, sessions: int) -> list[float]:
    """Entries/s of each round (sequential appends of ``args.batch`` entries)."""
    rates: list[float] = []
    warm_key: SessionKey = {"project_key": "bench", "session_id": f"warmup-{sessions}"}
    for _ in range(10):
        await store.append(warm_key, make_entries(args.batch, warm_key["session_id"]))
    for r in range(args.rounds):
        keys: list[SessionKey] = [
            {"project_key": "bench", "session_id": f"append-{sessions}-{r}-{s}"} for s in range(sessions)
        ]
        batches = [
            (keys[b % sessions], make_entries(args.batch, keys[b % sessions]["session_id"]))
            for b in range(args.entries // args.batch)
        ]
        started = time.perf_counter()
        for key, batch in batches:
            await store.append(key, batch)
        rates.append(len(batches) * args.batch / (time.perf_counter() - started))
    return rates


async def bench_load(store: SQLModelSessionStore, args: argparse.Namespace) -> list[float]:
    """Milliseconds per ``load`` of one ``args.load_entries``-entry transcript."""
    key: SessionKey = {"project_key": "bench", "session_id": "load"}
    entries = make_entries(args.load_entries, key["session_id"])
    for i in range(0, len(entries), args.batch):
        await store.append(key, entries[i : i + args.batch])
    samples: list[float] = []
    for _ in range(args.rounds):
        started = time.perf_counter()
        loaded = await store.load(key)
        samples.append((time.perf_counter() - started) * 1000)
        assert loaded is not None and len(loaded) == len(entries)
    return samples


async def run_backend(url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Both measurements on one fresh database."""
    db = await Database.connect(url)
    try:
        await db.migrate()
        store = SQLModelSessionStore(db)
        one = await bench_append(store, args, sessions=1)
        ten = await bench_append(store, args, sessions=10)
        load = await bench_load(store, args)
    finally:
        await db.close()
    return {
        "append_entries_per_s": _summary(one),
        "append_10_sessions_entries_per_s": _summary(ten),
        "load_ms": {
            "median": round(statistics.median(load), 1),
            "max": round(max(load), 1),
            "samples": [round(x, 1) for x in load],
        },
    }


def sqlite_floor(path: Path, args: argparse.Namespace) -> list[float]:
    """Machine yardstick: entries/s of plain synchronous sqlite3 doing only the batch INSERT + COMMIT.

    Same entries, pragmas and entry indexes as the store, no key row, no summary, no event loop. The
    store's figure divided by this one says how much of the machine's SQLite speed the store gets;
    it moves far less with the host's speed than either number alone.
    """
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for pragma in ("page_size=16384", "journal_mode=WAL", "synchronous=NORMAL", "wal_autocheckpoint=4000"):
            conn.execute(f"PRAGMA {pragma}")
        conn.execute("CREATE TABLE e (id INTEGER PRIMARY KEY, key_id INTEGER NOT NULL, uuid VARCHAR, entry JSON)")
        conn.execute("CREATE INDEX e_order ON e (key_id, id)")
        conn.execute("CREATE UNIQUE INDEX e_uuid ON e (key_id, uuid) WHERE uuid IS NOT NULL")
        rates: list[float] = []
        for r in range(args.rounds):
            batches = [make_entries(args.batch, "floor") for _ in range(args.entries // args.batch)]
            started = time.perf_counter()
            for batch in batches:
                conn.execute("BEGIN")
                conn.executemany(
                    "INSERT INTO e (key_id, uuid, entry) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                    [(r, e["uuid"], json.dumps(e)) for e in batch],
                )
                conn.execute("COMMIT")
            rates.append(len(batches) * args.batch / (time.perf_counter() - started))
        return rates
    finally:
        conn.close()


def _summary(rates: list[float]) -> dict[str, Any]:
    return {"median": round(statistics.median(rates)), "best": round(max(rates)), "samples": [round(x) for x in rates]}


def reachable(url: str) -> bool:
    """Whether something listens at the URL's host:port (a quick TCP connect)."""
    parsed = make_url(url)
    try:
        with socket.create_connection((parsed.host or "localhost", parsed.port or 5432), timeout=2):
            return True
    except OSError:
        return False


async def run_postgres(admin_url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Create a temp database next to ``admin_url``, bench it, drop it."""
    import asyncpg

    admin = make_url(admin_url)
    name = f"moorage_bench_{uuid.uuid4().hex[:12]}"
    dsn = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        try:
            return await run_backend(async_url(admin.set(database=name)).render_as_string(hide_password=False), args)
        finally:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def print_table(results: dict[str, Any]) -> None:
    """One line per backend."""
    print(f"{'backend':<12}{'append/s (1 session)':>22}{'append/s (10 sessions)':>24}{'load 10k (ms)':>16}")
    floor = results.get("sqlite", {}).get("plain_sqlite3_insert_entries_per_s")
    for name, res in results.items():
        if "skipped" in res:
            print(f"{name:<12}  skipped: {res['skipped']}")
            continue
        print(
            f"{name:<12}{res['append_entries_per_s']['median']:>22,}"
            f"{res['append_10_sessions_entries_per_s']['median']:>24,}{res['load_ms']['median']:>16}"
        )
    if floor:
        print(f"{'(yardstick)':<12}{floor['median']:>22,}  plain sqlite3 INSERT+COMMIT of the same batches, no store")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("bench/results_store.json"))
    parser.add_argument("--entries", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--load-entries", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--postgres", default=os.environ.get("MOORAGE_BENCH_POSTGRES_URL", DEFAULT_PG))
    args = parser.parse_args()

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["sqlite"] = await run_backend(f"sqlite:///{tmp}/bench.db", args)
        floor = sqlite_floor(Path(tmp) / "floor.db", args)
        results["sqlite"]["plain_sqlite3_insert_entries_per_s"] = _summary(floor)
        results["sqlite"]["store_vs_plain_sqlite3"] = round(
            results["sqlite"]["append_entries_per_s"]["median"] / statistics.median(floor), 2
        )
    if reachable(args.postgres):
        results["postgresql"] = await run_postgres(args.postgres, args)
    else:
        results["postgresql"] = {
            "skipped": f"{make_url(args.postgres).host}:{make_url(args.postgres).port} unreachable"
        }

    print_table(results)
    report = {
        "schema": 1,
        "machine": {
            "nproc": os.cpu_count(),
            "loadavg_1m": round(os.getloadavg()[0], 2),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        },
        "config": {
            "entries": args.entries,
            "batch": args.batch,
            "load_entries": args.load_entries,
            "rounds": args.rounds,
            "mean_entry_bytes": round(statistics.mean(len(json.dumps(e)) for e in make_entries(100, "x" * 36))),
        },
        "results": results,
    }
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
