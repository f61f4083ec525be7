"""The start-up sweep's decisions (pure), and the stale uid lock removal."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest
from moorage.sandbox import uids
from moorage.sweep import Found, Plan, cgroup_parents, decide, mount_points, socket_prefix

STATE = Path("/srv/moorage")
WS = STATE / "workspaces"
SOCKETS = Path("/run/moorage-egress-abc-")
CURRENT = Path("/run/moorage-egress-abc-now")
ME = 0


def test_a_crashed_runs_pool_workspaces_and_their_mounts_go() -> None:
    """The warm pool's workspaces (no record names them) are unmounted, then removed."""
    found = Found(STATE, workspaces={"pool1": 200_001, "pool2": 200_002}, mounts=(WS / "pool1", WS / "pool2"))
    plan = decide(found, keep=(), current_socket_dir=CURRENT, service_uid=ME)
    assert plan.unmount == (WS / "pool1", WS / "pool2")
    assert plan.remove == (WS / "pool1", WS / "pool2")
    assert plan.uids == (200_001, 200_002)


def test_a_workspace_a_session_still_needs_is_kept_with_its_mount_cgroup_and_uid() -> None:
    """What an unsuspended session of this replica owns is not touched."""
    found = Found(
        STATE,
        workspaces={"kept": 200_001, "gone": 200_002},
        mounts=(WS / "kept", WS / "gone"),
        cgroups=(Path("/sys/fs/cgroup/memory/moorage-kept"), Path("/sys/fs/cgroup/memory/moorage-gone")),
    )
    plan = decide(found, keep={"kept"}, current_socket_dir=CURRENT, service_uid=ME)
    assert plan.remove == (WS / "gone",)
    assert plan.unmount == (WS / "gone",)
    assert plan.cgroups == (Path("/sys/fs/cgroup/memory/moorage-gone"),)
    assert plan.uids == (200_002,)


def test_mounts_are_unmounted_deepest_first_and_only_below_what_goes() -> None:
    found = Found(
        STATE,
        workspaces={"a": None},
        probes={"probe-preflight-1234": 200_005},
        mounts=(
            WS / "a",
            WS / "a" / "nested",
            STATE / "probe-preflight-1234" / "workspace",
            STATE / "volume",  # an operator's mount: not ours to remove
        ),
    )
    plan = decide(found, keep=(), current_socket_dir=CURRENT, service_uid=ME)
    assert plan.unmount[0] == WS / "a" / "nested"
    assert set(plan.unmount) == {WS / "a", WS / "a" / "nested", STATE / "probe-preflight-1234" / "workspace"}
    assert STATE / "probe-preflight-1234" in plan.remove
    assert plan.uids == (200_005,)  # unknown owner: no uid


def test_only_cgroups_named_after_removed_sandboxes_go() -> None:
    """Another service sharing the cgroup has its own sandbox ids: its cgroups stay."""
    parent = Path("/sys/fs/cgroup/pids")
    found = Found(
        STATE,
        workspaces={"abc123": 200_001},
        probes={"probe-preflight-77": None},
        cgroups=(parent / "moorage-abc123", parent / "moorage-preflight-77", parent / "moorage-someone-elses"),
    )
    plan = decide(found, keep=(), current_socket_dir=CURRENT, service_uid=ME)
    assert plan.cgroups == (parent / "moorage-abc123", parent / "moorage-preflight-77")


def test_the_current_socket_dir_stays_and_the_crashed_runs_go() -> None:
    old = Path("/run/moorage-egress-abc-old")
    found = Found(STATE, socket_dirs=(old, CURRENT))
    plan = decide(found, keep=(), current_socket_dir=CURRENT, service_uid=ME)
    assert plan.socket_dirs == (old,)


def test_root_and_the_service_uid_are_never_sandbox_uids() -> None:
    found = Found(STATE, workspaces={"k8s": 0, "unprivileged": 1234, "sandbox": 200_000})
    assert decide(found, keep=(), current_socket_dir=CURRENT, service_uid=1234).uids == (200_000,)


def test_nothing_left_means_nothing_to_do() -> None:
    found = Found(STATE, workspaces={"live": 200_001}, socket_dirs=(CURRENT,))
    assert not decide(found, keep={"live"}, current_socket_dir=CURRENT, service_uid=ME)
    assert Plan(remove=(WS / "x",))


def test_socket_prefix_is_per_state_dir_and_short() -> None:
    a, b = socket_prefix(Path("/srv/a")), socket_prefix(Path("/srv/b"))
    assert a != b and a.startswith("moorage-egress-") and len(a) < 30
    assert socket_prefix(Path("/srv/a")) == a


def test_mount_points_below_the_state_dir_are_read_from_mountinfo() -> None:
    mountinfo = (
        "23 1 0:21 / / rw - overlay overlay rw\n"
        "90 23 0:50 / /srv/moorage/workspaces/ab rw,nosuid,nodev - tmpfs moorage-workspace rw,size=1024\n"
        "91 23 0:51 / /srv/moorage/workspaces/with\\040space rw - tmpfs moorage-workspace rw\n"
        "92 23 0:52 / /srv/moorage rw - ext4 /dev/sdb rw\n"
        "93 23 0:53 / /srv/moorage-other/workspaces/x rw - tmpfs moorage-workspace rw\n"
    )
    assert mount_points(mountinfo, STATE) == (WS / "ab", WS / "with space")


def test_cgroup_parents_v1_and_v2() -> None:
    v1_mountinfo = (
        "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
        "39 31 0:36 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n"
    )
    v1 = cgroup_parents("4:memory:/svc\n8:pids:/\n", v1_mountinfo)
    assert v1 == (Path("/sys/fs/cgroup/memory/svc"), Path("/sys/fs/cgroup/pids"))
    v2_mountinfo = "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    assert cgroup_parents("0::/svc/moorage-service\n", v2_mountinfo) == (Path("/sys/fs/cgroup/svc"),)


def test_a_stale_lock_file_is_removed_and_a_held_one_is_not(tmp_path: Path) -> None:
    """Unlinked only while nobody holds it; a holder keeps its file."""
    uid = 2_000_000_001  # no process runs as it
    (tmp_path / f"{uid}.lock").touch()
    assert uids.release_stale(uid, tmp_path)
    assert not (tmp_path / f"{uid}.lock").exists()
    held = uids._flock(tmp_path / f"{uid}.lock")
    assert held is not None
    try:
        assert not uids.release_stale(uid, tmp_path)
        assert (tmp_path / f"{uid}.lock").exists()
    finally:
        os.close(held)


def test_a_lock_taken_on_a_file_unlinked_meanwhile_is_taken_again_on_the_new_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep unlinks a lock file between another service's open and flock:
    that service must not believe it holds the uid on the orphaned file."""
    path = tmp_path / "7.lock"
    real_flock = fcntl.flock
    calls: list[int] = []

    def flock_after_unlink(fd: int, op: int) -> None:
        real_flock(fd, op)
        if not calls:  # the sweep wins the race once
            path.unlink()
        calls.append(fd)

    monkeypatch.setattr(fcntl, "flock", flock_after_unlink)
    fd = uids._flock(path)
    assert fd is not None and len(calls) == 2
    try:
        assert os.fstat(fd).st_ino == os.stat(path).st_ino
    finally:
        os.close(fd)
