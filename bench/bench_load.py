"""``make bench`` part 4: load — many concurrent WebSocket clients through real sandboxes.

The service runs as a process (``tests/support.run_service``: local bubblewrap
sandboxes, SQLite) against the scripted model (its own process, answers at
once). ``--clients`` clients start over ``--concurrency-ramp`` seconds; each
opens a session, runs ``--turns`` turns (``say …``; turn 2 is a Bash tool call
unless ``--no-bash``) and closes. A turn's latency runs from sending the user
frame to its ``result`` frame; the first turn also pays for the sandbox start
(unless a warm one was ready), so it is reported apart.

Past ``--max-sessions`` live sessions the service refuses a new one with
``too_many_sessions`` (close 1013); a client then backs off (jittered,
exponential, 0.5 s up to 8 s) and tries again. Those refusals are counted
apart from errors: they are the service protecting the node, not failing.
The service also starts at most ``MOORAGE_MAX_STARTING_SANDBOXES`` sandboxes
at once, so a burst of clients is admitted at the rate the node can start
sandboxes; with ``--hold`` every client keeps its session until all are done,
so all sessions are live at once (memory at full concurrency).

While the clients run, a sampler reads /proc once a second: the service's RSS,
the summed RSS (and, every fifth sample, PSS) of the sandbox processes, free
memory and load; it also notes every process, cgroup and egress socket
directory the service's sandboxes use. After the clients finish and every
session was suspended, the service's peak RSS (VmHWM) is read and it is
stopped; then the bench checks nothing is left: no process of the sandbox
uids, none of the sandbox processes it saw (bwrap included), no per-sandbox
cgroup, no egress socket directory, and every session suspended in the
database.

Writes ``--out`` (default bench/results_load.json) and prints a summary.
Exits 0 whatever the figures, 1 when the bench cannot run or something was
left behind.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hostprobe
import websockets
from moorage_session_store import Database
from moorage_session_store.records import SessionRecords
from sandbox_watch import Seen, leftovers, sampler

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support import Service, free_port, run_service

# Sandbox host uids apart from other services and benches on this host.
UID_BASE = 390_000
UID_COUNT = 400
IDLE_TIMEOUT_S = 2.0
OPEN_TIMEOUT_S = 180.0  # the service may queue a new session for its start timeout (60 s)
TURN_TIMEOUT_S = 300.0
RETRY_FOR_S = 900.0  # a refused client keeps trying this long
BACKOFF_S = (0.5, 8.0)


def user(text: str) -> str:
    return json.dumps({"type": "user", "message": {"role": "user", "content": text}})


@dataclass
class ClientRun:
    index: int
    session_id: str = ""
    refusals: int = 0  # too_many_sessions, retried
    waited_s: float = 0.0  # connect -> session frame, retries included
    turns: list[tuple[str, float]] = field(default_factory=list)  # (kind, seconds)
    errors: list[str] = field(default_factory=list)
    completed: bool = False


def turn_prompt(client: int, turn: int, bash: bool) -> tuple[str, str]:
    if bash and turn == 1:
        return "bash", f"bash echo load-{client}-{turn}"
    return ("first" if turn == 0 else "text"), f"say turn {turn} of client {client}"


async def open_session(url: str, run: ClientRun) -> websockets.ClientConnection | None:
    """A WebSocket whose session frame arrived; None (and the error noted) if none."""
    t0 = time.perf_counter()
    backoff = BACKOFF_S[0]
    while True:
        try:
            ws = await websockets.connect(url, max_size=None, open_timeout=OPEN_TIMEOUT_S)
        except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
            run.errors.append(f"connect:{type(exc).__name__}")
            return None
        try:
            first = json.loads(await asyncio.wait_for(ws.recv(), OPEN_TIMEOUT_S))
        except (TimeoutError, websockets.ConnectionClosed) as exc:
            run.errors.append(f"open:{type(exc).__name__}")
            await ws.close()
            return None
        if first.get("type") == "session":
            run.session_id = str(first["session_id"])
            run.waited_s = time.perf_counter() - t0
            return ws
        await ws.close()
        code = str(first.get("code", first.get("type")))
        if code != "too_many_sessions" or time.perf_counter() - t0 > RETRY_FOR_S:
            run.errors.append(code)
            return None
        run.refusals += 1
        await asyncio.sleep(random.uniform(backoff / 2, backoff))
        backoff = min(backoff * 2, BACKOFF_S[1])


async def one_turn(ws: websockets.ClientConnection, prompt: str) -> str | None:
    """Send a turn, read to its result; None on success, else what went wrong."""
    await ws.send(user(prompt))
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), TURN_TIMEOUT_S))
        kind = frame.get("type")
        if kind == "error":
            return str(frame.get("code"))
        if kind == "result":
            return f"result_{frame.get('subtype')}" if frame.get("is_error") else None


@dataclass
class Hold:
    """With ``--hold``, a client keeps its session open until every client is done."""

    enabled: bool
    left: int
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def finished(self) -> None:
        self.left -= 1
        if self.left <= 0:
            self.done.set()


async def client(url: str, run: ClientRun, turns: int, bash: bool, start_at: float, hold: Hold) -> None:
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    ws = await open_session(url, run)
    if ws is None:
        hold.finished()
        return
    try:
        for turn in range(turns):
            kind, prompt = turn_prompt(run.index, turn, bash)
            t0 = time.perf_counter()
            try:
                problem = await one_turn(ws, prompt)
            except TimeoutError:
                problem = "turn_timeout_client"
            except websockets.ConnectionClosed as exc:
                problem = f"closed_{exc.rcvd.code if exc.rcvd else 'abnormal'}"
            if problem is not None:
                run.errors.append(problem)
                if problem.startswith("closed_") or problem == "turn_timeout_client":
                    return
                continue
            run.turns.append((kind, time.perf_counter() - t0))
        run.completed = True
    finally:
        hold.finished()
        if hold.enabled:  # every client's turns are bounded, so this wait is too
            await hold.done.wait()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), 10)


# -- figures -------------------------------------------------------------------


def summary(samples: list[float]) -> dict[str, float] | None:
    if not samples:
        return None
    ordered = sorted(samples)
    cuts = statistics.quantiles(ordered, n=100, method="inclusive") if len(ordered) > 1 else [ordered[0]] * 99
    return {
        "n": len(ordered),
        "p50_ms": round(cuts[49] * 1000, 1),
        "p90_ms": round(cuts[89] * 1000, 1),
        "p99_ms": round(cuts[98] * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


def metric_lines(service: Service, prefixes: tuple[str, ...]) -> list[str]:
    with urllib.request.urlopen(service.url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return [line for line in text.splitlines() if line.startswith(prefixes) and not line.endswith(" 0.0")]


async def wait_suspended(service: Service, ids: set[str], limit_s: float) -> set[str]:
    """Of ``ids``, those whose session_suspended was not logged within ``limit_s``."""
    deadline = time.monotonic() + limit_s
    while True:
        records = await asyncio.to_thread(hostprobe.log_records, service.log_path)
        left = ids - {str(r.get("session_id")) for r in records if r.get("event") == "session_suspended"}
        if not left or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.5)


async def database_states(state_dir: Path) -> dict[str, str]:
    db = await Database.connect(f"sqlite:///{state_dir / 'moorage.db'}")
    try:
        return {r.id: r.state for r in await SessionRecords(db).list()}
    finally:
        await db.close()


def start_model() -> tuple[subprocess.Popen[bytes], str]:
    """The scripted model in a process of its own, off the clients' event loop."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moorage.testing.scripted_model", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return proc, f"http://127.0.0.1:{port}"
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the scripted model did not start")
        time.sleep(0.05)


