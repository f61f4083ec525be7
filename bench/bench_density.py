"""``make bench`` part: density — what an idle session, an idle client and an open stream cost.

The service runs as a process (``tests/support.run_service``: local bubblewrap sandboxes, SQLite,
its warm pool off so that only sessions hold sandboxes) against the scripted model.

(a) **Idle sessions.** ``--sessions`` WebSocket sessions each run one turn and stay attached and
    idle. Each session's sandbox is every process of its uid (bwrap, the runner, the Claude Code
    CLI and what it started); its PSS (shared pages split between their users) is read from
    ``/proc/PID/smaps_rollup``. Beside it, the reference: the bare SDK after one turn (a
    ``ClaudeSDKClient`` in a child process of this bench; the PSS of that process and its CLI).
    Sessions per 24 GiB = 24 GiB / the median per-session PSS (the service's own memory apart).
(b) **Idle WebSocket clients.** ``--clients`` more clients attach to those sessions
    (``WS /v1/sessions/{id}``, spread evenly), in ``--steps`` steps; after each, the service's PSS
    and its CPU use over ``--idle-s`` seconds of nothing happening. Per-client memory is the slope;
    it is *flat* when every step's per-client cost is within 25 % of the whole run's.
(c) **Open SSE streams.** The same for ``GET /v1/sessions/{id}/events/stream`` (``--streams``),
    with every WebSocket client closed first.
(d) **Fan-out.** With the clients of (b) attached, one turn in one session: from sending it to its
    ``result`` at the first and at the last attached client, beside the same turn with one client.

Writes ``--out`` (default bench/results_density.json, with the host's load) and prints a table.
Exits 0 whatever the figures; 1 when the bench cannot run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import hostprobe
import websockets
from moorage.testing.scripted_model import ScriptedModelServer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support import Service, run_service

UID_BASE = 410_000
UID_COUNT = 64
GIB_KB = 1024 * 1024
HOST_KB = 24 * GIB_KB  # the machine size the figure is quoted for
OPEN_TIMEOUT_S = 120.0
TURN_TIMEOUT_S = 120.0
FLAT = 0.25  # a step's per-item cost within this of the run's: flat


def user(text: str) -> str:
    return json.dumps({"type": "user", "message": {"role": "user", "content": text}})


def progress(text: str) -> None:
    print(f"  .. {text}", file=sys.stderr, flush=True)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[-1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_pss_kb(root: int) -> int:
    procs = hostprobe.processes()
    return hostprobe.pss_kb(root) + sum(hostprobe.pss_kb(p.pid) for p in hostprobe.descendants(root, procs))


async def frame_of(ws: websockets.ClientConnection, want: str, limit_s: float) -> dict[str, Any]:
    """The next frame of type ``want`` (others passed over); bounded."""

    async def scan() -> dict[str, Any]:
        while True:
            frame = json.loads(await ws.recv())
            if frame.get("type") == "error" and frame.get("fatal"):
                raise RuntimeError(f"error frame {frame}")
            if frame.get("type") == want:
                return dict(frame)

    return await asyncio.wait_for(scan(), limit_s)


# -- (a) idle sessions ----------------------------------------------------------------------


async def open_sessions(service: Service, n: int) -> list[tuple[websockets.ClientConnection, str]]:
    sessions = []
    for i in range(n):
        ws = await websockets.connect(service.ws_url + "/v1/sessions", max_size=None, open_timeout=OPEN_TIMEOUT_S)
        first = await frame_of(ws, "session", OPEN_TIMEOUT_S)
        await ws.send(user(f"say idle session {i}"))
        await frame_of(ws, "result", TURN_TIMEOUT_S)
        sessions.append((ws, str(first["session_id"])))
    return sessions


def session_pss_kb() -> list[int]:
    """PSS per live sandbox of the bench's uids (every process of one uid)."""
    procs = hostprobe.in_uids(range(UID_BASE, UID_BASE + UID_COUNT))
    by_uid: dict[int, int] = {}
    for p in procs:
        by_uid[p.uid] = by_uid.get(p.uid, 0) + hostprobe.pss_kb(p.pid)
    return sorted(by_uid.values())


