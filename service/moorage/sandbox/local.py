"""Local sandbox backend: bubblewrap namespaces on this host.

Each sandbox runs as its own unprivileged host uid (from a pool, when the
service runs as root; as the service's uid otherwise), inside new
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
import ctypes
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from ..channel import Reason, RunnerFrame, Violation
from ..errors import Code, SandboxError
from ..workspaces import remove_workspace
from .base import (
    MODEL_SOCKET,
    PACKAGES_PATH,
    SANDBOX_HOME,
    SESSION_DIR,
    SESSION_FILES_BYTES,
    TOOL_ENV,
    TUNNEL_SOCKET,
    SandboxSpec,
    decode_frame,
    encode_frame,
    packages_env,
    packages_path,
    stop_in_stages,
    write_etc,
)
from .cgroups import Cgroups, Limits, SandboxCgroup, entry_argv
from .seccomp import open_program, write_program
from .toolbox_build import SANDBOX_PATH as TOOLBOX_PATH
from .uids import UidPool, become_subreaper, kill_uid, reap_orphans

if TYPE_CHECKING:
    from ..egress import ModelProxy

log = structlog.get_logger(__name__)

SANDBOX_UID = 1000  # the uid the agent sees inside
RUNNER_LIB = "/opt/moorage/lib"
VENV = "/opt/moorage/venv"
RUNNER_ARGS = ("-m", "moorage_runner")
MAX_FRAME_BYTES = 32 * 1024 * 1024
STDERR_CHUNK_BYTES = 64 * 1024
# /etc/fonts: fontconfig finds the host's fonts (matplotlib asks fc-list; without it, an error on stderr).
SYSTEM_DIRS = ("/usr", "/etc/alternatives", "/etc/ssl", "/etc/ca-certificates", "/etc/fonts")
SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/localtime", "/etc/nsswitch.conf", "/etc/mime.types")


@dataclass(frozen=True)
class Runtime:
    """What the runner needs from the host, mounted read-only."""

    python: str  # the venv's interpreter (sys.executable)
    prefix: str  # the venv holding claude-agent-sdk and its bundled CLI
    base_prefix: str  # the Python installation the venv was made from
    runner_pkg: str  # the moorage_runner package directory

    @property
    def sandbox_python(self) -> str:
        """The interpreter's path inside the sandbox, where the venv is mounted."""
        if self.prefix == self.base_prefix:
            return self.python
        return VENV + self.python.removeprefix(self.prefix)

    @classmethod
    def discover(cls) -> Runtime:
        spec = importlib.util.find_spec("moorage_runner")
        if spec is None or spec.origin is None:
            raise SandboxError("moorage-runner is not installed", code=Code.SANDBOX_START_FAILED)
        return cls(sys.executable, sys.prefix, sys.base_prefix, str(Path(spec.origin).parent))


# Where a root service stages mount sources for the sandbox uid (see below).
STAGE = "/run/moorage-stage"