def service_env(args: argparse.Namespace) -> dict[str, str]:
    return {
        "MOORAGE_SANDBOX_UID_BASE": str(UID_BASE),
        "MOORAGE_SANDBOX_UID_COUNT": str(UID_COUNT),
        "MOORAGE_IDLE_TIMEOUT_S": str(IDLE_TIMEOUT_S),
        "MOORAGE_MAX_TURNS": "50",
        "MOORAGE_LOG_LEVEL": "info",
        "MOORAGE_WARM_SANDBOXES": str(args.warm),
        "MOORAGE_MAX_SESSIONS_PER_NODE": str(args.max_sessions),
        # One tenant runs every client: its own caps must not be what binds.
        "MOORAGE_MAX_SESSIONS_PER_TENANT": str(args.max_sessions),
        "MOORAGE_TURNS_PER_MINUTE_PER_TENANT": "1000000",
    }


async def drive(args: argparse.Namespace, service: Service) -> dict[str, Any]:
    uids = range(UID_BASE, UID_BASE + UID_COUNT)
    seen, stop = Seen(), asyncio.Event()
    sampling = asyncio.create_task(sampler(service.proc.pid, uids, seen, stop))
    runs = [ClientRun(i) for i in range(args.clients)]
    url = service.ws_url + "/v1/sessions"
    t0 = time.monotonic()
    step = args.concurrency_ramp / max(1, args.clients - 1) if args.clients > 1 else 0.0
    hold = Hold(args.hold, args.clients)
    await asyncio.gather(
        *(client(url, r, args.turns, not args.no_bash, t0 + i * step, hold) for i, r in enumerate(runs))
    )
    wall_s = time.monotonic() - t0
    ids = {r.session_id for r in runs if r.session_id}
    not_suspended = await wait_suspended(service, ids, IDLE_TIMEOUT_S + 120)
    stop.set()
    await sampling
    idle = {
        "sandbox_processes_of_service": len(hostprobe.descendants(service.proc.pid, hostprobe.processes())),
        "egress_sockets": sum(len(list(d.glob("*.sock"))) for d in seen.socket_dirs if d.exists()),
        "warm_sandboxes": args.warm,
    }
    return {
        "runs": runs,
        "seen": seen,
        "wall_s": wall_s,
        "not_suspended": sorted(not_suspended),
        "idle": idle,
        "service_vmhwm_kb": hostprobe.status_kb(service.proc.pid, "VmHWM"),
        "metrics": await asyncio.to_thread(
            metric_lines, service, ("moorage_errors_total", "moorage_turns_total", "moorage_sandbox_start_seconds_")
        ),
    }


