"""``make bench`` part 3: how long rehydrating a suspended session takes as
its transcript grows.

For each size N (10, 1,000, 10,000 transcript entries): a real session runs
one turn and is suspended (idle timeout); its real transcript is then grown
to N entries by repeating its user/assistant exchange with fresh uuids, each
entry chained to the previous one (``parentUuid``), written through the same
``SQLModelSessionStore`` the service uses. The clock runs from the WebSocket
connect to ``WS /v1/sessions/{id}`` until the ``session`` frame, and until
the first ``result`` of a ``say hi`` turn. The same is measured for a new
session (cold start through the warm pool) for comparison.

Target: rehydrate at 1,000 entries <= cold start + 300 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import websockets
from claude_agent_sdk.types import SessionKey
from moorage.testing.scripted_model import ScriptedModelServer
from moorage_session_store import Database, SQLModelSessionStore

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support import Service, run_service

TENANT = "default"


async def first_result(url: str) -> tuple[str, float, float]:
    """Connect, run one turn; (session id, s to session frame, s to result)."""
    t0 = time.perf_counter()
    async with websockets.connect(url, max_size=None) as ws:
        first = json.loads(await asyncio.wait_for(ws.recv(), 60))
        t_session = time.perf_counter() - t0
        if first.get("type") != "session":
            raise RuntimeError(f"unexpected first frame {first}")
        await ws.send(json.dumps({"type": "user", "message": {"role": "user", "content": "say hi"}}))
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 120))
            if frame.get("type") == "error" and frame.get("fatal"):
                raise RuntimeError(f"error frame {frame}")
            if frame.get("type") == "result":
                return str(first["session_id"]), t_session, time.perf_counter() - t0


def grow(entries: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """Entries to append so the transcript holds ``n``: repeats of its
    user/assistant exchange, re-chained with fresh uuids."""
    exchange = [e for e in entries if e.get("type") in ("user", "assistant") and e.get("uuid")]
    if not exchange:
        raise RuntimeError("the seed transcript has no messages")
    parent = entries[-1].get("uuid") or exchange[-1]["uuid"]
    extra: list[dict[str, Any]] = []
    while len(entries) + len(extra) < n:
        for template in exchange:
            if len(entries) + len(extra) >= n:
                break
            entry = json.loads(json.dumps(template))
            entry["uuid"] = str(uuid.uuid4())
            entry["parentUuid"] = parent
            parent = entry["uuid"]
            extra.append(entry)
    return extra


async def wait_suspended(log: Path, session_id: str, limit_s: float = 60) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if '"session_suspended"' in line and session_id in line:
                return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"session {session_id} was not suspended within {limit_s}s")


SERVICE_ENV = {
    "MOORAGE_IDLE_TIMEOUT_S": "0.5",
    "MOORAGE_MAX_TURNS": "50",
    "MOORAGE_LOG_LEVEL": "info",
    "MOORAGE_SANDBOX_UID_BASE": "380000",
    "MOORAGE_SANDBOX_UID_COUNT": "100",
}


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    model = ScriptedModelServer().start()
    state_dir: Path | None = None
    try:
        with run_service(model.url, **SERVICE_ENV) as service:
            state_dir = service.state_dir
            return await measure_on(args, service)
    finally:
        model.stop()
        if state_dir is not None:
            shutil.rmtree(state_dir, ignore_errors=True)


async def measure_on(args: argparse.Namespace, service: Service) -> dict[str, Any]:
    log = service.log_path
    base = f"{service.ws_url}/v1/sessions"
    db = await Database.connect(f"sqlite:///{service.state_dir / 'moorage.db'}")
    store = SQLModelSessionStore(db)
    results: dict[str, Any] = {"cold": [], "rehydrate": {}}
    try:
        await first_result(base)  # warm-up: page cache, bytecode
        for _ in range(args.runs):
            sid, t_session, t_result = await first_result(base)
            results["cold"].append({"session_s": t_session, "result_s": t_result})
            await wait_suspended(log, sid)
        for n in args.sizes:
            samples = []
            for _ in range(args.runs):
                sid, _, _ = await first_result(base)
                await wait_suspended(log, sid)
                key: SessionKey = {"project_key": TENANT, "session_id": sid}
                seed = [dict(e) for e in await store.load(key) or []]
                extra = grow(seed, n)
                for i in range(0, len(extra), 500):
                    await store.append(key, extra[i : i + 500])  # type: ignore[arg-type]
                _, t_session, t_result = await first_result(f"{base}/{sid}")
                samples.append({"entries": len(seed) + len(extra), "session_s": t_session, "result_s": t_result})
                await wait_suspended(log, sid)
            results["rehydrate"][str(n)] = samples
    finally:
        await db.close()
    return results


def median(samples: list[dict[str, Any]], field: str) -> float:
    return float(statistics.median(s[field] for s in samples))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 1000, 10000])
    parser.add_argument("--out", default="bench/results_rehydrate.json")
    args = parser.parse_args()
    results = asyncio.run(measure(args))
    cold = median(results["cold"], "result_s")
    summary: dict[str, Any] = {"cold_start_result_median_s": cold, "sizes": {}}
    print(f"{'(ms)':<34}{'session frame':>14}{'first result':>14}")
    print(f"{'new session (cold start)':<34}{median(results['cold'], 'session_s') * 1000:>14.0f}{cold * 1000:>14.0f}")
    for n, samples in results["rehydrate"].items():
        res = median(samples, "result_s")
        summary["sizes"][n] = {"session_s": median(samples, "session_s"), "result_s": res}
        label = f"rehydrate, {samples[0]['entries']} entries"
        print(f"{label:<34}{median(samples, 'session_s') * 1000:>14.0f}{res * 1000:>14.0f}")
    if "1000" in summary["sizes"]:
        over = summary["sizes"]["1000"]["result_s"] - cold
        summary["target_1000"] = {"over_cold_s": over, "target_s": 0.3, "pass": over <= 0.3}
        print(
            f"rehydrate at 1,000 entries: cold start + {over * 1000:.0f} ms (target <= +300 ms) "
            f"{'PASS' if over <= 0.3 else 'FAIL'}"
        )
    Path(args.out).write_text(json.dumps({"summary": summary, "samples": results}, indent=2))
    print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
