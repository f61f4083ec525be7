"""Event log bench: what the durable, sequenced event log (``moorage.eventlog``) costs per turn.

Run: ``.venv/bin/python bench/bench_eventlog.py [--out bench/results_eventlog.json]``.

A turn is replayed as the session publishes it: the echo of the user's message, the CLI's
``system``/``init``, then ``--steps`` tool steps (an ``assistant`` frame with a tool call and
``--deltas`` ``stream_event`` deltas before it, then a ``user`` frame with the tool result), a final
``assistant`` and the ``result`` — frames shaped and sized like the CLI's. Frames are published
``--gap-ms`` apart (the CLI's own pace; 0 = all at once, the worst case for the log).

Two sides, in one run, interleaved turn by turn on the same event loop:

- "reference": no log, frames go straight to the fan-out (what the service did before the log);
- "log": ``EventLog`` over ``SessionEvents`` on a real database (SQLite file; PostgreSQL too when
  reachable at ``--postgres``).

Per turn: the time from publishing the ``result`` until a client would get it (the delay a turn
gains), the mean delay of every durable frame, and the database transactions (group commit
batches frames that arrive during a write). ``--turns`` turns per side; medians and p90.

Prints a table and writes JSON. Exits 0 whatever the figures; 1 only if the bench cannot run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from moorage.eventlog import EventLog
from moorage_session_store import Database, SessionEvents, SessionRecords

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


def turn_frames(n: int, steps: int, deltas: int) -> list[dict[str, Any]]:
    """One turn's frames, in the order a session publishes them."""
    text = "lorem ipsum dolor sit amet " * 8
    frames: list[dict[str, Any]] = [
        {"type": "user_message", "message": {"role": "user", "content": f"turn {n}: bash ls -la /workspace"}},
        {"type": "system", "subtype": "init", "cwd": "/workspace", "tools": ["Bash", "Read", "Write"] * 5},
    ]
    for step in range(steps):
        frames += [{"type": "stream_event", "event": {"delta": {"text": "x" * 20}}} for _ in range(deltas)]
        frames.append(
            {
                "type": "assistant",
                "uuid": str(uuid.uuid4()),
                "message": {"content": [{"type": "tool_use", "id": f"t{step}", "name": "Bash", "input": {"c": text}}]},
            }
        )
        content = [{"type": "tool_result", "tool_use_id": f"t{step}", "content": text * 4}]
        frames.append({"type": "user", "uuid": str(uuid.uuid4()), "message": {"content": content}})
    frames.append({"type": "assistant", "uuid": str(uuid.uuid4()), "message": {"content": [{"text": text}]}})
    frames.append({"type": "result", "subtype": "success", "result": text, "num_turns": steps + 1})
    return frames


class Side:
    """A session's publishing end: with the log, or the no-log reference (direct fan-out)."""

    def __init__(self, log: EventLog | None) -> None:
        self.log = log
        self.sent_at: dict[int, float] = {}
        self.got: dict[int, float] = {}
        self.result = asyncio.Event()

    def fanout(self, frame: dict[str, Any]) -> None:
        key = frame.get("_k")
        if isinstance(key, int):
            self.got[key] = time.perf_counter()
        if frame["type"] == "result":
            self.result.set()

    def publish(self, key: int, frame: dict[str, Any]) -> None:
        self.sent_at[key] = time.perf_counter()
        framed = {**frame, "_k": key}
        if self.log is None:
            self.fanout(framed)
        else:
            self.log.publish(framed)


async def run_turn(side: Side, frames: list[dict[str, Any]], gap_s: float) -> dict[str, float]:
    side.sent_at.clear()
    side.got.clear()
    side.result.clear()
    writes0 = side.log.writes if side.log else 0
    for key, frame in enumerate(frames):
        side.publish(key, frame)
        if gap_s:
            await asyncio.sleep(gap_s)
    await asyncio.wait_for(side.result.wait(), 30)
    durable = [k for k, f in enumerate(frames) if f["type"] not in ("stream_event",)]
    last = len(frames) - 1
    return {
        "result_delay_ms": (side.got[last] - side.sent_at[last]) * 1000,
        "mean_frame_delay_ms": statistics.fmean(side.got[k] - side.sent_at[k] for k in durable) * 1000,
        "writes": float((side.log.writes if side.log else 0) - writes0),
    }


