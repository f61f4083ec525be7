"""The start-up sweep: a replica owns its state directory.

A ``kill -9`` of the service leaves behind what only a clean stop removes:
the warm pool's sandboxes (which no session record names) keep their
workspace directories and tmpfs mounts, the model proxy's socket directory
stays in /run, per-sandbox cgroups and uid lock files stay. The recovery
sweep (``SessionManager.recover``) suspends the sessions the previous run
left ``active`` and saves their workspaces; this sweep then removes
everything else under the state directory that no session of this replica
still owns, before the warm pool fills.

``decide`` is pure: given what is on disk (``Found``) and what the records
keep, the ``Plan``. ``look`` and ``carry_out`` are its thin I/O. What is
proved this replica's own, and nothing else, is touched:
- ``<state>/workspaces/<id>`` not kept, and ``<state>/probe-*`` (a preflight
  sandbox's), with the mounts below them (unmounted first, never followed);
- the cgroups ``moorage-<id>`` under this process's own cgroup whose ``<id>``
  names one of those directories (members killed, then removed);
- the socket directories named with this state dir's prefix, except the
  current one;
- the lock files of the uids that own those workspaces, only when no
  service holds the lock and no process runs as the uid.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from .metrics import SWEPT_KINDS
from .sandbox.cgroups import V2_SERVICE_LEAF, SandboxCgroup, own_paths, own_v2_path
from .sandbox.uids import UID_LOCKS, release_stale

log = structlog.get_logger(__name__)

KINDS = SWEPT_KINDS
PROBE_PREFIX = "probe-"
CGROUP_PREFIX = "moorage-"
MNT_DETACH, UMOUNT_NOFOLLOW = 2, 8


def socket_prefix(state_dir: Path) -> str:
    """The name prefix of this state dir's model-proxy socket directories."""
    digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:12]
    return f"moorage-egress-{digest}-"


@dataclass(frozen=True)
class Found:
    """What is on disk. ``workspaces`` and ``probes``: directory name -> the
    uid owning it (a probe's: its workspace's), None when unknown."""

    state_dir: Path
    workspaces: dict[str, int | None] = field(default_factory=dict)
    probes: dict[str, int | None] = field(default_factory=dict)
    mounts: tuple[Path, ...] = ()  # mount points below the state dir
    cgroups: tuple[Path, ...] = ()  # moorage-* directories under this process's cgroups
    socket_dirs: tuple[Path, ...] = ()  # directories named with this state dir's socket prefix


@dataclass(frozen=True)
class Plan:
    unmount: tuple[Path, ...] = ()  # deepest first
    remove: tuple[Path, ...] = ()  # workspace and probe directories
    cgroups: tuple[Path, ...] = ()
    socket_dirs: tuple[Path, ...] = ()
    uids: tuple[int, ...] = ()  # their lock files, if stale

    def __bool__(self) -> bool:
        return bool(self.unmount or self.remove or self.cgroups or self.socket_dirs or self.uids)


def decide(found: Found, keep: Iterable[str], current_socket_dir: Path, service_uid: int) -> Plan:
    """What to remove (pure). ``keep``: the workspace names (sandbox ids) a
    live or recovering session of this replica still needs."""
    kept = set(keep)
    workspaces_dir = found.state_dir / "workspaces"
    gone_ws = {name: uid for name, uid in found.workspaces.items() if name not in kept}
    remove = [workspaces_dir / name for name in sorted(gone_ws)]
    remove += [found.state_dir / name for name in sorted(found.probes)]
    unmount = [m for m in found.mounts if any(m == r or r in m.parents for r in remove)]
    unmount.sort(key=lambda m: len(m.parts), reverse=True)
    ids = set(gone_ws) | {name.removeprefix(PROBE_PREFIX) for name in found.probes}
    cgroups = [c for c in found.cgroups if c.name.removeprefix(CGROUP_PREFIX) in ids]
    uids = {uid for uid in (*gone_ws.values(), *found.probes.values()) if uid is not None}
    return Plan(
        unmount=tuple(unmount),
        remove=tuple(remove),
        cgroups=tuple(sorted(cgroups)),
        socket_dirs=tuple(sorted(d for d in found.socket_dirs if d != current_socket_dir)),
        uids=tuple(sorted(uids - {0, service_uid})),
    )


