"""Local sandbox backend: bubblewrap namespaces on this host.

Each sandbox runs as its own unprivileged host uid (from a pool), inside new
user, pid, mount, uts, ipc, cgroup and network namespaces. The host's system
directories are mounted read-only, the session's workspace read-write at
/workspace, HOME and /tmp are private tmpfs, and the only thing from outside
the network namespace is the model proxy's unix socket. bwrap is started from
an empty environment (its pid 1 keeps the environment it was started with)
and dies with the service (``--die-with-parent``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from ..errors import Code, SandboxError
from .base import SandboxSpec, decode_frame, encode_frame

log = structlog.get_logger(__name__)

SANDBOX_UID = 1000  # the uid the agent sees inside
SANDBOX_HOME = "/home/agent"
MODEL_SOCKET = "/run/moorage/model.sock"
RUNNER_LIB = "/opt/moorage/lib"
VENV = "/opt/moorage/venv"
MAX_FRAME_BYTES = 32 * 1024 * 1024
SYSTEM_DIRS = ("/usr", "/etc/alternatives", "/etc/ssl", "/etc/ca-certificates")
SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/localtime", "/etc/nsswitch.conf", "/etc/mime.types")


class UidPool:
    """Hands out host uids so no two live sandboxes share one."""

    def __init__(self, base: int, count: int) -> None:
        self._free = list(range(base + count - 1, base - 1, -1))
        self._used: set[int] = set()

    def take(self) -> int:
        if not self._free:
            raise SandboxError("no free sandbox uid", code=Code.SANDBOX_START_FAILED)
        uid = self._free.pop()
        self._used.add(uid)
        return uid

    def give_back(self, uid: int) -> None:
        if uid in self._used:
            self._used.remove(uid)
            self._free.append(uid)


@dataclass(frozen=True)
class Runtime:
    """What the runner needs from the host, mounted read-only."""

    python: str  # the venv's interpreter, used at its own path
    prefix: str  # the venv holding claude-agent-sdk and its bundled CLI
    runner_pkg: str  # the moorage_runner package directory

    @property
    def sandbox_python(self) -> str:
        """The interpreter's path inside the sandbox, where the venv is mounted."""
        if self.prefix.startswith("/usr/"):
            return self.python
        return VENV + self.python.removeprefix(self.prefix)

    @classmethod
    def discover(cls) -> Runtime:
        spec = importlib.util.find_spec("moorage_runner")
        if spec is None or spec.origin is None:
            raise SandboxError("moorage-runner is not installed", code=Code.SANDBOX_START_FAILED)
        return cls(python=sys.executable, prefix=sys.prefix, runner_pkg=str(Path(spec.origin).parent))


def bwrap_argv(spec: SandboxSpec, runtime: Runtime, uid: int, etc_dir: Path) -> list[str]:
    """The full command line that starts one sandbox (pure; unit-tested)."""
    argv = [
        "setpriv",
        f"--reuid={uid}",
        f"--regid={uid}",
        "--clear-groups",
        "--no-new-privs",
        "--",
        "bwrap",
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--uid",
        str(SANDBOX_UID),
        "--gid",
        str(SANDBOX_UID),
        "--hostname",
        "moorage-sandbox",
        "--clearenv",
    ]
    for d in SYSTEM_DIRS:
        if os.path.isdir(d):
            argv += ["--ro-bind", d, d]
    for f in SYSTEM_FILES:
        if os.path.isfile(f):
            argv += ["--ro-bind", f, f]
    for name in ("bin", "lib", "lib64", "sbin"):
        target = f"/usr/{name}"
        if os.path.islink(f"/{name}") and os.path.isdir(target):
            argv += ["--symlink", f"usr/{name}", f"/{name}"]
    for name in ("passwd", "group", "hosts", "hostname"):
        argv += ["--ro-bind", str(etc_dir / name), f"/etc/{name}"]
    if not runtime.prefix.startswith("/usr/"):
        argv += ["--ro-bind", runtime.prefix, VENV]
    argv += [
        "--ro-bind",
        runtime.runner_pkg,
        f"{RUNNER_LIB}/moorage_runner",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/dev/shm",
        "--tmpfs",
        "/tmp",
        "--tmpfs",
        SANDBOX_HOME,
        "--tmpfs",
        "/run",
        "--ro-bind",
        str(spec.model_socket),
        MODEL_SOCKET,
        "--bind",
        str(spec.workspace),
        "/workspace",
        "--chdir",
        "/workspace",
        "--setenv",
        "HOME",
        SANDBOX_HOME,
        "--setenv",
        "USER",
        "agent",
        "--setenv",
        "LOGNAME",
        "agent",
        "--setenv",
        "PATH",
        "/usr/local/bin:/usr/bin:/bin",
        "--setenv",
        "LANG",
        "C.UTF-8",
        "--setenv",
        "TMPDIR",
        "/tmp",
        "--setenv",
        "PYTHONPATH",
        RUNNER_LIB,
        "--setenv",
        "PYTHONDONTWRITEBYTECODE",
        "1",
        "--setenv",
        "PYTHONUNBUFFERED",
        "1",
        "--setenv",
        "MOORAGE_SESSION_ID",
        spec.session_id,
        "--",
        runtime.sandbox_python,
        "-m",
        "moorage_runner",
    ]
    return argv


