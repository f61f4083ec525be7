"""The leak audit: what a stopped service left on the host.

After a service (``support.run_service``) has stopped, nothing of it may
remain: no process running as a sandbox uid it used (started while it ran:
the uid may be another service's by now), no mount, workspace or probe
directory under its state dir, no cgroup of its sandboxes, no model-proxy
socket directory. Services that share a state dir (a kill -9, then a
restart) are audited together, once the last of them has stopped; when
that last one was killed (no restart swept after it), nothing is asserted
and the test's leftovers are swept with the service's own sweep, so the
host does not collect mounts run after run.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from moorage.egress import socket_base
from moorage.sweep import carry_out, cgroup_parents, decide, look, mount_points, socket_prefix
from support import STARTED, Service, events, processes_of_uid, scaled

AUDIT_TIMEOUT_S = 15.0  # for asynchronous teardown (processes exiting): a bounded poll, not a sleep
_audited: set[int] = set()  # ids of services already audited
FAILED_TESTS: set[str] = set()  # node ids of failed tests: their services' state dirs (logs) are kept


def _started_at(pid: int) -> float | None:
    """A process's start, in CLOCK_BOOTTIME seconds."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in (b"Z", b"X"):
        return None  # a zombie holds nothing
    return int(fields[19]) / os.sysconf("SC_CLK_TCK")


def cgroups_of(pid: int) -> set[str]:
    """The Moorage sandbox cgroups (``moorage-<id>``) a process is in."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return set()
    return {part for line in text.splitlines() for part in line.split("/") if part.startswith("moorage-")}


def _processes_left(service: Service) -> list[str]:
    """Processes of the sandboxes ``service`` started. A uid is given back when
    its sandbox stops and may be another service's since: a process counts
    when it sits in one of this service's sandbox cgroups or, on a host
    without them, started while this service ran."""
    started = events(service, "sandbox_started")
    ours = {f"moorage-{e.get('sandbox_id')}" for e in started}
    stopped_at = service.stopped_at or time.clock_gettime(time.CLOCK_BOOTTIME)
    found = []
    for uid in sorted({e["uid"] for e in started if isinstance(e.get("uid"), int)}):
        for pid in processes_of_uid(uid):
            at, cgroups = _started_at(pid), cgroups_of(pid)
            if at is None:
                continue
            if cgroups & ours or (not cgroups and service.started_at <= at <= stopped_at):
                found.append(f"process {pid} running as sandbox uid {uid}")
    return found


def leftovers(services: list[Service]) -> list[str]:
    """What the (stopped) services of one state dir left, each named."""
    state = services[0].state_dir.resolve()
    found = [p for s in services for p in _processes_left(s)]
    started = [e for s in services for e in events(s, "sandbox_started")]
    mountinfo = Path("/proc/self/mountinfo").read_text()
    found += [f"mount {m}" for m in mount_points(mountinfo, state)]
    found += [f"directory {d}" for d in _children(state / "workspaces")]
    found += [f"directory {d}" for d in _children(state) if d.name.startswith("probe-")]
    parents = cgroup_parents(Path("/proc/self/cgroup").read_text(), mountinfo)
    for sandbox_id in sorted({str(e.get("sandbox_id")) for e in started}):
        found += [f"cgroup {p / f'moorage-{sandbox_id}'}" for p in parents if (p / f"moorage-{sandbox_id}").exists()]
    prefix = socket_prefix(state)
    found += [f"socket directory {d}" for d in _children(Path(socket_base())) if d.name.startswith(prefix)]
    return found


def _children(path: Path) -> list[Path]:
    try:
        return sorted(path.iterdir())
    except OSError:
        return []


def audit(services: list[Service]) -> None:
    """Fail, naming each leftover, unless the services left nothing (bounded poll)."""
    deadline = time.monotonic() + scaled(AUDIT_TIMEOUT_S)
    while left := leftovers(services):
        if time.monotonic() > deadline:
            who = ", ".join(sorted({s.started_by or "?" for s in services}))
            raise AssertionError(
                f"the service(s) of {services[0].state_dir} (started by {who}) left, after stopping: " + "; ".join(left)
            )
        time.sleep(0.05)


def sweep_after_kill(state_dir: Path) -> None:
    """What a killed service left that no restart swept: removed, not judged."""
    state = state_dir.resolve()
    found = look(state, Path(socket_base()), socket_prefix(state))
    carry_out(decide(found, keep=(), current_socket_dir=Path("/nonexistent"), service_uid=os.geteuid()))


def _remove_test_dir(state_dir: Path) -> None:
    """A state dir ``run_service`` made (``moorage-test-*`` in the temp dir): removed once audited
    clean, so runs do not pile directories up in /tmp. A state dir a test chose is its own."""
    state = state_dir.resolve()
    if state.parent == Path(tempfile.gettempdir()).resolve() and state.name.startswith("moorage-test-"):
        shutil.rmtree(state, ignore_errors=True)


def audit_stopped(services: Iterable[Service] | None = None) -> None:
    """Audit every state dir whose services have all stopped and were not audited yet."""
    by_dir: dict[Path, list[Service]] = {}
    for service in STARTED if services is None else services:
        by_dir.setdefault(service.state_dir.resolve(), []).append(service)
    failures = []
    for group in by_dir.values():
        if any(s.stopped_at is None for s in group) or all(id(s) in _audited for s in group):
            continue
        _audited.update(id(s) for s in group)
        if group[-1].proc.returncode == -signal.SIGKILL:
            sweep_after_kill(group[-1].state_dir)
            continue
        try:
            audit(group)
        except AssertionError as exc:
            failures.append(str(exc))
            sweep_after_kill(group[-1].state_dir)  # reported; not left to pile up on the host
        else:
            if not any((svc.started_by or "").split(" ")[0] in FAILED_TESTS for svc in group):
                _remove_test_dir(group[0].state_dir)  # only the logs of a test that passed are left in it
    if failures:
        raise AssertionError("\n".join(failures))