def bwrap_argv(
    spec: SandboxSpec,
    runtime: Runtime,
    uid: int | None,
    etc_dir: Path,
    seccomp_fd: int | None = None,
    tmp_bytes: int = 0,
    session_bytes: int = SESSION_FILES_BYTES,
    toolbox: Path | None = None,
) -> list[str]:
    """The full command line that starts one sandbox (pure; unit-tested).

    ``toolbox`` (toolbox.py) is mounted read-only at ``TOOLBOX_PATH`` and its
    ``bin/`` put first on PATH: the agent's ``python3`` and ``pip``; the
    environment's packages layer (``spec.packages``, packages.py) likewise at
    ``PACKAGES_PATH``, before it. The runner itself runs on
    ``runtime.sandbox_python``, by its full path.

    With ``uid`` (the service runs as root) the sandbox runs as that host
    uid. An unprivileged bwrap must be able to walk to every path it mounts,
    and the venv or state dir may sit under a directory it cannot enter
    (/root). So a first, root bwrap makes a private mount namespace, mounts
    each source at ``STAGE/<n>`` (reachable by anyone, visible to nobody
    else), drops to the uid with setpriv and starts the real sandbox from
    there. The host's mount table is never touched.
    """
    mounts: list[tuple[str, str, bool]] = [  # (host source, sandbox path, writable)
        *((str(etc_dir / name), f"/etc/{name}", False) for name in ("passwd", "group", "hosts", "hostname")),
        (runtime.runner_pkg, f"{RUNNER_LIB}/moorage_runner", False),
        (str(spec.model_socket), MODEL_SOCKET, False),
        *(((str(spec.tunnel_socket), TUNNEL_SOCKET, False),) if spec.tunnel_socket else ()),
        (str(spec.workspace), "/workspace", True),
    ]
    if not runtime.base_prefix.startswith("/usr"):
        # A Python built elsewhere (pyenv, /opt): mount it where the venv expects it.
        mounts.append((runtime.base_prefix, runtime.base_prefix, False))
    if runtime.prefix != runtime.base_prefix:
        mounts.append((runtime.prefix, VENV, False))
    if toolbox is not None:
        mounts.append((str(toolbox), TOOLBOX_PATH, False))
    if spec.packages is not None:
        mounts.append((str(spec.packages), PACKAGES_PATH, False))
    argv: list[str] = []
    if uid is not None:
        argv += ["setpriv", "--pdeathsig", "KILL", "--", "bwrap", "--dev-bind", "/", "/", "--tmpfs", STAGE]
        for n, (source, _, writable) in enumerate(mounts):
            argv += ["--bind" if writable else "--ro-bind", source, f"{STAGE}/{n}"]
        mounts = [(f"{STAGE}/{n}", dest, writable) for n, (_, dest, writable) in enumerate(mounts)]
        argv += ["--", "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs", "--"]
    argv += ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--clearenv"]
    argv += ["--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--hostname", "moorage-sandbox"]
    for path in (*SYSTEM_DIRS, *SYSTEM_FILES):
        if os.path.exists(path):
            argv += ["--ro-bind", path, path]
    for name in ("bin", "lib", "lib64", "sbin"):
        if os.path.islink(f"/{name}") and os.path.isdir(f"/usr/{name}"):
            argv += ["--symlink", f"usr/{name}", f"/{name}"]
    argv += ["--proc", "/proc", "--dev", "/dev"]
    for tmpfs in ("/dev/shm", "/tmp", SANDBOX_HOME, "/run"):
        # Sized, so a filler gets ENOSPC before it eats the memory limit
        # (tmpfs pages are charged to the sandbox's memory cgroup).
        argv += [*(("--size", str(tmp_bytes)) if tmp_bytes else ()), "--tmpfs", tmpfs]
    # The session's files: uploads/ (resources) and outputs/ (session_files.py), also charged.
    argv += ["--size", str(session_bytes), "--tmpfs", SESSION_DIR]
    for source, dest, writable in mounts:
        argv += ["--bind" if writable else "--ro-bind", source, dest]
    argv += ["--chdir", "/workspace"]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    env = {
        "HOME": SANDBOX_HOME,
        "USER": "agent",
        "LOGNAME": "agent",
        "PATH": ":".join(
            [
                *packages_path(spec),
                *((f"{TOOLBOX_PATH}/bin",) if toolbox is not None else ()),
                "/usr/local/bin:/usr/bin:/bin",
            ]
        ),
        "LANG": "C.UTF-8",
        "TMPDIR": "/tmp",
        "PYTHONPATH": RUNNER_LIB,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        **TOOL_ENV,
        **packages_env(spec),
    }
    for name, value in env.items():
        argv += ["--setenv", name, value]
    return [*argv, "--", runtime.sandbox_python, *RUNNER_ARGS]


