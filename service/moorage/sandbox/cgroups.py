"""Per-sandbox resource limits with cgroups (memory, pids, cpu), v1 or v2.

cgroup v1 (hybrid hosts, many containers): each sandbox gets
``<controller mount>/<the service's own cgroup>/moorage-<id>`` per controller,
nested under the service so the limits compose with whatever confines it.
Counters: ``memory.oom_control``'s ``oom_kill``, ``pids.events``' ``max``.

cgroup v2 (the unified hierarchy: current Debian, Ubuntu, Fedora): one
directory per sandbox, ``<the service's cgroup>/moorage-<id>``. v2 allows
controllers for children only in a cgroup with no processes of its own, so
the service first moves itself into a leaf (``moorage-service``) and enables
memory, pids and cpu in its cgroup's ``cgroup.subtree_control`` (the
"delegated subtree" pattern container runtimes use; under systemd, run the
unit with ``Delegate=yes``). Limits: ``memory.max`` (+ ``memory.swap.max``
0), ``pids.max``, ``cpu.max``; counters: ``memory.events``' ``oom_kill``,
``pids.events``' ``max``. This path follows the kernel's cgroup-v2 document
and is unit-tested against a file tree; the machines this project is built
on are cgroup v1, so it has not yet run against a real v2 kernel.

Either way the sandbox's first process joins its cgroup(s) before it execs
bwrap (``entry_argv``), so everything it starts is counted.
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


V2 = "unified"  # the key of a v2 sandbox's single directory
V2_SERVICE_LEAF = "moorage-service"


def own_v2_path(proc_cgroup: str, mountinfo: str) -> Path | None:
    """This process's cgroup directory on the unified (v2) hierarchy."""
    mount = next(
        (
            Path(line.split()[4])
            for line in mountinfo.splitlines()
            if line.partition(" - ")[2].split()[:1] == ["cgroup2"]
        ),
        None,
    )
    path = next((line[3:] for line in proc_cgroup.splitlines() if line.startswith("0::")), None)
    if mount is None or path is None:
        return None
    return mount / path.lstrip("/")


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
        if V2 in self.dirs:
            return _counter(self.dirs[V2], "memory.events", "oom_kill")
        return _counter(self.dirs.get("memory"), "memory.oom_control", "oom_kill")

    def pids_refusals(self) -> int:
        return _counter(self.dirs.get(V2) or self.dirs.get("pids"), "pids.events", "max")

    def memory_bytes(self) -> int | None:
        return memory_usage(self.dirs)

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


def memory_usage(dirs: dict[str, Path]) -> int | None:
    """What a cgroup's processes hold now, in bytes, as charged to it (v2 ``memory.current``, v1
    ``memory.usage_in_bytes``: anonymous memory, page cache and tmpfs pages), or None when no
    memory controller can be read."""
    name, directory = ("memory.current", dirs[V2]) if V2 in dirs else ("memory.usage_in_bytes", dirs.get("memory"))
    if directory is None:
        return None
    with contextlib.suppress(OSError, ValueError):
        return int((directory / name).read_text().strip())
    return None


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
    """Creates sandbox cgroups under this process's own, if the host lets us:
    v1 controllers where the host mounts them, else the v2 hierarchy."""

    def __init__(
        self, limits: Limits, base: dict[str, Path] | None = None, v2_base: Path | None = None, pid: int | None = None
    ) -> None:
        self.limits = limits
        self.v2: Path | None = None
        if base is None and v2_base is None:
            try:
                proc_cgroup, mountinfo = Path("/proc/self/cgroup").read_text(), Path("/proc/self/mountinfo").read_text()
            except OSError:
                proc_cgroup = mountinfo = ""
            base = own_paths(proc_cgroup, mountinfo)
            v2_base = own_v2_path(proc_cgroup, mountinfo)
        self.base = {c: p for c, p in (base or {}).items() if os.access(p, os.W_OK)}
        if not self.base and v2_base is not None:
            self.v2 = delegate_v2(v2_base, os.getpid() if pid is None else pid)

    @property
    def available(self) -> list[str]:
        return [f"v2:{c}" for c in CONTROLLERS] if self.v2 is not None else sorted(self.base)

    def create(self, sandbox_id: str) -> SandboxCgroup:
        if self.v2 is not None:
            return self._create_v2(sandbox_id)
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

    def of(self, sandbox_id: str) -> SandboxCgroup:
        """The cgroups a sandbox of this id left, if any (a crashed run's: to remove)."""
        parents = {V2: self.v2} if self.v2 is not None else self.base
        return SandboxCgroup({k: d for k, p in parents.items() if (d := p / f"moorage-{sandbox_id}").is_dir()})

    def _create_v2(self, sandbox_id: str) -> SandboxCgroup:
        assert self.v2 is not None
        d = self.v2 / f"moorage-{sandbox_id}"
        d.mkdir(exist_ok=True)
        cg = SandboxCgroup({V2: d})
        try:
            (d / "memory.max").write_text(str(self.limits.memory_bytes))
            swap = d / "memory.swap.max"
            if swap.exists():
                swap.write_text("0")
            (d / "pids.max").write_text(str(self.limits.pids))
            (d / "cpu.max").write_text(f"{int(PERIOD_US * self.limits.cpus)} {PERIOD_US}")
        except OSError:
            cg.close()
            raise
        return cg


def delegate_v2(base: Path, pid: int) -> Path | None:
    """Make ``base`` (this service's v2 cgroup) able to hold limited
    children: move the service into a leaf, enable the controllers. None when
    the host does not offer them or does not let us (no writable cgroup)."""
    try:
        offered = (base / "cgroup.controllers").read_text().split()
        if not all(c in offered for c in CONTROLLERS) or not os.access(base, os.W_OK):
            return None
        enabled = (base / "cgroup.subtree_control").read_text().split()
        if not all(c in enabled for c in CONTROLLERS):
            leaf = base / V2_SERVICE_LEAF
            leaf.mkdir(exist_ok=True)
            # Every process in our cgroup (us, and anything started with us).
            for member in (base / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    (leaf / "cgroup.procs").write_text(member)
            (leaf / "cgroup.procs").write_text(str(pid))
            (base / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in CONTROLLERS))
    except OSError:
        return None
    return base


def entry_argv(cg: SandboxCgroup, argv: list[str]) -> list[str]:
    """``argv``, started from inside the sandbox's cgroups."""
    files = cg.procs_files
    if not files:
        return argv
    return ["sh", "-c", ENTRY, "moorage-cgroup", str(len(files)), *files, *argv]
