"""The seccomp filter every local sandbox runs under.

A deny list on top of what the namespaces already take away: the agent may
run any ordinary program (compilers, Python, the CLI itself), but not the
system calls that exist to administer a kernel or to leave a sandbox —
mounting, new namespaces, tracing other processes, loading kernel code, the
kernel keyring, BPF, perf. They fail with EPERM, so a tool that tries one
gets an ordinary error, not a dead session. ``clone3`` and io_uring answer
ENOSYS instead: a filter cannot look inside clone3's flag struct (so runtimes
fall back to ``clone``, whose flags it can check), and io_uring would run
system calls the filter never sees.

The program is compiled by libseccomp (through pyseccomp) for this machine's
architecture only; a system call from another ABI (x86 ``int 0x80`` on
x86_64) kills the process. bubblewrap loads it (``--seccomp FD``) as the last
step before it starts the runner, after its own namespace set-up.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

import pyseccomp as seccomp

# Refused with EPERM: each is administration or a way out, none is needed by
# the agent's tools.
DENIED = (
    # filesystems and mounts
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "open_by_handle_at",
    "name_to_handle_at",
    "quotactl",
    "swapon",
    "swapoff",
    # namespaces
    "unshare",
    "setns",
    # other processes' memory
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "pidfd_getfd",
    # the kernel itself
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "keyctl",
    "add_key",
    "request_key",
    "syslog",
    "acct",
    "lookup_dcookie",
    "iopl",
    "ioperm",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "vhangup",
    "uselib",
)
# Answered ENOSYS: callers fall back to something the filter can check.
UNAVAILABLE = ("clone3", "io_uring_setup", "io_uring_enter", "io_uring_register")
# clone() flags that would make a new namespace.
NAMESPACE_FLAGS = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
    0x00000080,  # CLONE_NEWTIME
)


def build_filter() -> seccomp.SyscallFilter:
    flt = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for name in DENIED:
        _add(flt, seccomp.ERRNO(errno.EPERM), name)
    for name in UNAVAILABLE:
        _add(flt, seccomp.ERRNO(errno.ENOSYS), name)
    for flag in NAMESPACE_FLAGS:
        flt.add_rule(seccomp.ERRNO(errno.EPERM), "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    # TIOCSTI pushes input into a terminal's queue: refused (ioctl arg 1).
    flt.add_rule(seccomp.ERRNO(errno.EPERM), "ioctl", seccomp.Arg(1, seccomp.MASKED_EQ, 0xFFFFFFFF, 0x5412))
    return flt


def _add(flt: seccomp.SyscallFilter, action: int, name: str) -> None:
    # Not every name is a system call on every architecture (iopl on arm64).
    with contextlib.suppress(ValueError, RuntimeError):
        flt.add_rule(action, name)


def write_program(state_dir: Path) -> Path:
    """Compile the filter to a BPF file bwrap can read; atomic, so a
    concurrent start never reads half a program."""
    path = state_dir / "seccomp.bpf"
    with tempfile.NamedTemporaryFile(dir=state_dir, prefix=".seccomp-", delete=False) as out:
        build_filter().export_bpf(out)
    os.chmod(out.name, 0o644)
    os.replace(out.name, path)
    return path


def open_program(path: Path) -> int:
    """A fresh inheritable fd on the program for one bwrap (it reads to EOF)."""
    fd = os.open(path, os.O_RDONLY)
    os.set_inheritable(fd, True)
    return fd
