"""``make bench``: what serving a session from another replica costs (issue 16), each figure beside
a reference measured in the same run.

Run: ``.venv/bin/python bench/bench_replicas.py [--out bench/results-replicas.json]``; needs
PostgreSQL at 127.0.0.1:5432 (tests/support.py), about a minute.

Two service processes, replicas A and B, on one fresh PostgreSQL database, the scripted model, the
official ``anthropic`` client (``AsyncAnthropic``, open mode). One session, made on A: it runs on A
(its owner) for the whole run.

1. **Commands.** ``POST /v1/sessions/{id}/events`` with ``[{"type": "user.interrupt"}]`` while no
   turn runs: applied at once and nothing logged, so its latency is the routing alone. Sent to A
   (reference: served in place) and to B (written to ``session_commands``, claimed and applied by
   A on ``NOTIFY``, answered the same way), ``--commands`` each, interleaved (the order flips every
   round), after one unmeasured round each.
2. **Events.** Event streams open on A and on B, each read by its own task so neither waits on the
   other; ``--turns`` turns ``say x<i>`` sent to A (after one unmeasured turn). Per turn, the time
   from just before the ``POST`` until that turn's ``user.message`` arrives on A's stream
   (reference: the owner's stream is fed in process) and on B's (woken by ``NOTIFY``, then a
   database read). The next turn starts once both streams have shown ``session.status_idle``.
3. **Notify throughput**, store level, no service: two ``Database`` objects on one more fresh
   PostgreSQL database; ``--writers`` concurrent writers, each on its own session, append
   single-event batches (``SessionEvents.append``, which sends ``NOTIFY`` in its transaction) as
   fast as they can. With a listener (``moorage.notify.Notifications`` on the other ``Database``,
   on ``EVENTS_CHANNEL``) and without (reference: the writer's rate when nobody listens; the
   store sends ``NOTIFY`` either way), in ``--seconds`` per side, eight windows ordered ABBAABBA. Reported: appends/s,
   notifications/s received, and each notification's delay from its append's return (the commit,
   seen by the writer) to its arrival, beside the append's own duration. Writers and listener
   share one event loop, as in a replica, so a delay can come out slightly negative: the
   notification was read before the writer's ``await`` resumed.

Each measured request of parts 1 and 2 follows ``--pause-ms`` of quiet on its connection (default
100; 0 sends back to back). Written when a request right after the previous answer on a kept-alive
connection came ~40 ms late (Nagle: the listener left ``TCP_NODELAY`` off, fixed in
``server.no_delay``); the pause keeps each request's figure its own.

Latencies: p50 and p95 (p99 for notification delays), in ms. The host's load average is recorded
at the start of each part and at the end. Prints one table and writes JSON. Nothing is judged
here: exits 0 whatever the figures, 1 only if the bench cannot run. Services are stopped and both
databases dropped on the way out, whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anthropic
import hostprobe
import structlog
from bench_sse import OPEN_TOKEN, HttpApi, failed, is_idle, user_event
from moorage.notify import Notifications
from moorage.testing.scripted_model import ScriptedModelServer
from moorage_session_store import Database, SessionEvents, SessionRecords
from moorage_session_store.events import EVENTS_CHANNEL, NewEvent

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support import Service, pg_database, run_service

PG_URL = "postgresql://postgres@127.0.0.1:5432/{}"
WAIT_S = 60.0  # bound on any one wait for the service (a turn, an event)
INTERRUPT: Any = {"type": "user.interrupt"}


class BenchError(Exception):
    """The bench cannot go on (a refused request, a failed turn, a wait that timed out)."""


def summary(samples_ms: list[float]) -> dict[str, float]:
    """Count, p50, p95, p99 (inclusive interpolation), min and max of samples in ms."""
    ordered = sorted(samples_ms)
    cuts = statistics.quantiles(ordered, n=100, method="inclusive") if len(ordered) > 1 else [ordered[0]] * 99
    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered), 3),
        "p95_ms": round(cuts[94], 3),
        "p99_ms": round(cuts[98], 3),
        "min_ms": round(ordered[0], 3),
        "max_ms": round(ordered[-1], 3),
    }


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# -- the two replicas ---------------------------------------------------------------------------


def replica_env(database: str, uid_base: int, warm: int) -> dict[str, str]:
    """``run_service`` overrides: the shared database, own sandbox uids, info logs."""
    return {
        "MOORAGE_DATABASE_URL": PG_URL.format(database),
        "MOORAGE_WARM_SANDBOXES": str(warm),
        "MOORAGE_LOG_LEVEL": "info",
        "MOORAGE_SANDBOX_UID_BASE": str(uid_base),
        "MOORAGE_SANDBOX_UID_COUNT": "100",
    }


@contextlib.contextmanager
def replicas(model: ScriptedModelServer) -> Iterator[tuple[Service, Service]]:
    """A and B on a fresh database; both stopped, their state dirs removed, the database dropped."""
    with ExitStack() as stack:
        database = stack.enter_context(pg_database("_bench_replicas"))
        services = []
        # A runs the session (one warm sandbox); B never starts one.
        for uid_base, warm in ((400_000, 1), (400_100, 0)):
            service = stack.enter_context(run_service(model.url, **replica_env(database, uid_base, warm)))
            stack.callback(shutil.rmtree, service.state_dir, True)
            services.append(service)
        yield services[0], services[1]


@dataclass
class Stream:
    """An event stream of the session on one replica, read by its own task: each event with the
    ``perf_counter`` at which the client yielded it."""

    name: str
    arrived: asyncio.Queue[tuple[float, dict[str, Any]]] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None

    async def open(self, client: anthropic.AsyncAnthropic, session_id: str) -> None:
        # The call returns once the service has sent the status line: the stream is open.
        stream = await client.beta.sessions.events.stream(session_id)
        self.task = asyncio.create_task(self._read(stream), name=f"stream-{self.name}")

    async def _read(self, stream: Any) -> None:
        try:
            async for event in stream:
                await self.arrived.put((time.perf_counter(), event.to_dict(mode="json")))
        finally:
            with contextlib.suppress(Exception):
                await stream.close()

    async def until(self, what: str, match: Any) -> float:
        """The arrival time of the first event for which ``match`` holds; a failed turn or
        ``WAIT_S`` without it is a :class:`BenchError`."""

        async def scan() -> float:
            while True:
                at, event = await self.arrived.get()
                if failed(event):
                    raise BenchError(f"stream on {self.name}: turn failed: {json.dumps(event)[:300]}")
                if match(event):
                    return at

        try:
            return await asyncio.wait_for(scan(), WAIT_S)
        except TimeoutError:
            raise BenchError(f"stream on {self.name}: no {what} within {WAIT_S:g}s") from None

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.wait([self.task])


def says(text: str) -> Any:
    def match(event: dict[str, Any]) -> bool:
        content = event.get("content") or []
        return event.get("type") == "user.message" and any(b.get("text") == text for b in content)

    return match


async def timed_interrupt(client: anthropic.AsyncAnthropic, session_id: str) -> float:
    t0 = time.perf_counter()
    await client.beta.sessions.events.send(session_id, events=[INTERRUPT])
    return (time.perf_counter() - t0) * 1000


async def measure_commands(
    a: anthropic.AsyncAnthropic, b: anthropic.AsyncAnthropic, session_id: str, n: int, pause_s: float
) -> dict[str, Any]:
    """Part 1: interrupts to A and to B, interleaved, the order flipped every round."""
    load_at_start = load()
    samples: dict[str, list[float]] = {"to_a": [], "to_b": []}
    for round_ in range(n + 1):  # round 0: unmeasured warm-up
        order = [("to_a", a), ("to_b", b)]
        for name, client in order if round_ % 2 else order[::-1]:
            await asyncio.sleep(pause_s)
            ms = await timed_interrupt(client, session_id)
            if round_:
                samples[name].append(ms)
    return {"load_at_start": load_at_start, "samples_ms": samples}


async def measure_events(
    a: anthropic.AsyncAnthropic, on_a: Stream, on_b: Stream, session_id: str, turns: int, pause_s: float
) -> dict[str, Any]:
    """Part 2: turns sent to A; when each one's ``user.message`` reaches A's and B's streams."""
    load_at_start = load()
    samples: dict[str, list[float]] = {"post_answered": [], "stream_a": [], "stream_b": []}
    for i in range(turns + 1):  # turn 0: unmeasured warm-up
        text = f"say x{i}"
        await asyncio.sleep(pause_s)
        t0 = time.perf_counter()
        await a.beta.sessions.events.send(session_id, events=[user_event(text)])
        answered = time.perf_counter()
        at_a, at_b = await asyncio.gather(
            on_a.until(f"user.message {text}", says(text)), on_b.until(f"user.message {text}", says(text))
        )
        await asyncio.gather(on_a.until("session.status_idle", is_idle), on_b.until("session.status_idle", is_idle))
        if i:
            samples["post_answered"].append((answered - t0) * 1000)
            samples["stream_a"].append((at_a - t0) * 1000)
            samples["stream_b"].append((at_b - t0) * 1000)
    return {"load_at_start": load_at_start, "samples_ms": samples}