DIRECT = """
import asyncio, os, sys
from claude_agent_sdk import ClaudeAgentOptions, ClaudeSDKClient

async def main():
    client = ClaudeSDKClient(ClaudeAgentOptions(cwd=sys.argv[2], permission_mode="bypassPermissions", env={
        "ANTHROPIC_BASE_URL": sys.argv[1], "ANTHROPIC_API_KEY": "sk-bench", "HOME": sys.argv[3], "IS_SANDBOX": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1", "DISABLE_TELEMETRY": "1"}))
    await client.connect()
    await client.query("say hi")
    async for message in client.receive_response():
        pass
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await client.disconnect()

asyncio.run(main())
"""


async def direct_pss_kb(model_url: str, runs: int) -> list[int]:
    """The bare SDK after one turn: PSS of its Python process and the CLI under it."""
    found = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="moorage-bench-density-") as scratch:
            cwd, home = Path(scratch, "cwd"), Path(scratch, "home")
            cwd.mkdir()
            home.mkdir()
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", DIRECT, model_url, str(cwd), str(home),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            assert proc.stdout is not None and proc.stdin is not None
            line = await asyncio.wait_for(proc.stdout.readline(), OPEN_TIMEOUT_S)
            if line.strip() != b"ready":
                raise RuntimeError("the bare SDK did not answer")
            found.append(tree_pss_kb(proc.pid))
            proc.stdin.write(b"\n")
            await proc.stdin.drain()
            await asyncio.wait_for(proc.wait(), 30)
    return found


# -- (b), (c) idle clients and streams --------------------------------------------------------


async def idle_figures(service: Service, idle_s: float) -> dict[str, float]:
    """The service's PSS now, and its CPU use (percent of one core) over ``idle_s`` of nothing."""
    await asyncio.sleep(1.0)  # what the last connections set off is over
    before = cpu_s(service.proc.pid)
    await asyncio.sleep(idle_s)
    used = cpu_s(service.proc.pid) - before
    return {"pss_kb": hostprobe.pss_kb(service.proc.pid), "cpu_pct": round(100 * used / idle_s, 2)}


async def attach_clients(service: Service, sessions: list[str], n: int) -> list[websockets.ClientConnection]:
    async def one(i: int) -> websockets.ClientConnection:
        ws = await websockets.connect(
            f"{service.ws_url}/v1/sessions/{sessions[i % len(sessions)]}", max_size=None, open_timeout=OPEN_TIMEOUT_S
        )
        await frame_of(ws, "session", OPEN_TIMEOUT_S)
        return ws

    opened: list[websockets.ClientConnection] = []
    for start in range(0, n, 100):  # a hundred at a time: the service's accept backlog
        opened += await asyncio.gather(*(one(i) for i in range(start, min(n, start + 100))))
    return opened


class Stream:
    """One open SSE stream: the request sent, the status line and headers read, nothing more."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, session_id: str) -> Stream:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"GET /v1/sessions/{session_id}/events/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), OPEN_TIMEOUT_S)
        if b" 200 " not in status:
            raise RuntimeError(f"event stream refused: {status!r}")
        return cls(reader, writer)

    def close(self) -> None:
        self.writer.close()


def steps_of(total: int, steps: int) -> list[int]:
    return sorted({max(1, round(total * (i + 1) / steps)) for i in range(steps)})


def slope(points: list[tuple[int, float]]) -> dict[str, Any]:
    """Per-item cost from (count, value) points starting at (0, base): overall, and per step."""
    base = points[0][1]
    overall = (points[-1][1] - base) / points[-1][0] if points[-1][0] else 0.0
    per_step = [(v - pv) / (n - pn) for (pn, pv), (n, v) in itertools.pairwise(points) if n > pn]
    flat = all(abs(s - overall) <= FLAT * max(abs(overall), 1e-9) for s in per_step) if overall > 0 else True
    return {"per_item": round(overall, 2), "per_step": [round(s, 2) for s in per_step], "flat": flat}


def step_text(figures: dict[str, float]) -> str:
    return f"service PSS {figures['pss_kb'] / 1024:.1f} MiB, cpu {figures['cpu_pct']}%"


def cpu_per_1000(points: list[tuple[int, dict[str, float]]]) -> float:
    """The service's idle CPU (percent of a core) each 1000 items add, first step to last."""
    (_, first), (n, last) = points[0], points[-1]
    return round(1000 * (last["cpu_pct"] - first["cpu_pct"]) / max(1, n), 2)