async def run_backend(url: str, args: argparse.Namespace) -> dict[str, Any]:
    db = await Database.connect(url)
    try:
        await db.migrate()
        session_id = str(uuid.uuid4())
        await SessionRecords(db).create(session_id, "bench", {})
        logged = Side(None)
        log = EventLog(SessionEvents(db), session_id, logged.fanout, lambda e: print("log broke:", e.message))
        logged.log = log
        await log.open()
        reference = Side(None)
        samples: dict[str, list[dict[str, float]]] = {"reference": [], "log": []}
        for n in range(args.turns + 1):  # turn 0: unmeasured warm-up
            frames = turn_frames(n, args.steps, args.deltas)
            for name, side in (("reference", reference), ("log", logged)):
                sample = await run_turn(side, frames, args.gap_ms / 1000)
                if n:
                    samples[name].append(sample)
        stored = await SessionEvents(db).last_seq(session_id)
        await SessionRecords(db).delete(session_id)
        return {"samples": samples, "stored_events": stored, "summary": summarise(samples)}
    finally:
        await db.close()


def summarise(samples: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name, rows in samples.items():
        result = sorted(r["result_delay_ms"] for r in rows)
        out[name] = {
            "result_delay_ms_median": statistics.median(result),
            "result_delay_ms_p90": result[int(0.9 * (len(result) - 1))],
            "mean_frame_delay_ms_median": statistics.median(r["mean_frame_delay_ms"] for r in rows),
            "writes_per_turn_median": statistics.median(r["writes"] for r in rows),
        }
    return out


async def postgres_url(admin: str) -> tuple[str, str] | None:
    try:
        import asyncpg

        conn = await asyncio.wait_for(asyncpg.connect(admin.replace("postgresql://", "postgres://")), 3)
    except (OSError, TimeoutError, ImportError):
        return None
    name = f"moorage_bench_{uuid.uuid4().hex[:10]}"
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    return admin.rsplit("/", 1)[0] + "/" + name, name


async def drop_pg(admin: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin.replace("postgresql://", "postgres://"))
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.close()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("bench/results_eventlog.json"))
    parser.add_argument("--turns", type=int, default=50)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--deltas", type=int, default=10)
    parser.add_argument("--gap-ms", type=float, default=0.0)
    parser.add_argument("--postgres", default=os.environ.get("MOORAGE_BENCH_POSTGRES_URL", DEFAULT_PG))
    args = parser.parse_args()
    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "loadavg": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            results["sqlite"] = await run_backend(f"sqlite:///{Path(tmp) / 'bench.db'}", args)
            pg = await postgres_url(args.postgres)
            if pg is None:
                results["postgresql"] = {"skipped": "PostgreSQL not reachable"}
            else:
                try:
                    results["postgresql"] = await run_backend(pg[0], args)
                finally:
                    await drop_pg(args.postgres, pg[1])
        except Exception as exc:
            print(f"bench failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
    args.out.write_text(json.dumps(results, indent=1))
    frames = len(turn_frames(0, args.steps, args.deltas))
    print(
        f"event log per turn: {frames} frames ({args.steps} tool steps, {args.deltas} deltas each), "
        f"gap {args.gap_ms} ms"
    )
    print(f"{'backend':<11}{'side':<11}{'result delay ms (med/p90)':>27}{'mean frame delay ms':>21}{'writes/turn':>13}")
    for backend in ("sqlite", "postgresql"):
        summary = results[backend].get("summary")
        if summary is None:
            print(f"{backend:<11}skipped ({results[backend]['skipped']})")
            continue
        for side in ("reference", "log"):
            s = summary[side]
            delay = f"{s['result_delay_ms_median']:.2f} / {s['result_delay_ms_p90']:.2f}"
            print(
                f"{backend:<11}{side:<11}{delay:>27}{s['mean_frame_delay_ms_median']:>21.2f}"
                f"{s['writes_per_turn_median']:>13.0f}"
            )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