async def measure_service_parts(args: argparse.Namespace) -> dict[str, Any]:
    """Parts 1 and 2, on two replicas."""
    pause_s = args.pause_ms / 1000
    model = ScriptedModelServer().start()
    try:
        with replicas(model) as (service_a, service_b):
            api = await HttpApi.open(service_a.url)
            b = anthropic.AsyncAnthropic(base_url=service_b.url, api_key=OPEN_TOKEN, max_retries=0)
            on_a, on_b = Stream("A"), Stream("B")
            try:
                session = await api.client.beta.sessions.create(agent=api.agent_id, environment_id=api.environment_id)
                await on_a.open(api.client, session.id)
                await on_b.open(b, session.id)
                events = await measure_events(api.client, on_a, on_b, session.id, args.turns, pause_s)
                await on_a.close()  # nothing is logged from here on: no stream to wake
                await on_b.close()
                commands = await measure_commands(api.client, b, session.id, args.commands, pause_s)
            finally:
                await on_a.close()
                await on_b.close()
                await b.close()
                await api.close()
    finally:
        model.stop()
    return {"commands": commands, "events": events}


# -- notify throughput (store level) ------------------------------------------------------------


@dataclass
class Window:
    """One timed window of appends, with or without a listener."""

    listener: bool
    seconds: float
    appends: int = 0
    append_ms: list[float] = field(default_factory=list)
    returned: dict[tuple[str, int], float] = field(default_factory=dict)
    arrived: dict[tuple[str, int], float] = field(default_factory=dict)
    expected: int | None = None  # once the writers are done: their appends
    all_arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def notified(self, payload: str) -> None:
        session_id, seq = payload.split(" ")
        self.arrived[(session_id, int(seq))] = time.perf_counter()
        self.check()

    def check(self) -> None:
        if self.expected is not None and len(self.arrived) >= self.expected:
            self.all_arrived.set()


