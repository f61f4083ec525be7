"""``make bench``: what running a session through Moorage costs over the bare SDK.

Both sides talk to the same scripted model (``moorage.testing.scripted_model``),
which answers every request instantly, so what is measured is the overhead of
starting and driving the Claude Code CLI, not model latency.

"direct"  is ``claude_agent_sdk.ClaudeSDKClient`` in this process, spawning the
          bundled CLI on the host (fresh temp cwd and HOME per client).
"service" is ``python -m moorage serve`` started here as a subprocess with the
          local (bubblewrap) sandbox backend, driven over its WebSocket API.

(a) A new session, repeated ``--runs`` times, direct and service interleaved.
    The CLI emits its ``system``/``init`` message only after the first user
    message, so on both sides the first message ``say hi`` is sent at once and
    the clock runs from the start (``ClaudeSDKClient.connect()`` call /
    WebSocket connect) to the arrival of ``system``/``init``. The direct side
    is a cold start (the CLI spawned by ``connect()``); the service runs as
    deployed, with its warm pool: ``--agents`` started agents of the default
    spec (their CLI already running: pool.py) and ``--warm`` loaded sandboxes,
    so a new session claims a started agent. Median and p90 of each, the ratio
    of medians (target <= 0.5x) and the service's median against 100 ms. One unmeasured
    warm-up of each side runs first (page cache, bytecode). After every
    service run the bench waits for the service's sandboxes to be gone, so
    no run shares the machine with a leftover CLI. The direct side has
    claude_agent_sdk imported already; the service side pays for a Python
    start and that import inside every sandbox (part of the real cost). The
    service's own "sandbox -> ready" time, from its log, is reported too.

(b) A conversation of ``--turns`` sequential turns in one session: direct is
    one ``ClaudeSDKClient`` with one ``query()`` per turn, service is one
    WebSocket with one user frame per turn; each turn ends with its
    ``result``. The clock starts after an unmeasured warm-up turn (which
    also covers startup) and stops at the last ``result``. Instant turns
    take tens of milliseconds, so any other load on the host shows: the
    conversation is run ``--conversations`` times per side (default 3,
    interleaved) and each side's total is the median. Per-turn median over
    all turns, and the ratio of the totals (target <= 1.10x).
    A third side runs the same conversations, interleaved, through the
    Managed Agents HTTP API of the same service with the official
    ``anthropic`` client (``bench_sse``): a turn is ``events.send`` until
    the turn's ``session.status_idle`` on the session's already open event
    stream (SSE). Its per-turn p50 and p95 and its total are shown beside
    the two others, with its ratios to each (no target).

Writes ``--out`` (default bench/results.json, with every sample, the host's
load average, and any warning lines from the service's log) and prints a
table. Exits 0 whatever the figures: this is a report, not a test; it exits 1
only when the bench itself cannot run (the service does not start, a wait
times out, a turn fails).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import hostprobe
from bench_sse import HttpApi, HttpSession, failed, is_idle, sse_report, sse_table
from claude_agent_sdk import ClaudeAgentOptions, ClaudeSDKClient
from moorage.testing.scripted_model import ScriptedModelServer
from websockets.asyncio.client import ClientConnection, connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support import Service, metric_value, run_service

PROMPT = "say hi"
START_TARGET = 0.5  # new session -> init, service / the bare SDK's cold start
START_TARGET_S = 0.1  # and at most this, absolute
CONVERSATION_TARGET = 1.10

START_TIMEOUT_S = 60.0  # connect -> init (CLI start, sandbox start)
TURN_TIMEOUT_S = 30.0  # one instant turn
SANDBOX_GONE_TIMEOUT_S = 30.0
# Sessions end this long after their last client leaves; short, so the
# cold-start runs can wait for each service sandbox to be gone.
SERVICE_IDLE_TIMEOUT_S = 1.0
# Sandbox host uids well away from the default pool (200000+), which a dev
# service on this host may be using: the service SIGKILLs every process of a
# uid it gives back, so two services sharing a pool would kill each other's.
SANDBOX_UID_BASE = 370_000
SANDBOX_UID_COUNT = 100

# Mirrors moorage_runner's CLI environment; IS_SANDBOX lets the CLI bypass
# permissions as root (inside the sandbox the CLI is not root).
DIRECT_ENV = {
    "ANTHROPIC_API_KEY": "sk-bench-placeholder",
    "IS_SANDBOX": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
}
DIRECT_MAX_TURNS = 50  # the service's default MOORAGE_MAX_TURNS

Message = dict[str, Any]


class BenchError(RuntimeError):
    """The bench could not measure (not: a figure missed its target)."""


# -- helpers -------------------------------------------------------------------


def is_init(message: Message) -> bool:
    return message.get("type") == "system" and message.get("subtype") == "init"


def is_result(message: Message) -> bool:
    return message.get("type") == "result"


def user_message(text: str) -> Message:
    return {"type": "user", "message": {"role": "user", "content": text}}


async def read_until(
    stream: AsyncIterator[Message], done: Callable[[Message], bool], limit_s: float, what: str
) -> Message:
    """The first message from ``stream`` that satisfies ``done``; bounded."""

    async def scan() -> Message:
        async for message in stream:
            if message.get("type") == "error":
                raise BenchError(f"error frame while waiting for {what}: {json.dumps(message)[:300]}")
            if (is_result(message) and message.get("is_error")) or failed(message):
                raise BenchError(f"turn failed while waiting for {what}: {json.dumps(message)[:300]}")
            if done(message):
                return message
        raise BenchError(f"stream ended while waiting for {what}")

    try:
        return await asyncio.wait_for(scan(), limit_s)
    except TimeoutError:
        raise BenchError(f"timed out after {limit_s:g}s waiting for {what}") from None


def summary(samples: list[float]) -> dict[str, float]:
    """Median, p90 and p95 (inclusive linear interpolation), in seconds."""
    ordered = sorted(samples)
    cuts = statistics.quantiles(ordered, n=20, method="inclusive") if len(ordered) > 1 else [ordered[0]] * 19
    return {
        "median_s": round(statistics.median(ordered), 4),
        "p90_s": round(cuts[17], 4),
        "p95_s": round(cuts[18], 4),
        "min_s": round(ordered[0], 4),
        "max_s": round(ordered[-1], 4),
    }


def wait_sandboxes_gone(limit_s: float = 10.0) -> list[int]:
    """Pids of the bench's sandbox processes still alive after ``limit_s``."""
    uids = range(SANDBOX_UID_BASE, SANDBOX_UID_BASE + SANDBOX_UID_COUNT)
    deadline = time.monotonic() + limit_s
    while (left := [p.pid for p in hostprobe.in_uids(uids)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


# -- direct SDK ----------------------------------------------------------------


@contextlib.contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def _one(message: Message) -> AsyncIterator[Message]:
    yield message


class DirectSession:
    """One ClaudeSDKClient; the bundled CLI on the host, no sandbox."""

    def __init__(self, model_url: str, scratch: Path) -> None:
        home, workspace = scratch / "home", scratch / "workspace"
        home.mkdir()
        workspace.mkdir()
        env = {**DIRECT_ENV, "ANTHROPIC_BASE_URL": model_url, "HOME": str(home)}
        self.client = ClaudeSDKClient(
            ClaudeAgentOptions(
                cwd=str(workspace),
                permission_mode="bypassPermissions",
                max_turns=DIRECT_MAX_TURNS,
                env=env,
            )
        )
        self.messages: AsyncIterator[Message] | None = None

    async def connect(self) -> None:
        await asyncio.wait_for(self.client.connect(), START_TIMEOUT_S)
        query = self.client._query
        assert query is not None
        # Raw dicts, exactly as the CLI wrote them (what the service relays).
        self.messages = query.receive_messages()

    async def send(self, text: str) -> None:
        await self.client.query(_one({**user_message(text), "parent_tool_use_id": None}))

    async def until(self, done: Callable[[Message], bool], limit_s: float, what: str) -> Message:
        assert self.messages is not None
        return await read_until(self.messages, done, limit_s, what)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.client.disconnect(), 20)


# -- the service -----------------------------------------------------------------


def service_env(warm: int, agents: int) -> dict[str, str]:
    """``run_service`` overrides: the service's defaults, short idle, own uids; ``agents`` started
    agents of the default spec, one spec only (so the pool's steady state is ``warm + agents``
    sandboxes whatever the recent demand)."""
    return {
        "MOORAGE_WARM_AGENTS": str(agents),
        "MOORAGE_WARM_AGENTS_PER_SPEC": str(max(agents, 1)),
        "MOORAGE_IDLE_TIMEOUT_S": str(SERVICE_IDLE_TIMEOUT_S),
        "MOORAGE_MAX_TURNS": str(DIRECT_MAX_TURNS),
        "MOORAGE_LOG_LEVEL": "info",
        "MOORAGE_SANDBOX_UID_BASE": str(SANDBOX_UID_BASE),
        "MOORAGE_SANDBOX_UID_COUNT": str(SANDBOX_UID_COUNT),
        "MOORAGE_WARM_SANDBOXES": str(warm),
        # The sides' turns all count against tenant "default": no 429 mid-run (default 120/min).
        "MOORAGE_TURNS_PER_MINUTE_PER_TENANT": "100000",
    }


async def wait_no_sandboxes(service: Service, warm: int) -> None:
    # ``warm``: the pool's steady state, loaded sandboxes plus started agents
    """Until the service runs only its warm pool again (each sandbox is one
    child process of the service): the last session's sandbox is gone and
    the pool is refilled, so the next run starts from the steady state."""
    deadline = time.monotonic() + SANDBOX_GONE_TIMEOUT_S
    while len(await asyncio.to_thread(hostprobe.children, service.proc.pid)) != warm:
        if time.monotonic() > deadline:
            raise BenchError(f"service sandboxes still running after {SANDBOX_GONE_TIMEOUT_S:g}s")
        await asyncio.sleep(0.05)


async def wait_agents_ready(service: Service, agents: int) -> None:
    """Until the service's warm pool holds ``agents`` started agents again (its /metrics)."""
    deadline = time.monotonic() + SANDBOX_GONE_TIMEOUT_S
    while await asyncio.to_thread(metric_value, service, "moorage_warm_agents") < agents:
        if time.monotonic() > deadline:
            raise BenchError(f"the warm pool did not start its agents again within {SANDBOX_GONE_TIMEOUT_S:g}s")
        await asyncio.sleep(0.05)


async def ws_frames(ws: ClientConnection) -> AsyncIterator[Message]:
    async for raw in ws:
        frame = json.loads(raw)
        if isinstance(frame, dict):
            yield frame


class ServiceSession:
    """One WebSocket session with the service."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.ws: ClientConnection | None = None
        self.frames: AsyncIterator[Message] | None = None

    async def connect(self) -> None:
        self.ws = await connect(self.service.ws_url + "/v1/sessions", max_size=None, open_timeout=START_TIMEOUT_S)
        self.frames = ws_frames(self.ws)
        await self.until(lambda m: m.get("type") == "session", START_TIMEOUT_S, "the session frame")

    async def send(self, text: str) -> None:
        assert self.ws is not None
        await self.ws.send(json.dumps(user_message(text)))

    async def until(self, done: Callable[[Message], bool], limit_s: float, what: str) -> Message:
        assert self.frames is not None
        return await read_until(self.frames, done, limit_s, what)

    async def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 10)


class SseSession(HttpSession):
    """One session over the HTTP API: ``events.send``, its event stream (``bench_sse``)."""

    async def until(self, done: Callable[[Message], bool], limit_s: float, what: str) -> Message:
        assert self.messages is not None
        return await read_until(self.messages, done, limit_s, what)


# -- measurements ----------------------------------------------------------------

Session = DirectSession | ServiceSession | SseSession


def turn_over(message: Message) -> bool:
    """A turn's end: its ``result`` (SDK, WebSocket) or ``session.status_idle`` (HTTP API)."""
    return is_result(message) or is_idle(message)


async def cold_start(session: Session) -> tuple[float, float]:
    """(start -> init, start -> first result) for a new session, in seconds."""
    t0 = time.perf_counter()
    try:
        await session.connect()
        await session.send(PROMPT)
        await session.until(is_init, START_TIMEOUT_S, "system/init")
        init_s = time.perf_counter() - t0
        await session.until(is_result, TURN_TIMEOUT_S, "the first result")
        result_s = time.perf_counter() - t0
    finally:
        await session.close()
    return init_s, result_s


async def conversation(
    session: Session, turns: int, settle: Callable[[], Awaitable[None]] | None = None
) -> list[float]:
    """Seconds per turn for ``turns`` turns after a warm-up turn (and ``settle``: the service's
    warm pool has started the agent that replaces the one this session claimed — the steady
    state, not a refill's CLI start sharing the CPU with the first turns)."""
    try:
        await session.connect()
        await session.send(PROMPT)
        await session.until(turn_over, START_TIMEOUT_S, "the warm-up result")
        if settle is not None:
            await settle()
        times: list[float] = []
        for turn in range(turns):
            t0 = time.perf_counter()
            await session.send(PROMPT)
            await session.until(turn_over, TURN_TIMEOUT_S, f"the result of turn {turn + 1}")
            times.append(time.perf_counter() - t0)
    finally:
        await session.close()
    return times


async def direct_cold_start(model_url: str) -> tuple[float, float]:
    with temp_dir("moorage-bench-direct-") as scratch:
        return await cold_start(DirectSession(model_url, scratch))


async def service_cold_start(service: Service, warm: int) -> tuple[float, float]:
    figures = await cold_start(ServiceSession(service))
    await wait_no_sandboxes(service, warm)
    return figures


async def measure(args: argparse.Namespace, model_url: str, service: Service) -> dict[str, Any]:
    log = progress
    pool = args.warm + args.agents
    await wait_no_sandboxes(service, pool)  # the pool is full before the first run
    for i in range(args.warmup):
        log(f"warm-up {i + 1}/{args.warmup}")
        await direct_cold_start(model_url)
        await service_cold_start(service, pool)

    direct_init: list[float] = []
    direct_result: list[float] = []
    service_init: list[float] = []
    service_result: list[float] = []
    for i in range(args.runs):
        d = await direct_cold_start(model_url)
        s = await service_cold_start(service, pool)
        log(f"new session {i + 1}/{args.runs}: direct {d[0]:.3f}s  service {s[0]:.3f}s")
        direct_init.append(d[0])
        direct_result.append(d[1])
        service_init.append(s[0])
        service_result.append(s[1])

    direct_turns: list[list[float]] = []
    service_turns: list[list[float]] = []
    sse_turns: list[list[float]] = []
    api = await HttpApi.open(service.url)
    try:
        for i in range(args.conversations):
            with temp_dir("moorage-bench-direct-") as scratch:
                direct_turns.append(await conversation(DirectSession(model_url, scratch), args.turns))
            settled = functools.partial(wait_agents_ready, service, args.agents)
            service_turns.append(await conversation(ServiceSession(service), args.turns, settled))
            await wait_no_sandboxes(service, pool)
            sse_turns.append(await conversation(SseSession(api), args.turns, settled))
            await wait_no_sandboxes(service, pool)
            log(
                f"conversation {i + 1}/{args.conversations}, {args.turns} turns: "
                f"direct {sum(direct_turns[-1]):.3f}s  service {sum(service_turns[-1]):.3f}s  "
                f"http+sse {sum(sse_turns[-1]):.3f}s"
            )
    finally:
        await api.close()

    return {
        "cold_start": cold_start_report(direct_init, service_init, direct_result, service_result),
        "conversation": conversation_report(direct_turns, service_turns, sse_turns),
    }


def cold_start_report(
    direct: list[float], service: list[float], direct_result: list[float], service_result: list[float]
) -> dict[str, Any]:
    d, s = summary(direct), summary(service)
    ratio = s["median_s"] / d["median_s"]
    return {
        "what": "start (connect() call / WebSocket connect) -> system/init, first message sent at once; "
        "direct: a cold start; service: its warm pool as deployed (a started agent claimed)",
        "runs": len(direct),
        "direct": {**d, "samples_s": [round(x, 4) for x in direct]},
        "service": {**s, "samples_s": [round(x, 4) for x in service]},
        "to_first_result": {"direct": summary(direct_result), "service": summary(service_result)},
        "ratio_of_medians": round(ratio, 3),
        "target_ratio": START_TARGET,
        "target_s": START_TARGET_S,
        "pass": ratio <= START_TARGET and s["median_s"] <= START_TARGET_S,
    }


def conversation_side(conversations: list[list[float]]) -> dict[str, Any]:
    """One side: the median of the conversations' totals, per-turn figures over all turns."""
    totals = [sum(times) for times in conversations]
    return {
        "total_s": round(statistics.median(totals), 4),
        "totals_s": [round(t, 4) for t in totals],
        "per_turn": summary([t for times in conversations for t in times]),
        "per_turn_samples_s": [[round(t, 4) for t in times] for times in conversations],
    }


def conversation_report(
    direct: list[list[float]], service: list[list[float]], sse: list[list[float]]
) -> dict[str, Any]:
    d, s = conversation_side(direct), conversation_side(service)
    ratio = s["total_s"] / d["total_s"]
    return {
        "what": "sequential turns in one session after a warm-up turn, each until its result; "
        "total_s is the median over the conversations",
        "turns": len(direct[0]),
        "conversations": len(direct),
        "direct": d,
        "service": s,
        "ratio_of_totals": round(ratio, 3),
        "target_ratio": CONVERSATION_TARGET,
        "pass": ratio <= CONVERSATION_TARGET,
        "http_sse": sse_report(conversation_side(sse), d, s),
    }


# -- report ----------------------------------------------------------------------


def row(label: str, direct: float | None, service: float | None, ratio: str = "", digits: int = 0) -> str:
    """One table line; times in seconds, shown in milliseconds."""

    def cell(value: float | None) -> str:
        return f"{value * 1000:>10.{digits}f}" if value is not None else f"{'':>10}"

    return f"{label:36}{cell(direct)}{cell(service)}{ratio}".rstrip()


def verdict(section: dict[str, Any], ratio_key: str) -> str:
    status = "PASS" if section["pass"] else "FAIL"
    return f"{section[ratio_key]:>7.2f}x  <= {section['target_ratio']}x {status}"


def table(results: dict[str, Any]) -> str:
    cold, conv, m = results["cold_start"], results["conversation"], results["machine"]
    first = cold["to_first_result"]
    lines = [
        f"Moorage bench: {cold['runs']} cold-start runs, {conv['turns']} turns; "
        f"{m['nproc']} cpus (load {m['loadavg_at_start'][0]}), Python {m['python']}, "
        f"claude-agent-sdk {m['claude_agent_sdk']}",
        f"{'(ms)':36}{'direct':>10}{'service':>10}{'ratio':>8}  target",
        row(
            "new session -> init, median",
            cold["direct"]["median_s"],
            cold["service"]["median_s"],
            verdict(cold, "ratio_of_medians") + f", <= {cold['target_s'] * 1000:.0f} ms",
        ),
        row("new session -> init, p90", cold["direct"]["p90_s"], cold["service"]["p90_s"]),
        row("new session -> first result, median", first["direct"]["median_s"], first["service"]["median_s"]),
    ]
    if ready := cold.get("service_sandbox_ready"):
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(cold.get("service_pool", {}).items()))
        lines.append(row(f"  service: sandbox -> ready ({kinds})", None, ready["median_s"]))
    lines += [
        row(
            f"{conv['turns']}-turn conversation, total",
            conv["direct"]["total_s"],
            conv["service"]["total_s"],
            verdict(conv, "ratio_of_totals"),
        ),
        row(
            "  per turn, median",
            conv["direct"]["per_turn"]["median_s"],
            conv["service"]["per_turn"]["median_s"],
            digits=1,
        ),
        *sse_table(conv),
    ]
    return "\n".join(lines)


