"""``make bench`` part 8: the toolbox (issue 17; service/moorage/sandbox/toolbox.py).

(a) Build: ``python -m moorage.sandbox.toolbox_build build`` into a fresh root, as ``make toolbox`` runs it (PyPI or the
    configured mirror, pip's cache as it is): the first build, then the no-op ``make`` pays on
    every ``make run``/``make test`` once it exists (a process: interpreter start, imports, a
    stat), ``--runs`` times.
(b) Size: the toolbox on disk (allocated bytes, ``du``) and its files.
(c) Start: a local sandbox from ``LocalBackend.start`` to the runner's ``loaded`` frame, with and
    without the toolbox mounted, ``--runs`` times each, interleaved (the two alternate, so the
    host's other work skews both alike); and the first ``import pandas, matplotlib.pyplot`` plus
    one saved chart in a fresh sandbox (a session's first plot: nothing is cached in its HOME).
(d) Environment packages (service/moorage/packages.py): a layer of ``--packages`` (from PyPI or
    ``MOORAGE_PACKAGE_INDEX_URL``) built over that toolbox, the first time and then found
    (``PackageLayers.ensure`` on a built layer: what every later session of the environment
    pays), its size, and (c)'s start with the layer mounted too, interleaved with the others.

The fresh root is removed afterwards. Figures are noisy wherever the host does other work (a CI
run on the same machine): the results carry the host's load at start and end (hostprobe).
Results: ``bench/results-toolbox.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from moorage.channel import Loaded
from moorage.packages import PackageLayers
from moorage.packages import builder as package_builder
from moorage.sandbox.base import SandboxSpec
from moorage.sandbox.local import LocalBackend
from moorage.workspaces import remove_workspace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from hostprobe import machine, write_report

ROOT = Path(__file__).resolve().parent.parent
FIRST_CHART = (
    "import subprocess, time\n"
    "t = time.monotonic()\n"
    "subprocess.run(['python3', '-c', 'import pandas, matplotlib.pyplot as plt; plt.plot([1, 2]); "
    'plt.savefig("/tmp/c.png")\'], check=True)\n'
    "print('chart', time.monotonic() - t)\n"
)


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median_s": round(statistics.median(ordered), 3),
        "min_s": round(ordered[0], 3),
        "max_s": round(ordered[-1], 3),
        "p90_s": round(ordered[max(0, round(0.9 * len(ordered)) - 1)], 3),
    }


def build(lock: Path, root: Path) -> tuple[Path, float]:
    """The build as make runs it: (the toolbox, seconds)."""
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "moorage.sandbox.toolbox_build", "build", "--lock", str(lock), "--root", str(root)],
        capture_output=True,
        text=True,
        check=False,
    )
    took = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"the toolbox build failed:\n{done.stderr[-3000:]}")
    return Path(done.stdout.strip()), took


def disk_usage(path: Path) -> dict[str, int]:
    allocated = apparent = files = 0
    for top, _dirs, names in os.walk(path):
        for name in names:
            st = os.lstat(os.path.join(top, name))
            allocated += st.st_blocks * 512
            apparent += st.st_size
            files += 1
    return {"allocated_bytes": allocated, "apparent_bytes": apparent, "files": files}


async def start_to_loaded(backend: LocalBackend, sock: Path, scratch: Path, layer: Path | None = None) -> float:
    """One sandbox: seconds from ``start`` to the runner's ``loaded``; then stopped and cleaned."""
    name = secrets.token_hex(6)
    spec = SandboxSpec(name, name, scratch / name / "workspace", sock, packages=layer)
    t0 = time.perf_counter()
    sandbox = await backend.start(spec)
    try:
        while True:
            frame = await asyncio.wait_for(sandbox.recv(), backend.start_timeout_s)
            if frame is None:
                raise RuntimeError("the sandbox ended before it loaded")
            if isinstance(frame, Loaded):
                return time.perf_counter() - t0
    finally:
        await sandbox.stop(2.0)
        await asyncio.to_thread(remove_workspace, spec.workspace)
        shutil.rmtree(scratch / name, ignore_errors=True)