async def writer(events: SessionEvents, session_id: str, first_seq: int, until: float, window: Window) -> int:
    """Append one-event batches to ``session_id`` until ``until``; the next seq to use."""
    seq = first_seq
    while time.perf_counter() < until:
        event = NewEvent(seq, "bench", {"n": seq}, datetime.now(UTC))
        t0 = time.perf_counter()
        await events.append(session_id, [event])
        done = time.perf_counter()
        window.append_ms.append((done - t0) * 1000)
        window.returned[(session_id, seq)] = done
        window.appends += 1
        seq += 1
    return seq


async def run_window(
    writing: Database, listening: Database, sessions: dict[str, int], window: Window
) -> dict[str, Any]:
    """Append for ``window.seconds`` from one writer per session (``sessions``: each one's next
    seq, advanced here); with a listener, wait (bounded) for the last notifications."""
    listener = Notifications(listening, {EVENTS_CHANNEL: window.notified}) if window.listener else None
    if listener is not None:
        await listener.start()
        if not listener.connected:
            raise BenchError("the listener could not connect")
    try:
        load_at_start = load()
        until = time.perf_counter() + window.seconds
        events = SessionEvents(writing)
        ids = list(sessions)
        next_seqs = await asyncio.gather(*(writer(events, sid, sessions[sid], until, window) for sid in ids))
        sessions.update(zip(ids, next_seqs, strict=True))
        elapsed = window.seconds + max(0.0, time.perf_counter() - until)
        if listener is not None:
            window.expected = window.appends
            window.check()
            with contextlib.suppress(TimeoutError):  # what is missing is reported, not waited for
                await asyncio.wait_for(window.all_arrived.wait(), 5)
    finally:
        if listener is not None:
            await listener.close()
    delays = [(at - window.returned[key]) * 1000 for key, at in window.arrived.items() if key in window.returned]
    return {
        "listener": window.listener,
        "load_at_start": load_at_start,
        "seconds": round(elapsed, 3),
        "appends": window.appends,
        "notifications": len(window.arrived),
        "append_ms": window.append_ms,
        "delay_ms": delays,
    }


async def measure_notify(args: argparse.Namespace) -> dict[str, Any]:
    """Part 3: appends/s with and without a listener, ABBAABBA; notifications/s and their delay."""
    with pg_database("_bench_notify") as name:
        writing = await Database.connect(PG_URL.format(name))
        listening = await Database.connect(PG_URL.format(name))
        try:
            await writing.migrate()
            sessions: dict[str, int] = {}
            for _ in range(args.writers):
                sid = str(uuid.uuid4())
                await SessionRecords(writing).create(sid, "bench", {})
                sessions[sid] = 1
            warm = Window(listener=True, seconds=0.5)  # unmeasured: connections, statement caches
            await run_window(writing, listening, sessions, warm)
            windows = []
            for listener in (False, True, True, False) * 2:  # ABBA twice: drift in the load cancels out
                windows.append(await run_window(writing, listening, sessions, Window(listener, args.seconds / 4)))
        finally:
            await writing.close()
            await listening.close()
    return {"windows": windows}


