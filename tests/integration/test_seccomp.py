"""The local sandbox's system call filter, tried from inside a real sandbox."""

from __future__ import annotations

import json
import platform
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from moorage.sandbox.local import LocalBackend

# Each probe returns the errno a system call failed with (0: it worked).
PROBES = r"""
import ctypes, errno, json, os
libc = ctypes.CDLL(None, use_errno=True)
def call(*args):
    ctypes.set_errno(0)
    rc = libc.syscall(*args)
    return 0 if rc >= 0 else errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWNET = 0x10000000, 0x20000, 0x40000000
out = {
    "unshare_user": call(272, CLONE_NEWUSER),
    "unshare_net": call(272, CLONE_NEWNET),
    "mount": call(165, b"none", b"/tmp", b"tmpfs", 0, None),
    "ptrace_attach": call(101, 16, os.getppid(), 0, 0),
    "bpf": call(321, 0, 0, 0),
    "keyctl": call(250, 0, 0),
    "perf_event_open": call(298, 0, 0, -1, -1, 0),
    "kexec_load": call(246, 0, 0, 0, 0),
    "init_module": call(175, 0, 0, b""),
    "setns": call(308, 0, 0),
    "clone3": call(435, 0, 0),
    "io_uring_setup": call(425, 1, 0),
}
status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
out["seccomp"] = status["Seccomp"].strip()
out["no_new_privs"] = status["NoNewPrivs"].strip()
out["cap_eff"] = status["CapEff"].strip()
import subprocess, threading
t = threading.Thread(target=lambda: None); t.start(); t.join()
out["subprocess"] = subprocess.run(["sh", "-c", "echo ok"], capture_output=True, text=True).stdout.strip()
print(json.dumps(out))
"""

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64", reason="the probes use x86_64 system call numbers")


async def probe(backend: LocalBackend) -> dict[str, object]:
    rc, out, err = await backend.run_python("seccomp-probe", PROBES, 60)
    assert rc == 0, err[-2000:]
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result


@pytest.fixture
async def filtered(tmp_path: Path) -> AsyncIterator[LocalBackend]:
    backend = LocalBackend(tmp_path, 215_000, 4, seccomp=True)
    await backend.check()
    yield backend
    await backend.close()


async def test_sandbox_refuses_escape_and_kernel_syscalls(filtered: LocalBackend) -> None:
    """New namespaces, mounts, ptrace, BPF, keyrings, perf, kexec and modules all fail with EPERM."""
    result = await probe(filtered)
    for call in (
        "unshare_user",
        "unshare_net",
        "mount",
        "ptrace_attach",
        "bpf",
        "keyctl",
        "perf_event_open",
        "kexec_load",
        "init_module",
        "setns",
    ):
        assert result[call] == "EPERM", (call, result)
    # Calls a runtime can fall back from answer "not implemented".
    assert result["clone3"] == "ENOSYS"
    assert result["io_uring_setup"] == "ENOSYS"


async def test_sandbox_has_filter_no_capabilities_and_no_new_privs(filtered: LocalBackend) -> None:
    """The agent runs filtered, with no capabilities and no way to gain privileges."""
    result = await probe(filtered)
    assert result["seccomp"] == "2"
    assert result["no_new_privs"] == "1"
    assert int(str(result["cap_eff"]), 16) == 0
    assert result["subprocess"] == "ok"  # threads and processes still work


async def test_without_the_filter_a_new_user_namespace_is_possible(tmp_path: Path) -> None:
    """The filter is what refuses namespaces: with it off, unshare(CLONE_NEWUSER) succeeds."""
    backend = LocalBackend(tmp_path, 215_010, 4, seccomp=False)
    await backend.check()
    try:
        result = await probe(backend)
    finally:
        await backend.close()
    assert result["seccomp"] == "0"
    assert result["unshare_user"] == 0