def progress(text: str) -> None:
    print(f"  .. {text}", file=sys.stderr, flush=True)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    load_at_start = os.getloadavg()
    if load_at_start[0] > 0.5 * (os.cpu_count() or 1):
        progress(f"the host is busy (load {load_at_start[0]:.2f}): figures will be noisy")
    model = ScriptedModelServer().start()
    state_dir: Path | None = None
    try:
        with run_service(model.url, **service_env(args.warm, args.agents)) as service:
            state_dir = service.state_dir
            figures = await measure(args, model.url, service)
        # run_service has stopped the service (SIGTERM, bounded wait).
        leftovers = wait_sandboxes_gone()
        issues = hostprobe.log_issues(service.log_path)
        records = hostprobe.log_records(service.log_path)
        readies = [r for r in records if r.get("event") == "session_ready" and "start_s" in r]
        ready = [float(r["start_s"]) for r in readies]
        kinds = [str(r.get("warm")) for r in readies]
    except AssertionError as exc:  # run_service: the service did not start
        raise BenchError(str(exc)[:2000]) from exc
    finally:
        model.stop()
        if state_dir is not None and args.keep_state:
            progress(f"service state and log kept in {state_dir}")
        elif state_dir is not None:
            shutil.rmtree(state_dir, ignore_errors=True)
    if leftovers:
        progress(f"sandbox processes left running after the service stopped: {leftovers}")
    cold_ready = ready[args.warmup : args.warmup + args.runs]
    if len(cold_ready) == args.runs:
        # The service's own figure: sandbox start -> runner ready (SDK connected).
        figures["cold_start"]["service_sandbox_ready"] = summary(cold_ready)
        measured = kinds[args.warmup : args.warmup + args.runs]
        figures["cold_start"]["service_pool"] = {kind: measured.count(kind) for kind in set(measured)}
    return {
        "schema": 1,
        "machine": hostprobe.machine(load_at_start),
        "config": {
            "runs": args.runs,
            "turns": args.turns,
            "conversations": args.conversations,
            "warmup": args.warmup,
            "warm_sandboxes": args.warm,
            "warm_agents": args.agents,
            "prompt": PROMPT,
        },
        **figures,
        "service_log": {"issues": len(issues), "lines": issues[:50]},
        "leftover_sandbox_processes": leftovers,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="cold-start runs per side (default 5)")
    parser.add_argument("--turns", type=int, default=20, help="turns in the conversation (default 20)")
    parser.add_argument(
        "--conversations", type=int, default=3, help="conversations per side, interleaved; median total (default 3)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured cold starts per side first (default 1)")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results.json", help="results file"
    )
    parser.add_argument(
        "--warm", type=int, default=2, help="the service's loaded warm sandboxes (MOORAGE_WARM_SANDBOXES)"
    )
    parser.add_argument(
        "--agents", type=int, default=1, help="the service's started agents (MOORAGE_WARM_AGENTS; 0 and --warm 0: cold)"
    )
    parser.add_argument("--keep-state", action="store_true", help="keep the service's state dir and log")
    args = parser.parse_args(argv)
    if min(args.runs, args.turns, args.conversations) < 1 or args.warmup < 0:
        parser.error("--runs, --turns and --conversations must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        results = asyncio.run(run(args))
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    if results["service_log"]["issues"]:
        print(f"service log: {results['service_log']['issues']} warning/error lines (see {args.out})")
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