def mount_points(mountinfo: str, below: Path) -> tuple[Path, ...]:
    """Mount points strictly below ``below`` in a /proc/self/mountinfo text (pure)."""
    points = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        point = Path(_unescape(fields[4]))
        if below in point.parents:
            points.append(point)
    return tuple(points)


def _unescape(text: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code in ("040", "011", "012", "134"):
        text = text.replace("\\" + code, chr(int(code, 8)))
    return text


def cgroup_parents(proc_cgroup: str, mountinfo: str) -> tuple[Path, ...]:
    """The directories this process's sandbox cgroups are made in (pure):
    its own cgroup per v1 controller, or on v2 the parent of the leaf it
    moved itself into."""
    parents = set(own_paths(proc_cgroup, mountinfo).values())
    if (v2 := own_v2_path(proc_cgroup, mountinfo)) is not None:
        parents.add(v2.parent if v2.name == V2_SERVICE_LEAF else v2)
    return tuple(sorted(parents))


# -- I/O ------------------------------------------------------------------------


def _owner(path: Path) -> int | None:
    try:
        return path.lstat().st_uid
    except OSError:
        return None


def _children(path: Path) -> list[Path]:
    try:
        return sorted(path.iterdir())
    except OSError:
        return []


def look(state_dir: Path, socket_base: Path, prefix: str) -> Found:
    """What is on disk now."""
    state_dir = state_dir.resolve()
    workspaces = {p.name: _owner(p) for p in _children(state_dir / "workspaces") if not p.is_symlink()}
    probes = {
        p.name: _owner(p / "workspace")
        for p in _children(state_dir)
        if p.name.startswith(PROBE_PREFIX) and not p.is_symlink() and p.is_dir()
    }
    try:
        proc_cgroup, mountinfo = Path("/proc/self/cgroup").read_text(), Path("/proc/self/mountinfo").read_text()
    except OSError:
        proc_cgroup = mountinfo = ""
    cgroups = [
        c
        for parent in cgroup_parents(proc_cgroup, mountinfo)
        for c in _children(parent)
        if c.name.startswith(CGROUP_PREFIX) and c.name != V2_SERVICE_LEAF and c.is_dir()
    ]
    sockets = [d for d in _children(socket_base) if d.name.startswith(prefix) and not d.is_symlink() and d.is_dir()]
    return Found(state_dir, workspaces, probes, mount_points(mountinfo, state_dir), tuple(cgroups), tuple(sockets))


def carry_out(plan: Plan, lock_dir: Path = Path(UID_LOCKS)) -> dict[str, int]:
    """Remove what ``plan`` says; returns how many of each kind went (``KINDS``)."""
    done = dict.fromkeys(KINDS, 0)
    for cgroup in plan.cgroups:  # members killed first: nothing runs in what is removed next
        SandboxCgroup({"sweep": cgroup}).close()
        done["cgroup"] += not cgroup.exists()
    libc = ctypes.CDLL(None, use_errno=True)
    for point in plan.unmount:
        if libc.umount2(os.fsencode(point), MNT_DETACH | UMOUNT_NOFOLLOW) == 0:
            done["mount"] += 1
        else:
            log.error("sweep_unmount_failed", path=str(point), error=os.strerror(ctypes.get_errno()))
    for path in plan.remove:
        shutil.rmtree(path, ignore_errors=True)  # fd-relative; never follows a link
        if not path.exists():
            done["probe" if path.name.startswith(PROBE_PREFIX) else "workspace"] += 1
    for directory in plan.socket_dirs:
        shutil.rmtree(directory, ignore_errors=True)
        done["socket_dir"] += not directory.exists()
    if lock_dir.is_dir():
        for uid in plan.uids:
            with contextlib.suppress(OSError):
                done["uid_lock"] += release_stale(uid, lock_dir)
    return done
