"""Per-sandbox resource limits with cgroup v1 controllers (memory, pids, cpu).

Each sandbox gets ``<controller mount>/<the service's own cgroup>/moorage-<id>``
per controller, nested under the service so the limits compose with whatever
confines the service. The sandbox's first process joins them before it
execs bwrap (``entry_argv``), so everything it starts is counted. Counters
(``memory.oom_control``'s ``oom_kill``, ``pids.events``' ``max``) tell the
service when a limit bit. cgroup v2-only hosts are not handled yet: there the
sandbox runs without these limits and the service says so at start.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

CONTROLLERS = ("memory", "pids", "cpu")
PERIOD_US = 100_000
# $1 = how many cgroup.procs files follow; the process writes its pid into
# each, then becomes the rest of the command line.
ENTRY = 'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 97; shift; n=$((n-1)); done; exec "$@"'


def own_paths(proc_cgroup: str, mountinfo: str) -> dict[str, Path]:
    """Controller -> the directory of this process's cgroup (v1 mounts only)."""
    mounts: dict[str, Path] = {}
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, extra = left.split(), right.split()
        if len(extra) >= 3 and extra[0] == "cgroup":
            for option in extra[2].split(","):
                if option in CONTROLLERS:
                    mounts[option] = Path(fields[4])
    paths: dict[str, Path] = {}
    for line in proc_cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(","):
            if controller in mounts:
                paths[controller] = mounts[controller] / path.lstrip("/")
    return paths


@dataclass(frozen=True)
class Limits:
    memory_bytes: int
    pids: int
    cpus: float


class SandboxCgroup:
    """The cgroups of one sandbox; ``close`` removes them once it is empty."""

    def __init__(self, dirs: dict[str, Path]) -> None:
        self.dirs = dirs

    @property
    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs.values()]

    def oom_kills(self) -> int:
        return _counter(self.dirs.get("memory"), "memory.oom_control", "oom_kill")

    def pids_refusals(self) -> int:
        return _counter(self.dirs.get("pids"), "pids.events", "max")

    def kill_all(self) -> None:
        for d in self.dirs.values():
            with contextlib.suppress(OSError, ValueError):
                for pid in (d / "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(int(pid), 9)

    def close(self, deadline_s: float = 5.0) -> None:
        deadline = time.monotonic() + deadline_s
        for d in self.dirs.values():
            while d.exists():
                try:
                    d.rmdir()
                except OSError:  # still has (dying) members
                    if time.monotonic() > deadline:
                        break
                    self.kill_all()
                    time.sleep(0.01)


def _counter(directory: Path | None, name: str, key: str) -> int:
    if directory is None:
        return 0
    with contextlib.suppress(OSError, ValueError):
        for line in (directory / name).read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == key:
                return int(parts[1])
    return 0


class Cgroups:
    """Creates sandbox cgroups under this process's own, if the host lets us."""

    def __init__(self, limits: Limits, base: dict[str, Path] | None = None) -> None:
        self.limits = limits
        if base is None:
            try:
                base = own_paths(Path("/proc/self/cgroup").read_text(), Path("/proc/self/mountinfo").read_text())
            except OSError:
                base = {}
        self.base = {c: p for c, p in base.items() if os.access(p, os.W_OK)}

    @property
    def available(self) -> list[str]:
        return sorted(self.base)

    def create(self, sandbox_id: str) -> SandboxCgroup:
        dirs: dict[str, Path] = {}
        for controller, base in self.base.items():
            d = base / f"moorage-{sandbox_id}"
            d.mkdir(exist_ok=True)
            dirs[controller] = d
        cg = SandboxCgroup(dirs)
        try:
            if "memory" in dirs:
                (dirs["memory"] / "memory.limit_in_bytes").write_text(str(self.limits.memory_bytes))
                swap = dirs["memory"] / "memory.memsw.limit_in_bytes"
                if swap.exists():
                    swap.write_text(str(self.limits.memory_bytes))
            if "pids" in dirs:
                (dirs["pids"] / "pids.max").write_text(str(self.limits.pids))
            if "cpu" in dirs:
                (dirs["cpu"] / "cpu.cfs_period_us").write_text(str(PERIOD_US))
                (dirs["cpu"] / "cpu.cfs_quota_us").write_text(str(int(PERIOD_US * self.limits.cpus)))
        except OSError:
            cg.close()
            raise
        return cg


def entry_argv(cg: SandboxCgroup, argv: list[str]) -> list[str]:
    """``argv``, started from inside the sandbox's cgroups."""
    files = cg.procs_files
    if not files:
        return argv
    return ["sh", "-c", ENTRY, "moorage-cgroup", str(len(files)), *files, *argv]