# -- (d) fan-out --------------------------------------------------------------------------------


async def fan_out(
    sender: websockets.ClientConnection, listeners: list[websockets.ClientConnection]
) -> dict[str, float]:
    """Send one turn on ``sender``; seconds until its result at each listener (the sender included)."""
    t0 = time.perf_counter()
    await sender.send(user("say fan out"))

    async def at(ws: websockets.ClientConnection) -> float:
        await frame_of(ws, "result", TURN_TIMEOUT_S)
        return time.perf_counter() - t0

    times = await asyncio.gather(*(at(ws) for ws in [sender, *listeners]))
    return {"first_s": round(min(times), 4), "last_s": round(max(times), 4), "clients": len(times)}


# -- the run ----------------------------------------------------------------------------------


def service_env(args: argparse.Namespace) -> dict[str, str]:
    return {
        "MOORAGE_WARM_SANDBOXES": "0",
        "MOORAGE_WARM_AGENTS": "0",
        "MOORAGE_SANDBOX_UID_BASE": str(UID_BASE),
        "MOORAGE_SANDBOX_UID_COUNT": str(UID_COUNT),
        "MOORAGE_MAX_CONNECTIONS": str(args.clients + args.streams + 100),
        "MOORAGE_MAX_SESSIONS_PER_TENANT": str(args.sessions + 1),
        "MOORAGE_IDLE_TIMEOUT_S": "3600",
        "MOORAGE_LOG_LEVEL": "warning",
    }


