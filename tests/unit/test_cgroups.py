"""Finding the service's own cgroups and entering a sandbox's, without touching /sys."""

from __future__ import annotations

from pathlib import Path

from moorage.sandbox.cgroups import (
    ENTRY,
    V2,
    Cgroups,
    Limits,
    SandboxCgroup,
    entry_argv,
    memory_usage,
    own_paths,
    own_v2_path,
)

MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
PROC_CGROUP = """\
8:pids:/
4:memory:/process_api/abc
1:cpu:/
0::/
"""


def test_sandbox_cgroups_nest_under_the_services_own() -> None:
    """Each v1 controller resolves to the service's own cgroup directory; cgroup2 is ignored."""
    assert own_paths(PROC_CGROUP, MOUNTINFO) == {
        "pids": Path("/sys/fs/cgroup/pids"),
        "memory": Path("/sys/fs/cgroup/memory/process_api/abc"),
        "cpu": Path("/sys/fs/cgroup/cpu"),
    }


def test_the_first_process_joins_every_cgroup_before_it_becomes_the_sandbox() -> None:
    """The entry shim writes its pid to each cgroup.procs, then execs the command."""
    cg = SandboxCgroup({"memory": Path("/m/x"), "pids": Path("/p/x")})
    argv = entry_argv(cg, ["bwrap", "--", "python"])
    assert argv == [
        "sh",
        "-c",
        ENTRY,
        "moorage-cgroup",
        "2",
        "/m/x/cgroup.procs",
        "/p/x/cgroup.procs",
        "bwrap",
        "--",
        "python",
    ]
    assert entry_argv(SandboxCgroup({}), ["bwrap"]) == ["bwrap"]


V2_MOUNTINFO = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw,nsdelegate\n"


def test_on_a_v2_host_the_service_finds_its_unified_cgroup() -> None:
    """On the unified hierarchy the service's cgroup is the '0::' line under the cgroup2 mount."""
    proc = "0::/system.slice/moorage.service\n"
    assert own_v2_path(proc, V2_MOUNTINFO) == Path("/sys/fs/cgroup/system.slice/moorage.service")
    assert own_paths(proc, V2_MOUNTINFO) == {}
    assert own_v2_path(PROC_CGROUP, "") is None


def fake_v2_cgroup(root: Path, controllers: str) -> Path:
    """A directory shaped like a v2 cgroup (plain files stand in for the kernel's)."""
    root.mkdir(parents=True)
    (root / "cgroup.controllers").write_text(controllers + "\n")
    (root / "cgroup.subtree_control").write_text("\n")
    (root / "cgroup.procs").write_text("4242\n")
    return root


def test_v2_delegation_moves_the_service_to_a_leaf_and_enables_controllers(tmp_path: Path) -> None:
    """Children may only get limits once the service's cgroup holds no process and delegates the controllers."""
    base = fake_v2_cgroup(tmp_path / "moorage.service", "cpuset cpu io memory hugetlb pids")
    cgroups = Cgroups(Limits(512 * 1024**2, 64, 0.5), base={}, v2_base=base, pid=4242)
    assert cgroups.v2 == base and cgroups.available == ["v2:memory", "v2:pids", "v2:cpu"]
    assert (base / "moorage-service" / "cgroup.procs").read_text() == "4242"
    assert (base / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"


def test_v2_sandbox_cgroup_gets_memory_pids_and_cpu_limits_and_reads_its_counters(tmp_path: Path) -> None:
    """One directory per sandbox: memory.max, no swap, pids.max, cpu.max; OOM kills and refused forks counted."""
    base = fake_v2_cgroup(tmp_path / "svc", "cpu memory pids")
    cgroups = Cgroups(Limits(512 * 1024**2, 64, 0.5), base={}, v2_base=base, pid=1)
    sandbox_dir = base / "moorage-abc"
    sandbox_dir.mkdir()
    (sandbox_dir / "memory.swap.max").write_text("max")
    cg = cgroups.create("abc")
    assert cg.procs_files == [str(sandbox_dir / "cgroup.procs")]
    assert (sandbox_dir / "memory.max").read_text() == str(512 * 1024**2)
    assert (sandbox_dir / "memory.swap.max").read_text() == "0"
    assert (sandbox_dir / "pids.max").read_text() == "64"
    assert (sandbox_dir / "cpu.max").read_text() == "50000 100000"
    (sandbox_dir / "memory.events").write_text("low 0\nhigh 0\nmax 7\noom 2\noom_kill 2\n")
    (sandbox_dir / "pids.events").write_text("max 5\n")
    assert cg.oom_kills() == 2 and cg.pids_refusals() == 5


def test_a_v2_host_without_the_controllers_means_no_limits(tmp_path: Path) -> None:
    """Where memory/pids/cpu are not offered (or bound to v1), nothing is moved and no limits are claimed."""
    base = fake_v2_cgroup(tmp_path / "svc", "io")
    cgroups = Cgroups(Limits(512 * 1024**2, 64, 1.0), base={}, v2_base=base, pid=1)
    assert cgroups.v2 is None and cgroups.available == []
    assert not (base / "moorage-service").exists()


def test_a_crashed_runs_sandbox_cgroups_are_found_by_sandbox_id_and_removed(tmp_path: Path) -> None:
    """v1: one directory per controller; ``of`` finds those a sandbox left, ``close`` removes them."""
    base = {c: tmp_path / c for c in ("memory", "pids")}
    for parent in base.values():
        (parent / "moorage-abc123").mkdir(parents=True)
        (parent / "moorage-other").mkdir()
    cgroups = Cgroups(Limits(512 * 1024**2, 64, 0.5), base=base)
    left = cgroups.of("abc123")
    assert set(left.dirs) == {"memory", "pids"}
    left.close()
    assert not any((p / "moorage-abc123").exists() for p in base.values())
    assert all((p / "moorage-other").exists() for p in base.values())
    assert cgroups.of("gone").dirs == {}


def test_what_a_sandbox_holds_is_its_memory_cgroups_charge_v1_or_v2(tmp_path: Path) -> None:
    """The warm pool's memory budget measures started agents with it (pool.WarmPool._measure)."""
    v1, v2 = tmp_path / "memory", tmp_path / "unified"
    v1.mkdir()
    v2.mkdir()
    (v1 / "memory.usage_in_bytes").write_text("209715200\n")
    (v2 / "memory.current").write_text("104857600\n")
    assert memory_usage({"memory": v1, "pids": tmp_path}) == 200 * 1024**2
    assert SandboxCgroup({V2: v2}).memory_bytes() == 100 * 1024**2
    assert memory_usage({"pids": tmp_path}) is None, "no memory controller"
    assert memory_usage({"memory": tmp_path / "gone"}) is None, "removed meanwhile"