class LocalSandbox:
    """One bwrap process tree; its stdio is the runner channel."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        spec: SandboxSpec,
        uid: int | None,
        backend: LocalBackend,
        cgroup: SandboxCgroup | None = None,
    ) -> None:
        self.cgroup = cgroup
        self._proc = proc
        self._spec = spec
        self.uid = uid
        self._backend = backend
        self._workspace_mounted = os.path.ismount(spec.workspace)
        self._stderr_task = asyncio.create_task(self._drain_stderr())
        # asyncio's Process.wait() also waits for the pipes to close, which a
        # surviving grandchild can hold open; a pidfd says when the top
        # process itself is gone.
        self.exited = asyncio.Event()
        self._pidfd = os.pidfd_open(proc.pid)
        asyncio.get_running_loop().add_reader(self._pidfd, self._on_exit)
        self._exit_task: asyncio.Task[None] | None = None
        self._exit_code: int | None = None
        self._released: asyncio.Task[None] | None = None

    def limit_events(self) -> dict[str, int]:
        """How often the sandbox's limits bit: OOM kills, refused forks."""
        if self.cgroup is None:
            return {"oom_kills": 0, "pids_refusals": 0}
        return {"oom_kills": self.cgroup.oom_kills(), "pids_refusals": self.cgroup.pids_refusals()}

    def memory_bytes(self) -> int | None:
        return self.cgroup.memory_bytes() if self.cgroup is not None else None

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def handle(self) -> dict[str, Any]:
        return {
            "backend": "local",
            "pid": self._proc.pid,
            "uid": self.uid,
            "sandbox_id": self._spec.sandbox_id,
            # A tmpfs: after a host crash it is gone, not empty (recovery keeps the last checkpoint).
            "workspace_mounted": self._workspace_mounted,
        }

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc.returncode is not None else self._exit_code

    async def send(self, frame: dict[str, Any]) -> None:
        stdin = self._proc.stdin
        if stdin is None or stdin.is_closing():
            raise SandboxError("sandbox input is closed")
        try:
            stdin.write(encode_frame(frame))
            await stdin.drain()
        except (ConnectionError, RuntimeError) as exc:
            raise SandboxError("sandbox input is closed") from exc

    async def recv(self) -> RunnerFrame | None:
        assert self._proc.stdout is not None
        try:
            line = await self._proc.stdout.readline()
        except (ValueError, asyncio.LimitOverrunError):
            # An over-long line: the runner broke the channel contract.
            await self.kill()
            return Violation(Reason.TOO_LARGE)
        except ConnectionError:
            return None
        if not line:
            return None
        return decode_frame(line)

    def _on_exit(self) -> None:
        """The top process is gone (stopped, or killed from outside): take the
        rest of the tree down with it so the channel ends and nothing lingers."""
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._pidfd)
        with contextlib.suppress(ChildProcessError, OSError):
            # WNOWAIT: read the status, leave the reaping to asyncio.
            info = os.waitid(os.P_PIDFD, self._pidfd, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            if info is not None:
                self._exit_code = info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
        os.close(self._pidfd)
        self.exited.set()
        if self.uid is not None:
            self._exit_task = asyncio.create_task(asyncio.to_thread(kill_uid, self.uid))

    async def _drain_stderr(self) -> None:
        assert self._proc.stderr is not None
        # In chunks, not lines: a line is up to the reader's 32 MiB limit, and
        # one longer would end the loop and leave up to 64 MiB buffered.
        with contextlib.suppress(Exception):
            while chunk := await self._proc.stderr.read(STDERR_CHUNK_BYTES):
                for raw in chunk.splitlines():
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
        await stop_in_stages(self.exited, self._signal, grace_s)
        await self._release()
        return self.returncode

    async def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            self._proc.send_signal(sig)

    async def kill(self) -> None:
        if not self.exited.is_set():
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.exited.wait(), 5.0)
        await self._release()

    async def _release(self) -> None:
        """Sweep the sandbox's uid and give back what it held; once. Every
        caller (a stop from ``close`` and the session's own, which cancels
        the first) waits for the one sweep to finish: the workspace is
        archived next by a helper running as this very uid, which a sweep
        still going would kill (the suspension's snapshot lost)."""
        if not self.exited.is_set():
            return
        if self._released is None:
            self._released = asyncio.create_task(self._sweep_and_give_back())
        await asyncio.shield(self._released)

    async def _sweep_and_give_back(self) -> None:
        # The pid namespace dies with bwrap, but its processes are torn down
        # asynchronously; a pool uid must be empty before it is reused.
        if self.uid is not None:
            await asyncio.to_thread(kill_uid, self.uid)
        if self._exit_task is not None:  # the sweep started on exit, likewise
            with contextlib.suppress(Exception):
                await asyncio.shield(self._exit_task)
        if self.cgroup is not None:
            await asyncio.to_thread(self.cgroup.close)
        self._stderr_task.cancel()
        self._backend.release(self)
        self._backend.reap_orphans()


