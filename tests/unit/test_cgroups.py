"""Finding the service's own cgroups and entering a sandbox's, without touching /sys."""

from __future__ import annotations

from pathlib import Path

from moorage.sandbox.cgroups import ENTRY, SandboxCgroup, entry_argv, own_paths

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