def report(args: argparse.Namespace, load0: tuple[float, float, float], out: dict[str, Any]) -> dict[str, Any]:
    runs: list[ClientRun] = out["runs"]
    seen: Seen = out["seen"]
    by_kind: dict[str, list[float]] = collections.defaultdict(list)
    for r in runs:
        for kind, seconds in r.turns:
            by_kind[kind].append(seconds)
    errors = collections.Counter(e for r in runs for e in r.errors)
    samples = seen.samples
    peak = max(samples, key=lambda s: s["sandbox_rss_kb"]) if samples else {}
    return {
        "schema": 1,
        "machine": hostprobe.machine(load0),
        "config": {
            "clients": args.clients,
            "turns": args.turns,
            "concurrency_ramp_s": args.concurrency_ramp,
            "bash_turn": not args.no_bash,
            "hold": args.hold,
            "max_sessions_per_node": args.max_sessions,
            "warm_sandboxes": args.warm,
            "idle_timeout_s": IDLE_TIMEOUT_S,
            "backend": "local",
            "database": "sqlite",
        },
        "outcome": {
            "sessions_completed": sum(r.completed for r in runs),
            "turns_ok": sum(len(r.turns) for r in runs),
            "turns_expected": args.clients * args.turns,
            "errors": sum(errors.values()),
            "errors_by_code": dict(errors),
            "too_many_sessions_refusals": sum(r.refusals for r in runs),
            "clients_refused_at_least_once": sum(r.refusals > 0 for r in runs),
            "wall_s": round(out["wall_s"], 2),
        },
        "latency": {
            "turn": summary([s for kind, xs in by_kind.items() if kind != "first" for s in xs]),
            "text_turn": summary(by_kind["text"]),
            "bash_turn": summary(by_kind["bash"]),
            "first_turn": summary(by_kind["first"]),
            "open_to_session_frame": summary([r.waited_s for r in runs if r.session_id]),
            # What a user waits for a new session's first answer: queueing, start, first turn.
            "open_to_first_result": summary(
                [r.waited_s + r.turns[0][1] for r in runs if r.turns and r.turns[0][0] == "first"]
            ),
        },
        "memory": {
            "service_peak_rss_kb": out["service_vmhwm_kb"],
            "service_rss_max_sampled_kb": max((s["service_rss_kb"] or 0 for s in samples), default=0),
            "sandboxes_peak": max((s["sandboxes"] for s in samples), default=0),
            "sandbox_rss_peak_kb": peak.get("sandbox_rss_kb", 0),
            "sandboxes_at_rss_peak": peak.get("sandboxes", 0),
            "sandbox_pss_peak_kb": max((s.get("sandbox_pss_kb", 0) for s in samples), default=0),
            "mem_available_min_kb": min((s["mem_available_kb"] for s in samples), default=0),
            "load1_max": max((s["load1"] for s in samples), default=0.0),
        },
        "after_clients": {"sessions_not_suspended_in_log": out["not_suspended"], **out["idle"]},
        "leftovers": out["leftovers"],
        "service_metrics": out["metrics"],
        "service_log": out["log"],
        "samples": samples,
    }


