"""What a service's sandboxes use while they run, and what they leave behind.

``sampler`` reads /proc once a second while a bench drives the service; it
records memory and load, and notes every process, cgroup and egress socket
directory the sandboxes use, so ``leftovers`` can check, once the service has
stopped, that none of them is still there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hostprobe

SAMPLE_EVERY_S = 1.0
PSS_EVERY = 5  # samples: PSS reads every process's smaps, so less often


@dataclass
class Seen:
    """What the sampler noticed of the service's sandboxes while they ran."""

    samples: list[dict[str, Any]] = field(default_factory=list)
    identities: set[tuple[int, int]] = field(default_factory=set)  # (pid, start) of every descendant
    bwraps: set[tuple[int, int]] = field(default_factory=set)
    cgroups: set[Path] = field(default_factory=set)
    socket_dirs: set[Path] = field(default_factory=set)


def sample(service_pid: int, uids: range, seen: Seen, with_pss: bool, t: float) -> None:
    procs = hostprobe.processes()
    below = hostprobe.descendants(service_pid, procs)
    sandboxed = hostprobe.in_uids(uids, procs)
    for p in below:
        identity = (p.pid, p.start)
        if identity not in seen.identities and p.comm == "bwrap":
            seen.bwraps.add(identity)
            seen.cgroups |= hostprobe.cgroup_dirs(p.pid)
        seen.identities.add(identity)
    seen.socket_dirs |= {d for d in hostprobe.unix_socket_dirs(service_pid) if "moorage" in d.name}
    record: dict[str, Any] = {
        "t_s": round(t, 2),
        "service_rss_kb": hostprobe.status_kb(service_pid, "VmRSS"),
        "sandboxes": len({p.uid for p in sandboxed}),
        "sandbox_processes": len(below),
        "sandbox_rss_kb": sum(p.rss_kb for p in below),
        "mem_available_kb": hostprobe.mem_available_kb(),
        "load1": round(os.getloadavg()[0], 2),
    }
    if with_pss:
        record["sandbox_pss_kb"] = sum(hostprobe.pss_kb(p.pid) for p in below)
    seen.samples.append(record)


async def sampler(service_pid: int, uids: range, seen: Seen, stop: asyncio.Event) -> None:
    t0 = time.monotonic()
    n = 0
    while not stop.is_set():
        await asyncio.to_thread(sample, service_pid, uids, seen, n % PSS_EVERY == 0, time.monotonic() - t0)
        n += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SAMPLE_EVERY_S)


def leftovers(seen: Seen, uids: range, db_states: dict[str, str], limit_s: float = 15.0) -> dict[str, Any]:
    """What the stopped service left behind (waits ``limit_s`` for dying processes)."""
    deadline = time.monotonic() + limit_s
    while (hostprobe.in_uids(uids) or hostprobe.still_alive(seen.identities)) and time.monotonic() < deadline:
        time.sleep(0.1)
    found = {
        "processes_of_sandbox_uids": [p.pid for p in hostprobe.in_uids(uids)],
        "sandbox_processes_alive": hostprobe.still_alive(seen.identities),
        "bwrap_alive": hostprobe.still_alive(seen.bwraps),
        "cgroup_dirs": sorted(str(d) for d in seen.cgroups if d.exists()),
        "egress_socket_dirs": sorted(str(d) for d in seen.socket_dirs if d.exists()),
        "sessions_not_suspended": {sid: s for sid, s in db_states.items() if s != "suspended"},
    }
    clean = not any(found.values())
    return {
        **found,
        "checked": {
            "sandbox_processes": len(seen.identities),
            "bwrap": len(seen.bwraps),
            "cgroup_dirs": len(seen.cgroups),
            "egress_socket_dirs": len(seen.socket_dirs),
            "sessions": len(db_states),
        },
        "clean": clean,
    }