MS_NOSUID, MS_NODEV = 2, 4


def mount_workspace(path: Path, size_bytes: int, uid: int) -> int:
    """Give a workspace its own size-limited filesystem (a tmpfs, charged to
    the sandbox's memory cgroup as it fills): a disk filler gets ENOSPC in its
    own workspace and nobody else's disk fills. Returns ``size_bytes``, or 0
    when this host does not let the service mount (the workspace then stays
    a plain directory, checked after each turn)."""
    libc = ctypes.CDLL(None, use_errno=True)
    options = f"size={size_bytes},mode=0700,uid={uid},gid={uid}".encode()
    if libc.mount(b"moorage-workspace", os.fsencode(path), b"tmpfs", MS_NOSUID | MS_NODEV, options) != 0:
        err = ctypes.get_errno()
        log.warning("workspace_quota_unavailable", error=os.strerror(err), detail="workspaces are not size-limited")
        return 0
    return size_bytes


class LocalBackend:
    """Starts sandboxes with bubblewrap; see the module docstring."""

    name = "local"

    def __init__(
        self,
        state_dir: Path,
        uid_base: int,
        uid_count: int,
        runtime: Runtime | None = None,
        limits: Limits | None = None,
        seccomp: bool = True,
        workspace_bytes: int = 0,
        tmp_bytes: int = 0,
        start_timeout_s: float = 60.0,
        session_bytes: int = SESSION_FILES_BYTES,
        toolbox: Path | None = None,
    ) -> None:
        self.start_timeout_s = start_timeout_s
        self.state_dir = state_dir.resolve()
        self.seccomp = seccomp
        self.workspace_bytes = workspace_bytes  # 0: the workspace is a plain directory
        self.tmp_bytes = tmp_bytes
        self.session_bytes = session_bytes
        self.toolbox = toolbox  # toolbox.resolve()d: the agent's python3, mounted read-only
        self._seccomp_program: Path | None = None
        self.runtime = runtime or Runtime.discover()
        # As root, each sandbox gets its own host uid; otherwise sandboxes run
        # as the service's uid (still in their own user namespace).
        self.as_root = os.geteuid() == 0
        self.uids = UidPool.shared(uid_base, uid_count) if self.as_root else UidPool(uid_base, uid_count)
        become_subreaper()
        self.cgroups = Cgroups(limits) if limits is not None and self.as_root else None
        if limits is not None and (self.cgroups is None or not self.cgroups.available):
            log.warning(
                "sandbox_limits_unavailable",
                detail="no writable cgroup controllers (v1, or v2 with memory, pids and cpu): sandboxes run unlimited",
            )
        elif self.cgroups is not None:
            log.info("sandbox_limits", cgroups="v2" if self.cgroups.v2 is not None else "v1")
        self.live: dict[str, LocalSandbox] = {}
        self._children: list[asyncio.subprocess.Process] = []  # started here, not yet reaped by asyncio
        self._etc = self.state_dir / "sandbox-etc"

    async def check(self) -> None:
        """Start one throw-away sandbox that imports the runner and the SDK, so
        a host that cannot sandbox fails at service start with the reason."""
        for tool in ("bwrap", "setpriv"):
            if shutil.which(tool) is None:
                raise SandboxError(
                    f"{tool} not found: install bubblewrap and util-linux (apt-get install bubblewrap util-linux)",
                    code=Code.SANDBOX_START_FAILED,
                )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.as_root:
            os.makedirs(STAGE, mode=0o755, exist_ok=True)
        write_etc(self._etc, SANDBOX_UID)
        if self.seccomp:
            self._seccomp_program = write_program(self.state_dir)
        else:
            log.warning("sandbox_seccomp_disabled", detail="MOORAGE_SANDBOX_SECCOMP=false: no system call filter")
        code = "import claude_agent_sdk, moorage_runner; print('sandbox-ok')"
        if self.toolbox is not None:
            # The agent's python3 starts inside, as the toolbox venv (its interpreter is mounted).
            code += (
                "\nimport subprocess; print('toolbox:' + subprocess.run(['python3', '-c', 'import sys; "
                "print(sys.prefix)'], capture_output=True, text=True, timeout=60).stdout.strip())"
            )
        returncode, out, err = await self.run_python("preflight", code, self.start_timeout_s)
        if returncode != 0 or "sandbox-ok" not in out:
            raise SandboxError(
                f"a test sandbox failed (exit {returncode}): {err.strip()[-500:] or 'no output'}",
                code=Code.SANDBOX_START_FAILED,
            )
        if self.toolbox is not None:
            if f"toolbox:{TOOLBOX_PATH}\n" not in out:
                raise SandboxError(
                    f"the toolbox {self.toolbox} does not run in a test sandbox: python3 there says "
                    f"{out.strip().removeprefix('sandbox-ok').strip()[-300:]!r}",
                    code=Code.SANDBOX_START_FAILED,
                )
            log.info("sandbox_toolbox", path=str(self.toolbox), mounted_at=TOOLBOX_PATH)

    async def run_python(self, name: str, code: str, timeout_s: float) -> tuple[int | None, str, str]:
        """Run ``python -c code`` in a throw-away sandbox exactly like a
        session's (same mounts, uid, limits, filter): the preflight check
        and the tests of what a sandbox may do use it. Returns
        (exit status, stdout, stderr)."""
        # Unique: services sharing a host (and a cgroup parent) run their
        # preflights at the same time, and each removes its own cgroup.
        name = f"{name}-{secrets.token_hex(4)}"
        probe_dir = self.state_dir / f"probe-{name}"
        probe_dir.mkdir()
        # A stand-in model socket, somewhere short: AF_UNIX paths end at 108 bytes.
        socket_dir = Path(tempfile.mkdtemp(prefix="moorage-probe-"))
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.bind(str(socket_dir / "m.sock"))
                spec = SandboxSpec(name, name, probe_dir / "workspace", socket_dir / "m.sock")
                proc, uid, cg = await self._spawn(spec, ["-c", code])
                try:
                    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
                except TimeoutError:
                    proc.kill()
                    out, err = await proc.communicate()
                finally:
                    if uid is not None:
                        await asyncio.to_thread(kill_uid, uid)
                        self.uids.give_back(uid)
                    if cg is not None:
                        await asyncio.to_thread(cg.close)
        finally:
            await asyncio.to_thread(remove_workspace, probe_dir / "workspace")
            shutil.rmtree(probe_dir, ignore_errors=True)
            shutil.rmtree(socket_dir, ignore_errors=True)
        return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")

    def _prepare_workspace(self, path: Path, uid: int | None) -> None:
        path.mkdir(parents=True, exist_ok=True)
        if self.workspace_bytes and uid is not None and not os.path.ismount(path):
            self.workspace_bytes = mount_workspace(path, self.workspace_bytes, uid)
        if uid is not None:
            os.chown(path, uid, uid)
        path.chmod(0o700)

    async def _spawn(
        self, spec: SandboxSpec, python_args: list[str]
    ) -> tuple[asyncio.subprocess.Process, int | None, SandboxCgroup | None]:
        uid = self.uids.take() if self.as_root else None
        cg: SandboxCgroup | None = None
        seccomp_fd: int | None = None
        try:
            if self.cgroups is not None and self.cgroups.available:
                cg = self.cgroups.create(spec.sandbox_id)
            self._prepare_workspace(spec.workspace, uid)
            if self._seccomp_program is not None:
                seccomp_fd = open_program(self._seccomp_program)
            argv = bwrap_argv(
                spec, self.runtime, uid, self._etc, seccomp_fd, self.tmp_bytes, self.session_bytes, self.toolbox
            )
            argv = [*argv[: -len(RUNNER_ARGS)], *python_args]
            if cg is not None:
                argv = entry_argv(cg, argv)
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                limit=MAX_FRAME_BYTES,
                start_new_session=True,
                pass_fds=() if seccomp_fd is None else (seccomp_fd,),
            )
            self._children.append(proc)
        except BaseException as exc:
            # Failed, or cancelled (a session closed while it started, the service
            # draining): nothing it made may outlive it — the workspace mount
            # first, then the uid that owned it, then the cgroup.
            remove_workspace(spec.workspace)
            if uid is not None:
                self.uids.give_back(uid)
            if cg is not None:
                cg.close()
            if isinstance(exc, OSError):
                raise SandboxError(f"cannot start sandbox: {exc}", code=Code.SANDBOX_START_FAILED) from exc
            raise
        finally:
            if seccomp_fd is not None:
                os.close(seccomp_fd)
        return proc, uid, cg

    async def start(self, spec: SandboxSpec) -> LocalSandbox:
        proc, uid, cg = await self._spawn(spec, list(RUNNER_ARGS))
        sandbox = LocalSandbox(proc, spec, uid, self, cg)
        self.live[spec.sandbox_id] = sandbox
        log.info("sandbox_started", sandbox_id=spec.sandbox_id, pid=proc.pid, uid=uid)
        return sandbox

    def release(self, sandbox: LocalSandbox) -> None:
        # The uid stays taken until the workspace is archived (as that uid) and removed.
        if self.live.pop(sandbox._spec.sandbox_id, None) is not None and sandbox.uid is not None:
            self.uids.give_back(sandbox.uid, once_gone=sandbox._spec.workspace)

    async def ready(self) -> str | None:
        if shutil.which("bwrap") is None:
            return "bwrap is not installed"
        if not os.access(self.state_dir, os.W_OK):
            return f"{self.state_dir} is not writable"
        if not self.uids.available():
            return "no free sandbox uid"
        return None

    async def bind_proxy(self, proxy: ModelProxy) -> None:
        """Nothing to do: the proxy's socket is mounted into each sandbox."""

    async def reap(self, handle: dict[str, Any]) -> None:
        """Kill what is left of a sandbox a previous run of the service
        started (from its persisted handle), unless its uid is in use now,
        and remove its cgroups (named by its sandbox id: its own whoever
        holds the uid now)."""
        sandbox_id = handle.get("sandbox_id")
        if self.cgroups is not None and isinstance(sandbox_id, str) and sandbox_id.isalnum():
            await asyncio.to_thread(self.cgroups.of(sandbox_id).close)
        uid = handle.get("uid")
        if not isinstance(uid, int) or uid in self.uids.held:
            return
        lock = self.uids.lock(uid)
        if lock is None:  # another live service holds this uid now
            return
        try:
            await asyncio.to_thread(kill_uid, uid)
        finally:
            if lock >= 0:
                os.close(lock)

    def reap_orphans(self) -> None:
        """Collect exited sandbox processes that were orphaned to us, never
        one asyncio still waits for (it would report exit status 255)."""
        self._children = [p for p in self._children if p.returncode is None]
        reap_orphans(keep={p.pid for p in self._children})

    async def close(self) -> None:
        await asyncio.gather(*(s.stop(2.0) for s in list(self.live.values())), return_exceptions=True)