def text(results: dict[str, Any]) -> str:
    c, o, lat, mem, m = (results[k] for k in ("config", "outcome", "latency", "memory", "machine"))
    left = results["leftovers"]

    def ms(name: str) -> str:
        s = lat[name]
        return f"p50 {s['p50_ms']:.0f} ms, p99 {s['p99_ms']:.0f} ms (n={s['n']})" if s else "none"

    mb = 1024
    return "\n".join(
        [
            f"Moorage load: {c['clients']} clients x {c['turns']} turns, ramp {c['concurrency_ramp_s']}s, "
            f"cap {c['max_sessions_per_node']} sessions; {m['nproc']} cpus, load {m['loadavg_at_start'][0]} at start",
            f"  sessions completed {o['sessions_completed']}/{c['clients']}, turns {o['turns_ok']}/"
            f"{o['turns_expected']}, errors {o['errors']} {o['errors_by_code'] or ''}".rstrip(),
            f"  too_many_sessions refusals {o['too_many_sessions_refusals']} "
            f"({o['clients_refused_at_least_once']} clients retried), wall {o['wall_s']} s",
            f"  turn latency {ms('turn')}; first turn {ms('first_turn')}",
            f"  new session: open -> session frame {ms('open_to_session_frame')}; -> first result "
            f"{ms('open_to_first_result')}",
            f"  service peak RSS {(mem['service_peak_rss_kb'] or 0) / mb:.0f} MB; sandboxes peak "
            f"{mem['sandboxes_peak']}, their RSS peak {mem['sandbox_rss_peak_kb'] / mb:.0f} MB "
            f"(PSS {mem['sandbox_pss_peak_kb'] / mb:.0f} MB); min MemAvailable "
            f"{mem['mem_available_min_kb'] / mb:.0f} MB; max load {mem['load1_max']}",
            f"  leftovers: {'none' if left['clean'] else 'FOUND'} (checked {left['checked']})",
        ]
    )


async def run(args: argparse.Namespace) -> dict[str, Any]:
    load0 = os.getloadavg()
    model, model_url = start_model()
    state_dir: Path | None = None
    try:
        with run_service(model_url, **service_env(args)) as service:
            state_dir = service.state_dir
            out = await drive(args, service)
        # run_service has stopped the service (SIGTERM, bounded wait).
        db_states = await database_states(state_dir)
        uids = range(UID_BASE, UID_BASE + UID_COUNT)
        out["leftovers"] = await asyncio.to_thread(leftovers, out["seen"], uids, db_states)
        issues = hostprobe.log_issues(service.log_path)
        events = collections.Counter(str(r.get("event")) for r in hostprobe.log_records(service.log_path))
        out["log"] = {"issues": len(issues), "lines": issues[:50], "events": dict(events.most_common(40))}
        return report(args, load0, out)
    finally:
        model.terminate()
        model.wait(10)
        if state_dir is not None and not args.keep_state:
            shutil.rmtree(state_dir, ignore_errors=True)
        elif state_dir is not None:
            print(f"service state and log kept in {state_dir}", file=sys.stderr)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=100, help="concurrent WebSocket clients (default 100)")
    parser.add_argument("--turns", type=int, default=10, help="turns per client (default 10)")
    parser.add_argument(
        "--concurrency-ramp", type=float, default=10.0, help="seconds over which the clients start (default 10)"
    )
    parser.add_argument(
        "--max-sessions", type=int, default=64, help="MOORAGE_MAX_SESSIONS_PER_NODE (default 64, the service's)"
    )
    parser.add_argument("--warm", type=int, default=2, help="MOORAGE_WARM_SANDBOXES (default 2)")
    parser.add_argument("--no-bash", action="store_true", help="no Bash tool call in turn 2")
    parser.add_argument(
        "--hold",
        action="store_true",
        help="each client keeps its session open until every client is done (all sessions live at once; "
        "needs --max-sessions >= --clients)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results_load.json", help="results file"
    )
    parser.add_argument("--keep-state", action="store_true", help="keep the service's state dir and log")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.turns < 1 or args.concurrency_ramp < 0 or args.max_sessions < 1:
        parser.error("--clients, --turns and --max-sessions must be >= 1, --concurrency-ramp >= 0")
    if args.hold and args.max_sessions < args.clients:
        parser.error("--hold needs --max-sessions >= --clients (held sessions would lock the rest out)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        results = asyncio.run(run(args))
    except (RuntimeError, AssertionError) as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(text(results))
    if results["service_log"]["issues"]:
        print(f"  service log: {results['service_log']['issues']} warning/error lines (see {args.out})")
    print(f"results written to {args.out}")
    return 0 if results["leftovers"]["clean"] else 1


if __name__ == "__main__":
    sys.exit(main())