async def measure(args: argparse.Namespace, model: ScriptedModelServer, service: Service) -> dict[str, Any]:
    progress(f"(a) {args.sessions} idle sessions, and the bare SDK")
    sessions = await open_sessions(service, args.sessions)
    ids = [sid for _, sid in sessions]
    per_session = session_pss_kb()
    direct = await direct_pss_kb(model.url, args.direct_runs)
    idle: dict[str, Any] = {
        "sessions": len(per_session),
        "session_pss_kb": per_session,
        "median_session_pss_kb": statistics.median(per_session),
        "direct_pss_kb": direct,
        "median_direct_pss_kb": statistics.median(direct),
        "service_pss_kb": hostprobe.pss_kb(service.proc.pid),
    }
    idle["sessions_per_24gib"] = int(HOST_KB // idle["median_session_pss_kb"])
    idle["direct_per_24gib"] = int(HOST_KB // idle["median_direct_pss_kb"])

    progress(f"(b) {args.clients} idle WebSocket clients, in {args.steps} steps")
    points = [(0, await idle_figures(service, args.idle_s))]
    clients: list[websockets.ClientConnection] = []
    for n in steps_of(args.clients, args.steps):
        clients += await attach_clients(service, ids, n - len(clients))
        points.append((n, await idle_figures(service, args.idle_s)))
        progress(
            f"   {n} clients: service PSS {points[-1][1]['pss_kb'] / 1024:.1f} MiB, cpu {points[-1][1]['cpu_pct']}%"
        )
    ws_report = {
        "steps": [{"clients": n, **f} for n, f in points],
        "pss_kib_per_client": slope([(n, f["pss_kb"]) for n, f in points]),
        "cpu_pct_per_1000_clients": round(
            1000 * (points[-1][1]["cpu_pct"] - points[0][1]["cpu_pct"]) / max(1, points[-1][0]), 2
        ),
    }

    progress("(d) fan-out: one turn, seen by one client and by every attached one")
    sender = sessions[0][0]
    alone = await fan_out(sender, [])
    spread = [ws for i, ws in enumerate(clients) if i % len(ids) == 0]  # the clients of session 0
    crowd = await fan_out(sender, spread)
    fan = {"one_client": alone, "attached": crowd}
    for ws in clients:
        await ws.close()

    progress(f"(c) {args.streams} open SSE streams, in {args.steps} steps")
    points = [(0, await idle_figures(service, args.idle_s))]
    streams: list[Stream] = []
    for n in steps_of(args.streams, args.steps):
        for start in range(len(streams), n, 100):
            streams += await asyncio.gather(
                *(Stream.open(service.port, ids[i % len(ids)]) for i in range(start, min(n, start + 100)))
            )
        points.append((n, await idle_figures(service, args.idle_s)))
        progress(
            f"   {n} streams: service PSS {points[-1][1]['pss_kb'] / 1024:.1f} MiB, cpu {points[-1][1]['cpu_pct']}%"
        )
    sse_report = {
        "steps": [{"streams": n, **f} for n, f in points],
        "pss_kib_per_stream": slope([(n, f["pss_kb"]) for n, f in points]),
        "cpu_pct_per_1000_streams": round(
            1000 * (points[-1][1]["cpu_pct"] - points[0][1]["cpu_pct"]) / max(1, points[-1][0]), 2
        ),
    }
    for stream in streams:
        stream.close()
    for ws, _ in sessions:
        await ws.close()
    return {"idle_sessions": idle, "websocket_clients": ws_report, "fan_out": fan, "sse_streams": sse_report}


def table(r: dict[str, Any]) -> str:
    idle, ws, sse, fan, m = r["idle_sessions"], r["websocket_clients"], r["sse_streams"], r["fan_out"], r["machine"]
    lines = [
        f"Moorage density bench: {m['nproc']} cpus (load {m['loadavg_at_start'][0]})",
        f"{'':44}{'service':>12}{'reference':>12}",
        f"{'idle session, PSS (MiB, median)':44}{idle['median_session_pss_kb'] / 1024:>12.1f}"
        f"{idle['median_direct_pss_kb'] / 1024:>12.1f}  (bare SDK after one turn)",
        f"{'sessions per 24 GiB':44}{idle['sessions_per_24gib']:>12}{idle['direct_per_24gib']:>12}",
        f"{'service process, PSS with them (MiB)':44}{idle['service_pss_kb'] / 1024:>12.1f}",
        f"{'idle WebSocket client (KiB each)':44}{ws['pss_kib_per_client']['per_item']:>12.1f}"
        f"{'':>12}  flat: {ws['pss_kib_per_client']['flat']}, {ws['steps'][-1]['clients']} clients",
        f"{'  service CPU per 1000 idle clients (%)':44}{ws['cpu_pct_per_1000_clients']:>12.2f}",
        f"{'open SSE stream (KiB each)':44}{sse['pss_kib_per_stream']['per_item']:>12.1f}"
        f"{'':>12}  flat: {sse['pss_kib_per_stream']['flat']}, {sse['steps'][-1]['streams']} streams",
        f"{'  service CPU per 1000 idle streams (%)':44}{sse['cpu_pct_per_1000_streams']:>12.2f}",
        f"{'fan-out: result at the last client (ms)':44}{fan['attached']['last_s'] * 1000:>12.1f}"
        f"{fan['one_client']['last_s'] * 1000:>12.1f}  ({fan['attached']['clients']} clients vs one)",
    ]
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    load = os.getloadavg()
    model = ScriptedModelServer().start()
    try:
        with run_service(model.url, **service_env(args)) as service:
            figures = await measure(args, model, service)
    finally:
        model.stop()
    return {
        "schema": 1,
        "machine": hostprobe.machine(load),
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        **figures,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sessions", type=int, default=8, help="idle sessions (default 8)")
    parser.add_argument("--direct-runs", type=int, default=3, help="bare SDK processes measured (default 3)")
    parser.add_argument("--clients", type=int, default=2000, help="idle WebSocket clients (default 2000)")
    parser.add_argument("--streams", type=int, default=1000, help="open SSE streams (default 1000)")
    parser.add_argument("--steps", type=int, default=4, help="steps to reach them (default 4)")
    parser.add_argument("--idle-s", type=float, default=10.0, help="seconds of CPU sampling per step (default 10)")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results_density.json", help="results file"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        results = asyncio.run(run(args))
    except (RuntimeError, TimeoutError, OSError, websockets.WebSocketException) as exc:
        print(f"bench failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    hostprobe.write_report(args.out, results)
    print(table(results))
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
