"""What the benches see of the host: processes, memory, cgroups, sockets, load.

Read-only views of ``/proc``; nothing here starts or stops anything. Shared by
``bench.py``, ``bench_load.py``, ``bench_store.py`` and ``bench_files.py``.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    uid: int
    state: str
    comm: str
    start: int  # clock ticks after boot: (pid, start) names one process for good
    rss_kb: int

    @property
    def alive(self) -> bool:
        return self.state not in ("Z", "X")


def read_proc(pid: int) -> Proc | None:
    try:
        uid = os.stat(f"/proc/{pid}").st_uid
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # pid (comm) state ppid ...; comm may hold spaces and parentheses.
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat.rsplit(")", 1)[-1].split()
    try:
        return Proc(pid, int(fields[1]), uid, fields[0], comm, int(fields[19]), int(fields[21]) * PAGE_KB)
    except (IndexError, ValueError):
        return None


def processes() -> list[Proc]:
    """Every process on the host, one pass over /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (proc := read_proc(int(entry))) is not None:
            found.append(proc)
    return found


def descendants(root: int, procs: list[Proc]) -> list[Proc]:
    """Live processes below ``root`` (not ``root`` itself)."""
    children: dict[int, list[Proc]] = {}
    for p in procs:
        children.setdefault(p.ppid, []).append(p)
    found: list[Proc] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child.alive:
                found.append(child)
                todo.append(child.pid)
    return found


def children(pid: int) -> list[int]:
    """Live direct children of ``pid``."""
    return [p.pid for p in processes() if p.ppid == pid and p.alive]


def in_uids(uids: range, procs: list[Proc] | None = None) -> list[Proc]:
    """Live processes running as one of ``uids``."""
    return [p for p in (processes() if procs is None else procs) if p.uid in uids and p.alive]


def still_alive(identities: set[tuple[int, int]]) -> list[tuple[int, int]]:
    """Which (pid, start) pairs name a process that still runs."""
    left = []
    for pid, start in sorted(identities):
        proc = read_proc(pid)
        if proc is not None and proc.start == start and proc.alive:
            left.append((pid, start))
    return left


def status_kb(pid: int, field: str) -> int | None:
    """A ``kB`` field of /proc/PID/status (VmHWM: peak RSS, VmRSS: now)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def pss_kb(pid: int) -> int:
    """Proportional set size: shared pages (the CLI binary) split between users."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def mem_available_kb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    return 0


def cgroup_dirs(pid: int, prefix: str = "moorage-") -> set[Path]:
    """The cgroup v1 directories of ``pid`` named ``prefix*`` (per-sandbox cgroups)."""
    from moorage.sandbox.cgroups import own_paths

    try:
        paths = own_paths(Path(f"/proc/{pid}/cgroup").read_text(), Path(f"/proc/{pid}/mountinfo").read_text())
    except (OSError, ValueError):
        return set()
    return {p for p in paths.values() if p.name.startswith(prefix)}


def unix_socket_dirs(pid: int) -> set[Path]:
    """Directories of the named unix sockets ``pid`` holds open (its listeners)."""
    inodes: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    dirs: set[Path] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 8 and parts[6] in inodes and parts[7].startswith("/"):
                dirs.add(Path(parts[7]).parent)
    return dirs


def machine(load_at_start: tuple[float, float, float]) -> dict[str, Any]:
    """The host, for the results file: other work on it skews every figure."""
    import claude_agent_sdk

    return {
        "nproc": os.cpu_count(),
        "mem_total_kb": int(Path("/proc/meminfo").read_text().split()[1]),
        "loadavg_at_start": [round(x, 2) for x in load_at_start],
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "claude_agent_sdk": claude_agent_sdk.__version__,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def write_report(path: Path, report: dict[str, Any]) -> None:
    """Write a bench's results file (JSON) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"written to {path}")


def log_records(log_path: Path) -> list[dict[str, Any]]:
    """The service's structured (JSON) log records, in order."""
    found = []
    for line in log_path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                found.append(record)
    return found


def log_issues(log_path: Path) -> list[str]:
    """Service log lines at warning level or above, and tracebacks."""
    issues: list[str] = []
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            level = str(json.loads(line).get("level", ""))
        except (ValueError, AttributeError):
            level = "error" if "Traceback" in line or " ERROR " in line or " WARNING " in line else ""
        if level in ("warning", "error", "critical", "exception"):
            issues.append(line[:500])
    return issues
