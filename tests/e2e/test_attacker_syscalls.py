"""Attacker tests for the sandbox's last walls: the seccomp filter, and the
sizes of its writable filesystems (workspace, /tmp), tried from the agent's
Bash tool. One service for the module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from attacker_probes import SYSCALLS, run_probe
from moorage.testing.scripted_model import ScriptedModelServer
from support import Client, Service, result_of, run_service, tool_output

MIB = 1024 * 1024
WORKSPACE_BYTES = 32 * MIB
TMP_BYTES = 32 * MIB
AT_FDCWD = -100
CLONE_NEWUSER = 0x10000000
CLONE_NEWNS = 0x00020000
SIGCHLD = 17
X32 = 0x40000000

# (name, x86_64 number, arguments). Arguments are chosen so that a call the
# filter lets through answers something other than EPERM/ENOSYS where the
# kernel allows it unprivileged (unshare, clone, ptrace, the keyring,
# userfaultfd, open_tree, io_uring, perf, move_mount).
CALLS: list[tuple[str, int, object]] = [
    ("mount", 165, ["none", "/tmp", "tmpfs", 0, 0]),
    ("umount2", 166, ["/nonexistent", 0]),
    ("pivot_root", 155, ["/tmp", "/tmp"]),
    ("chroot", 161, ["/tmp"]),
    ("fsopen", 430, ["tmpfs", 0]),
    ("open_tree", 428, [AT_FDCWD, "/tmp", 0]),
    ("move_mount", 429, [-1, "", -1, "", 0]),
    ("open_by_handle_at", 304, [AT_FDCWD, 0, 0]),
    ("name_to_handle_at", 303, [AT_FDCWD, "/tmp", 0, 0, 0]),
    ("swapon", 167, ["/tmp/none", 0]),
    ("swapoff", 168, ["/tmp/none"]),
    ("unshare(user)", 272, [CLONE_NEWUSER]),
    ("unshare(mount)", 272, [CLONE_NEWNS]),
    ("clone(user)", 56, [CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0]),
    ("setns", 308, "fork-fd"),
    ("ptrace(traceme)", 101, [0, 0, 0, 0]),
    ("process_vm_readv", 310, [1, 0, 0, 0, 0, 0]),
    ("kexec_load", 246, [0, 0, 0, 0]),
    ("kexec_file_load", 320, [-1, -1, 0, "", 0]),
    ("init_module", 175, [0, 0, ""]),
    ("finit_module", 313, [-1, "", 0]),
    ("delete_module", 176, ["moorage_none", 0]),
    ("reboot(cad_off)", 169, [0xFEE1DEAD, 672274793, 0, 0]),
    ("bpf", 321, [0, 0, 0]),
    ("perf_event_open", 298, [0, 0, -1, -1, 0]),
    ("userfaultfd(user mode)", 323, [1]),
    ("keyctl", 250, [0, -3, 0]),
    ("add_key", 248, ["user", "moorage-probe", "x", 1, -2]),
    ("request_key", 249, ["user", "moorage-none", 0, 0]),
    ("syslog", 103, [10, 0, 0]),
    ("acct", 163, [0]),
    ("io_uring_setup", 425, [1, 0]),
    ("clone3", 435, [0, 0]),
    ("x32 unshare(user)", X32 | 272, [CLONE_NEWUSER]),
]


@pytest.fixture(scope="module")
def svc(model: ScriptedModelServer) -> Iterator[Service]:
    with run_service(
        model.url,
        MOORAGE_WORKSPACE_MAX_BYTES=str(WORKSPACE_BYTES),
        MOORAGE_SANDBOX_TMP_BYTES=str(TMP_BYTES),
        MOORAGE_SESSION_FILES_BYTES=str(TMP_BYTES),
    ) as service:
        yield service


async def test_escape_system_calls_are_refused_by_a_seccomp_filter(svc: Service) -> None:
    """Mounts, new namespaces, ptrace, kernel modules, kexec, bpf, perf, keyrings, userfaultfd, io_uring
    and x32 aliases are all refused (EPERM/ENOSYS, or the caller killed), under an active seccomp filter."""
    client = await Client.connect(svc)
    result = await run_probe(client, SYSCALLS, calls=CALLS)
    assert result["seccomp"] == "2" and int(result["filters"] or 0) >= 1, result
    allowed = {
        name: outcome
        for name, outcome in result["calls"].items()
        if outcome not in ("EPERM", "ENOSYS") and not outcome.startswith("killed")
    }
    assert allowed == {}
    assert result_of(await client.turn("say still fine"))["result"] == "still fine"
    await client.close()


async def test_filling_the_workspace_stops_at_its_size(svc: Service) -> None:
    """Writes past MOORAGE_WORKSPACE_MAX_BYTES fail with ENOSPC; the client hears workspace_full; work goes on."""
    client = await Client.connect(svc)
    await client.say("bash dd if=/dev/zero of=/workspace/fill bs=1M count=96 2>&1")
    frames = await client.until("result", timeout=60)
    assert "No space left on device" in tool_output(frames)
    if not any(f["type"] == "error" for f in frames):  # the notice may come before or after the result
        frames += await client.until("error", timeout=20)
    notices = [f for f in frames if f["type"] == "error"]
    assert [(n["code"], n["fatal"]) for n in notices] == [("workspace_full", False)]
    frames = await client.turn("bash rm /workspace/fill && echo freed")
    assert "freed" in tool_output(frames)
    await client.close()


async def test_filling_tmp_stops_at_its_size(svc: Service) -> None:
    """/tmp, HOME, /dev/shm and /mnt/session are sized: filling one ends in ENOSPC, not in the memory
    limit's OOM killer."""
    client = await Client.connect(svc)
    for where in ("/tmp", "/home/agent", "/dev/shm", "/mnt/session/outputs"):
        # The CLI keeps the Bash tool's output under /tmp: report once there is room again.
        fill = f"dd if=/dev/zero of={where}/fill bs=1M count=96 2>/workspace/dd.log"
        frames = await client.turn(f"bash {fill}; rm {where}/fill; cat /workspace/dd.log")
        assert "No space left on device" in tool_output(frames), where
    assert result_of(await client.turn("say still fine"))["result"] == "still fine"
    await client.close()