def notify_sides(windows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The windows of each side pooled: rates over their summed time, latencies over all samples."""
    sides: dict[str, dict[str, Any]] = {}
    for name, listener in (("no_listener", False), ("listener", True)):
        mine = [w for w in windows if w["listener"] is listener]
        seconds = sum(w["seconds"] for w in mine)
        side: dict[str, Any] = {
            "seconds": round(seconds, 3),
            "appends": sum(w["appends"] for w in mine),
            "appends_per_s": round(sum(w["appends"] for w in mine) / seconds, 1),
            "append": summary([ms for w in mine for ms in w["append_ms"]]),
        }
        if listener:
            side["notifications"] = sum(w["notifications"] for w in mine)
            side["notifications_per_s"] = round(side["notifications"] / seconds, 1)
            side["delay"] = summary([ms for w in mine for ms in w["delay_ms"]])
        sides[name] = side
    return sides


# -- report ---------------------------------------------------------------------------------------


def table(results: dict[str, Any]) -> list[str]:
    """One table: each figure, its reference from the same run, and the difference."""
    cmd, ev, nt = results["summary"]["commands"], results["summary"]["events"], results["summary"]["notify"]
    rows: list[tuple[str, str, float, str, float, str]] = []

    def latency(label: str, ref_name: str, ref: dict[str, float], name: str, got: dict[str, float]) -> None:
        for q in ("p50_ms", "p95_ms"):
            rows.append((f"{label}, {q[:3]} ms", ref_name, ref[q], name, got[q], f"{got[q] - ref[q]:+.2f} ms"))

    latency("1 interrupt POST answered", "to A (owner)", cmd["to_a"], "to B (via A)", cmd["to_b"])
    latency("2 user.message on a stream", "A's stream", ev["stream_a"], "B's stream", ev["stream_b"])
    rows.append(
        (
            f"3 appends/s, {results['args']['writers']} writers",
            "no listener",
            nt["no_listener"]["appends_per_s"],
            "listener",
            nt["listener"]["appends_per_s"],
            f"{nt['listener']['appends_per_s'] / nt['no_listener']['appends_per_s'] - 1:+.1%}",
        )
    )
    got = nt["listener"]
    rows.append(
        (
            "3 notifications/s received",
            "appends/s",
            got["appends_per_s"],
            "received/s",
            got["notifications_per_s"],
            f"{got['notifications']}/{got['appends']} arrived",
        )
    )
    for q in ("p50_ms", "p99_ms"):
        rows.append(
            (
                f"3 notification delay, {q[:3]} ms",
                "append itself",
                got["append"][q],
                "commit→arrival",
                got["delay"][q],
                "",
            )
        )
    lines = [f"{'':34}{'reference':>16}{'':>10}{'measured':>18}{'':>10}{'difference':>22}"]
    for label, ref_name, ref, name, value, diff in rows:
        lines.append(f"{label:34}{ref_name:>16}{ref:>10.2f}{name:>18}{value:>10.2f}{diff:>22}")
    return lines


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    commands = results["commands"]["samples_ms"]
    events = results["events"]["samples_ms"]
    return {
        "commands": {name: summary(v) for name, v in commands.items()},
        "events": {name: summary(v) for name, v in events.items()},
        "notify": notify_sides(results["notify"]["windows"]),
    }


async def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results-replicas.json"))
    parser.add_argument("--commands", type=int, default=60, help="interrupts sent to each replica")
    parser.add_argument("--turns", type=int, default=25, help="measured turns")
    parser.add_argument(
        "--pause-ms", type=float, default=100.0, help="quiet time before each measured request (module doc)"
    )
    parser.add_argument("--writers", type=int, default=8, help="concurrent appenders, one session each")
    parser.add_argument("--seconds", type=float, default=5.0, help="appending time per side")
    args = parser.parse_args()
    # The listener's own log lines (notify_listening) would break up the table.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    load_at_start = os.getloadavg()
    results: dict[str, Any] = {"args": vars(args) | {"out": str(args.out)}}
    try:
        results |= await measure_service_parts(args)
        results["notify"] = {"load_at_start": load(), **await measure_notify(args)}
    except Exception as exc:
        print(f"bench failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    results["machine"] = hostprobe.machine(load_at_start)
    results["summary"] = summarise(results)
    args.out.write_text(json.dumps(results, indent=1))
    m = results["machine"]
    print(
        f"replicas: two services on one PostgreSQL, {m['nproc']} cpus, load {m['loadavg_at_start']} at start, "
        f"{m['loadavg_at_end']} at end; {args.commands} interrupts and {args.turns} turns per side"
    )
    print("\n".join(table(results)))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