async def layer_builds(toolbox: Path, packages: list[str], runs: int, root: Path) -> tuple[Path, dict[str, Any]]:
    """A layer of ``packages`` over ``toolbox``: built once, then found ``runs`` times."""
    builder = package_builder(toolbox, os.environ.get("MOORAGE_PACKAGE_INDEX_URL", ""), 600.0)
    layers = PackageLayers(root, builder)
    spec = {"config": {"packages": {"pip": packages}}}
    t0 = time.perf_counter()
    layer = await layers.ensure(spec)
    first = time.perf_counter() - t0
    assert layer is not None
    found = []
    for _ in range(runs):
        t0 = time.perf_counter()
        await layers.ensure(spec)
        found.append(time.perf_counter() - t0)
    return layer, {
        "packages": packages,
        "first_build_s": round(first, 2),
        "found_median_ms": round(statistics.median(found) * 1000, 3),
        "size": disk_usage(layer),
    }


async def starts(toolbox: Path, runs: int, scratch: Path, layer: Path) -> dict[str, Any]:
    backends = {
        "without": LocalBackend(scratch / "without", 231_000, 8),
        "with": LocalBackend(scratch / "with", 231_010, 8, toolbox=toolbox),
        "with_layer": LocalBackend(scratch / "with_layer", 231_020, 8, toolbox=toolbox),
    }
    for backend in backends.values():
        await backend.check()
    timings: dict[str, list[float]] = {kind: [] for kind in backends}
    socket_dir = Path(tempfile.mkdtemp(prefix="moorage-bench-"))  # AF_UNIX paths end at 108 bytes
    try:
        with socket.socket(socket.AF_UNIX) as model:
            model.bind(str(socket_dir / "m.sock"))
            for i in range(runs):
                order = list(backends) if i % 2 == 0 else list(reversed(backends))
                for kind in order:
                    mounted = layer if kind == "with_layer" else None
                    timings[kind].append(await start_to_loaded(backends[kind], socket_dir / "m.sock", scratch, mounted))
            charts = []
            for _ in range(max(1, runs // 2)):
                code, out, err = await backends["with"].run_python("chart", FIRST_CHART, 120)
                if code != 0:
                    raise RuntimeError(f"the first chart failed: {err[-2000:]}")
                charts.append(float(out.split()[-1]))
    finally:
        shutil.rmtree(socket_dir, ignore_errors=True)
        for backend in backends.values():
            await backend.close()
    return {
        "start_to_loaded": {kind: {**summary(v), "runs_s": [round(x, 3) for x in v]} for kind, v in timings.items()},
        "added_median_s": round(statistics.median(timings["with"]) - statistics.median(timings["without"]), 3),
        "layer_added_median_s": round(statistics.median(timings["with_layer"]) - statistics.median(timings["with"]), 3),
        "first_chart_in_a_fresh_sandbox": {**summary(charts), "runs_s": [round(x, 3) for x in charts]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lock", type=Path, default=ROOT / "container" / "toolbox.txt")
    parser.add_argument("--runs", type=int, default=6, help="cached builds, and sandbox starts of each kind")
    parser.add_argument(
        "--packages", nargs="+", default=["tabulate==0.9.0", "python-slugify==8.0.4"], help="an environment's pip"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results-toolbox.json")
    args = parser.parse_args()
    load_at_start = os.getloadavg()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "moorage"
    cache.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="bench-toolbox-", dir=cache))
    try:
        toolbox, first = build(args.lock, root)
        cached = [build(args.lock, root)[1] for _ in range(args.runs)]
        size = disk_usage(toolbox)
        print(f"toolbox: first build {first:.1f} s, cached {statistics.median(cached):.2f} s, {size}")
        layer, packages = asyncio.run(layer_builds(toolbox, args.packages, args.runs, root / "layers"))
        print(f"environment packages {args.packages}: {packages}")
        with tempfile.TemporaryDirectory(prefix="bench-toolbox-state-", dir=cache) as scratch:
            start = asyncio.run(starts(toolbox, args.runs, Path(scratch), layer))
        print(f"start to loaded: {start['start_to_loaded']}; first chart: {start['first_chart_in_a_fresh_sandbox']}")
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(root)], check=False)  # the toolbox is read-only
        shutil.rmtree(root, ignore_errors=True)
    write_report(
        args.out,
        {
            "bench": "toolbox",
            "lock": str(args.lock.relative_to(ROOT) if args.lock.is_relative_to(ROOT) else args.lock),
            "build": {
                "first_s": round(first, 1),
                "cached": {**summary(cached), "runs_s": [round(x, 3) for x in cached]},
            },
            "size": size,
            "environment_packages": packages,
            **start,
            "note": "noisy where the host does other work (e.g. a CI run): see machine.loadavg_*",
            "machine": machine(load_at_start),
        },
    )


if __name__ == "__main__":
    main()