def _write_etc(etc_dir: Path) -> None:
    etc_dir.mkdir(parents=True, exist_ok=True)
    etc_dir.chmod(0o755)
    files = {
        "passwd": f"root:x:0:0:root:/root:/usr/sbin/nologin\n"
        f"agent:x:{SANDBOX_UID}:{SANDBOX_UID}:agent:{SANDBOX_HOME}:/bin/bash\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        "group": f"root:x:0:\nagent:x:{SANDBOX_UID}:\nnogroup:x:65534:\n",
        "hosts": "127.0.0.1 localhost moorage-sandbox\n::1 localhost\n",
        "hostname": "moorage-sandbox\n",
    }
    for name, text in files.items():
        (etc_dir / name).write_text(text)
        (etc_dir / name).chmod(0o644)


class LocalSandbox:
    """One bwrap process tree; its stdio is the runner channel."""

    def __init__(self, proc: asyncio.subprocess.Process, spec: SandboxSpec, uid: int, backend: LocalBackend) -> None:
        self._proc = proc
        self._spec = spec
        self.uid = uid
        self._backend = backend
        self._stderr_task = asyncio.create_task(self._drain_stderr())
        self._released = False

    @property
    def handle(self) -> dict[str, Any]:
        return {"backend": "local", "pid": self._proc.pid, "uid": self.uid, "sandbox_id": self._spec.sandbox_id}

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    async def send(self, frame: dict[str, Any]) -> None:
        stdin = self._proc.stdin
        if stdin is None or stdin.is_closing():
            raise SandboxError("sandbox input is closed")
        try:
            stdin.write(encode_frame(frame))
            await stdin.drain()
        except (ConnectionError, RuntimeError) as exc:
            raise SandboxError("sandbox input is closed") from exc

    async def recv(self) -> dict[str, Any] | None:
        assert self._proc.stdout is not None
        try:
            line = await self._proc.stdout.readline()
        except (ValueError, asyncio.LimitOverrunError):
            # An over-long line: the runner broke the channel contract.
            await self.kill()
            return None
        except ConnectionError:
            return None
        if not line:
            return None
        return decode_frame(line)

    async def _drain_stderr(self) -> None:
        assert self._proc.stderr is not None
        with contextlib.suppress(Exception):
            async for raw in self._proc.stderr:
                log.debug(
                    "sandbox_stderr",
                    line=raw[:2000].decode(errors="replace").rstrip(),
                    session_id=self._spec.session_id,
                )

    async def stop(self, grace_s: float) -> int | None:
        """Close input -> wait -> SIGTERM -> wait -> SIGKILL; bounded."""
        if self._proc.returncode is None and self._proc.stdin is not None:
            with contextlib.suppress(Exception):
                self._proc.stdin.close()
        for sig, wait_s in ((None, grace_s), (signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
            if sig is not None and self._proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    self._proc.send_signal(sig)
            try:
                await asyncio.wait_for(self._proc.wait(), wait_s)
                break
            except TimeoutError:
                continue
        await self._release()
        return self._proc.returncode

    async def kill(self) -> None:
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._proc.wait(), 5.0)
        await self._release()

    async def _release(self) -> None:
        if self._released or self._proc.returncode is None:
            return
        self._released = True
        # The pid namespace is gone with bwrap, but a process that escaped it
        # (it cannot: same uid, new session, no caps) would still hold the uid.
        await asyncio.to_thread(_kill_uid, self.uid)
        self._stderr_task.cancel()
        self._backend.release(self)


def _pids_of_uid(uid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    pids.append(int(entry))
            except FileNotFoundError:
                continue
    return pids


def _kill_uid(uid: int, deadline_s: float = 5.0) -> None:
    """SIGKILL every process still running as ``uid`` and wait until they are
    gone (bounded). The pid namespace dies with bwrap, but its processes are
    torn down asynchronously; a pool uid must be empty before it is reused."""
    deadline = time.monotonic() + deadline_s
    while pids := _pids_of_uid(uid):
        if time.monotonic() > deadline:
            log.error("sandbox_processes_left", uid=uid, pids=pids)
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


class LocalBackend:
    """Starts sandboxes with bubblewrap; see the module docstring."""

    name = "local"

    def __init__(self, state_dir: Path, uid_base: int, uid_count: int, runtime: Runtime | None = None) -> None:
        self.state_dir = state_dir.resolve()
        self.runtime = runtime or Runtime.discover()
        self.uids = UidPool(uid_base, uid_count)
        self.live: dict[str, LocalSandbox] = {}
        self._etc = self.state_dir / "sandbox-etc"

    def check(self) -> None:
        """Fail early with a clear message when this host cannot sandbox."""
        for tool in ("bwrap", "setpriv"):
            if shutil.which(tool) is None:
                raise SandboxError(
                    f"{tool} not found: install bubblewrap and util-linux (apt-get install bubblewrap)",
                    code=Code.SANDBOX_START_FAILED,
                )
        # bwrap runs as the sandbox's own uid, so it must be able to reach
        # every path it mounts.
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for path in (
            self.runtime.prefix,
            self.runtime.runner_pkg,
            os.path.realpath(self.runtime.python),
            self.state_dir,
        ):
            p = Path(path)
            while p != p.parent:
                if not os.stat(p).st_mode & 0o001:
                    raise SandboxError(
                        f"{path} is not reachable by sandbox users ({p} is not world-searchable); keep the venv "
                        "(made with /usr/bin/python3) and MOORAGE_STATE_DIR in world-searchable directories",
                        code=Code.SANDBOX_START_FAILED,
                    )
                p = p.parent
        _write_etc(self._etc)

    async def start(self, spec: SandboxSpec) -> LocalSandbox:
        uid = self.uids.take()
        try:
            spec.workspace.mkdir(parents=True, exist_ok=True)
            os.chown(spec.workspace, uid, uid)
            spec.workspace.chmod(0o700)
            for parent in spec.workspace.parents:
                if parent == self.state_dir.parent:
                    break
                parent.chmod(parent.stat().st_mode | 0o711)
            proc = await asyncio.create_subprocess_exec(
                *bwrap_argv(spec, self.runtime, uid, self._etc),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                limit=MAX_FRAME_BYTES,
                start_new_session=True,
            )
        except OSError as exc:
            self.uids.give_back(uid)
            raise SandboxError(f"cannot start sandbox: {exc}", code=Code.SANDBOX_START_FAILED) from exc
        sandbox = LocalSandbox(proc, spec, uid, self)
        self.live[spec.sandbox_id] = sandbox
        log.info("sandbox_started", sandbox_id=spec.sandbox_id, pid=proc.pid, uid=uid)
        return sandbox

    def release(self, sandbox: LocalSandbox) -> None:
        if self.live.pop(sandbox._spec.sandbox_id, None) is not None:
            self.uids.give_back(sandbox.uid)

    async def close(self) -> None:
        await asyncio.gather(*(s.stop(2.0) for s in list(self.live.values())), return_exceptions=True)
