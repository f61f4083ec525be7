"""Docker sandbox backend: one container per sandbox on a Docker Engine.

The container runs the sandbox image (``container/Dockerfile``) as uid 1000
with no network at all (``NetworkMode: none``), a read-only root, private
tmpfs for /tmp and HOME, the session's workspace bind-mounted read-write at
/workspace (as root: a tmpfs of ``MOORAGE_WORKSPACE_MAX_BYTES`` mounted on the
host first, ``local.mount_workspace``, so a filler gets ENOSPC) and the model
proxy's unix socket at ``MODEL_SOCKET``: its only way out (plus the egress tunnel's socket at ``TUNNEL_SOCKET``). All
capabilities are dropped, ``no-new-privileges`` is set, memory (no swap),
pids and CPU are limited. The image's entrypoint, tini, is pid 1: it reaps
the agent's orphans and forwards signals to the runner. Container logs are
off: the channel carries transcripts, which must not land in the engine's
log files.

The channel is the container's own stdin/stdout, attached (hijacked HTTP
stream) before the container starts so no frame is lost; stderr is log text.
Closing our half of the stream closes the runner's stdin (``StdinOnce``).

Containers carry labels (``LABEL_OWNER`` = this service's replica id, plus the
session and sandbox ids), so a restarted service finds what it left behind
and removes it (``reap_orphans``); the persisted handle names the container
too (``reap``). Sessions are not re-adopted: a session whose service died is
suspended and rehydrated from the database into a fresh container.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiodocker
import aiohttp
import structlog
from aiodocker.containers import DockerContainer
from aiodocker.stream import Stream

from ..bounded import ByteQueue
from ..channel import RunnerFrame
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
from .cgroups import Limits, memory_usage, own_paths
from .local import mount_workspace
from .uids import UidPool

if TYPE_CHECKING:
    from ..egress import ModelProxy

log = structlog.get_logger(__name__)

SANDBOX_UID = 1000  # the image's "agent" user
# By its full path: an environment's packages layer comes first on PATH and may hold a ``python``.
RUNNER_CMD = ["/opt/moorage/venv/bin/python", "-m", "moorage_runner"]
IMAGE_PATH = "/opt/moorage/venv/bin:/usr/local/bin:/usr/bin:/bin"  # container/Dockerfile's PATH
MAX_FRAME_BYTES = 32 * 1024 * 1024
# Bytes of complete lines read ahead of the consumer; when full the reader
# stops reading the attached stream (backpressure to the runner). One line
# longer than this (up to MAX_FRAME_BYTES) still passes, alone.
READ_AHEAD_BYTES = 4 * 1024 * 1024
LABEL_OWNER = "io.moorage.owner"
LABEL_SESSION = "io.moorage.session-id"
LABEL_SANDBOX = "io.moorage.sandbox-id"
TMPFS_BYTES = 256 * 1024 * 1024  # each of /tmp, HOME, /dev/shm (MOORAGE_SANDBOX_TMP_BYTES)
API_TIMEOUT_S = 30.0
EXIT_WAIT_S = 10.0


def container_config(
    spec: SandboxSpec,
    image: str,
    limits: Limits,
    owner: str,
    tmp_bytes: int = TMPFS_BYTES,
    uid: int = SANDBOX_UID,
    etc_dir: Path | None = None,
    session_bytes: int = SESSION_FILES_BYTES,
) -> dict[str, Any]:
    """The Engine API body that creates one sandbox container (pure; unit-tested).

    ``uid``: the host uid the container runs as (no user namespace: it is the
    same number outside). ``etc_dir`` holds a ``passwd``/``group`` naming it
    ``agent``, mounted over the image's, so tools that look the user up work."""
    tmpfs_opts = f"rw,nosuid,nodev,size={tmp_bytes}"
    mounts = [
        {"Type": "bind", "Source": str(spec.workspace), "Target": "/workspace"},
        {"Type": "bind", "Source": str(spec.model_socket), "Target": MODEL_SOCKET, "ReadOnly": True},
    ]
    if etc_dir is not None:
        for name in ("passwd", "group"):
            mounts.append({"Type": "bind", "Source": str(etc_dir / name), "Target": f"/etc/{name}", "ReadOnly": True})
    if spec.tunnel_socket is not None:  # the egress tunnel (its session's policy: egress_policy.py)
        mounts.append({"Type": "bind", "Source": str(spec.tunnel_socket), "Target": TUNNEL_SOCKET, "ReadOnly": True})
    packages: list[str] = []
    if spec.packages is not None:  # the environment's packages (packages.py), before the image's venv
        mounts.append({"Type": "bind", "Source": str(spec.packages), "Target": PACKAGES_PATH, "ReadOnly": True})
        path = ":".join([*packages_path(spec), IMAGE_PATH])
        packages = [f"PATH={path}", *(f"{k}={v}" for k, v in packages_env(spec).items())]
    return {
        "Image": image,
        "Cmd": list(RUNNER_CMD),
        "User": f"{uid}:{uid}",
        "WorkingDir": "/workspace",
        "Hostname": "moorage-sandbox",
        "Env": [
            f"HOME={SANDBOX_HOME}",
            "USER=agent",
            "LOGNAME=agent",
            "LANG=C.UTF-8",
            "TMPDIR=/tmp",
            "PYTHONDONTWRITEBYTECODE=1",
            "PYTHONUNBUFFERED=1",
            *(f"{name}={value}" for name, value in TOOL_ENV.items()),
            *packages,
        ],
        "Labels": {
            **spec.labels,
            LABEL_OWNER: owner,
            LABEL_SESSION: spec.session_id,
            LABEL_SANDBOX: spec.sandbox_id,
        },
        "AttachStdin": True,
        "AttachStdout": True,
        "AttachStderr": True,
        "OpenStdin": True,
        "StdinOnce": True,
        "Tty": False,
        "NetworkDisabled": True,
        "HostConfig": {
            "NetworkMode": "none",
            "ReadonlyRootfs": True,
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges"],
            "Memory": limits.memory_bytes,
            "MemorySwap": limits.memory_bytes,
            "PidsLimit": limits.pids,
            "NanoCpus": int(limits.cpus * 1e9),
            "IpcMode": "private",
            "Tmpfs": {
                "/tmp": f"{tmpfs_opts},mode=1777",
                SANDBOX_HOME: f"{tmpfs_opts},uid={uid},gid={uid},mode=0700",
                "/dev/shm": f"{tmpfs_opts},mode=1777",
                # The session's files (uploads/, outputs/: session_files.py), the sandbox user's.
                SESSION_DIR: f"rw,nosuid,nodev,size={session_bytes},uid={uid},gid={uid},mode=0700",
            },
            "Mounts": mounts,
            "LogConfig": {"Type": "none", "Config": {}},
        },
    }


def container_name(sandbox_id: str) -> str:
    return f"moorage-{sandbox_id}"


def _cgroup_dirs(pid: int) -> dict[str, Path]:
    """The container's cgroup v1 directories, from its init process (empty
    when they cannot be seen, e.g. the service itself runs in a container)."""
    try:
        proc_cgroup = Path(f"/proc/{pid}/cgroup").read_text()
        mountinfo = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return {}
    return {k: v for k, v in own_paths(proc_cgroup, mountinfo).items() if v.is_dir()}


def _counter(directory: Path | None, name: str, key: str) -> int | None:
    if directory is None:
        return None
    with contextlib.suppress(OSError, ValueError):
        for line in (directory / name).read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == key:
                return int(parts[1])
    return None


class DockerSandbox:
    """One container; its attached stdio is the runner channel."""

    def __init__(
        self,
        backend: DockerBackend,
        container: DockerContainer,
        stream: Stream,
        spec: SandboxSpec,
        pid: int,
        uid: int = SANDBOX_UID,
    ) -> None:
        self._backend = backend
        self.uid = uid
        self._container = container
        self._stream = stream
        self._spec = spec
        self.pid = pid
        self._cgroups = _cgroup_dirs(pid) if pid else {}
        self._workspace_mounted = os.path.ismount(spec.workspace)
        self._events = {"oom_kills": 0, "pids_refusals": 0}
        self._lines: ByteQueue[bytes | None] = ByteQueue(READ_AHEAD_BYTES)
        self._eof = False
        self._input_closed = False
        self._exit_code: int | None = None
        self.exited = asyncio.Event()
        self._released = False
        self._reader = asyncio.create_task(self._read())

    @property
    def container_id(self) -> str:
        return self._container.id

    @property
    def handle(self) -> dict[str, Any]:
        return {
            "backend": "docker",
            "container_id": self._container.id,
            "name": container_name(self._spec.sandbox_id),
            "pid": self.pid,
            "uid": self.uid,
            "sandbox_id": self._spec.sandbox_id,
            # A tmpfs: after a host crash it is gone, not empty (recovery keeps the last checkpoint).
            "workspace_mounted": self._workspace_mounted,
        }

    @property
    def returncode(self) -> int | None:
        return self._exit_code

    def limit_events(self) -> dict[str, int]:
        """OOM kills and refused forks, from the container's cgroup counters
        while it runs, and the engine's ``OOMKilled`` once it has exited."""
        for key, (controller, name, field) in {
            "oom_kills": ("memory", "memory.oom_control", "oom_kill"),
            "pids_refusals": ("pids", "pids.events", "max"),
        }.items():
            value = _counter(self._cgroups.get(controller), name, field)
            if value is not None:
                self._events[key] = max(self._events[key], value)
        return dict(self._events)

    def memory_bytes(self) -> int | None:
        """The container's memory cgroup's charge, where this host lets us see it (v1)."""
        return memory_usage(self._cgroups)

    async def send(self, frame: dict[str, Any]) -> None:
        if self._input_closed or self._eof:
            raise SandboxError("sandbox input is closed")
        try:
            await self._stream.write_in(encode_frame(frame))
        except (ConnectionError, RuntimeError, AssertionError, aiohttp.ClientError) as exc:
            raise SandboxError("sandbox input is closed") from exc

    async def recv(self) -> RunnerFrame | None:
        if self._eof:
            return None
        line = await self._lines.get()
        if line is None:
            self._eof = True
            return None
        return decode_frame(line)

    async def _read(self) -> None:
        """Demultiplex the attached stream: stdout lines to the frame queue,
        stderr to the log. At its end, record the exit (code, OOM) before
        the consumer sees end-of-stream."""
        buf = bytearray()
        try:
            while (message := await self._stream.read_out()) is not None:
                if message.stream == 2:
                    for raw in message.data.splitlines():
                        log.debug(
                            "sandbox_stderr",
                            line=raw[:2000].decode(errors="replace"),
                            session_id=self._spec.session_id,
                        )
                    continue
                scan = len(buf)  # only the new bytes can hold the next newline
                buf += message.data
                while (end := buf.find(b"\n", scan)) >= 0:
                    await self._lines.put(bytes(buf[: end + 1]), end + 1)
                    del buf[: end + 1]
                    scan = 0
                if len(buf) > MAX_FRAME_BYTES:  # the runner broke the channel contract
                    log.warning("sandbox_frame_too_long", sandbox_id=self._spec.sandbox_id)
                    break
        except (aiohttp.ClientError, ConnectionError, OSError, aiodocker.DockerError) as exc:
            log.debug("sandbox_stream_failed", sandbox_id=self._spec.sandbox_id, error=type(exc).__name__)
        if len(buf) > MAX_FRAME_BYTES:
            await self._kill_container("SIGKILL")
        await self._record_exit()
        self._lines.force(None)

    async def _record_exit(self) -> None:
        with contextlib.suppress(aiodocker.DockerError, aiohttp.ClientError, TimeoutError, OSError):
            result = await self._container.wait(timeout=EXIT_WAIT_S)
            self._exit_code = int(result.get("StatusCode", -1))
            self.limit_events()
            info = await self._container.show()
            if info.get("State", {}).get("OOMKilled") and not self._events["oom_kills"]:
                self._events["oom_kills"] = 1
        self.exited.set()

    async def _kill_container(self, signal: str) -> None:
        with contextlib.suppress(aiodocker.DockerError, aiohttp.ClientError, TimeoutError, OSError):
            await self._container.kill(signal=signal, timeout=API_TIMEOUT_S)

    def _close_input(self) -> None:
        """Half-close the attached stream: the runner reads end of input."""
        if self._input_closed:
            return
        self._input_closed = True
        resp = getattr(self._stream, "_resp", None)
        transport = resp.connection.transport if resp is not None and resp.connection is not None else None
        if transport is not None and transport.can_write_eof():
            with contextlib.suppress(OSError, RuntimeError):
                transport.write_eof()

    async def stop(self, grace_s: float) -> int | None:
        """Close input -> wait -> SIGTERM -> wait -> SIGKILL; bounded; then remove."""
        self._close_input()
        await stop_in_stages(self.exited, lambda sig: self._kill_container(sig.name), grace_s)
        await self._release()
        return self.returncode

    async def kill(self) -> None:
        if not self.exited.is_set():
            await self._kill_container("SIGKILL")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.exited.wait(), 5.0)
        await self._release()

    async def _release(self) -> None:
        if self._released:
            return
        self._released = True
        await self._backend.remove(self._container.id)
        self._reader.cancel()
        with contextlib.suppress(Exception):
            await self._stream.close()
        self._backend.live.pop(self._spec.sandbox_id, None)
        # The container is gone; its uid stays taken until the workspace is archived (as it) and removed.
        self._backend._give_back(self._spec.sandbox_id, self.uid, self._spec.workspace)
        if not self._eof and not len(self._lines):
            self._lines.force(None)


class DockerBackend:
    """Starts sandboxes as containers; see the module docstring."""

    name = "docker"

    def __init__(
        self,
        url: str,
        image: str,
        limits: Limits,
        owner: str,
        tmp_bytes: int = TMPFS_BYTES,
        uids: UidPool | None = None,
        state_dir: Path | None = None,
        workspace_bytes: int = 0,
        session_bytes: int = SESSION_FILES_BYTES,
    ) -> None:
        self.session_bytes = session_bytes
        # With a pool (the service runs as root), each container runs as a
        # host uid of its own, as local sandboxes do: no two sandboxes, and no
        # user of this host, share one. Without, the image's uid 1000.
        self.uids = uids
        # As root, each workspace is a tmpfs of this size (0: a plain directory), as on the local
        # backend: a filler gets ENOSPC, the host's disk never fills.
        self.workspace_bytes = workspace_bytes
        self.etc_root = state_dir.resolve() / "docker-etc" if state_dir is not None else None
        self.url = url or None
        self.tmp_bytes = tmp_bytes
        self.image = image
        self.limits = limits
        self.owner = owner
        self.live: dict[str, DockerSandbox] = {}
        self._docker: aiodocker.Docker | None = None

    @property
    def docker(self) -> aiodocker.Docker:
        if self._docker is None:
            self._docker = aiodocker.Docker(url=self.url)
        return self._docker

    async def check(self) -> None:
        """At service start: the engine answers, the image is there, and what
        a previous run of this service left behind is removed."""
        problem = await self.ready()
        if problem is not None:
            raise SandboxError(problem, code=Code.SANDBOX_START_FAILED)
        try:
            await self.docker.images.inspect(self.image)
        except aiodocker.DockerError as exc:
            raise SandboxError(
                f"sandbox image {self.image} not found on the Docker engine: build it with 'make images' ({exc})",
                code=Code.SANDBOX_START_FAILED,
            ) from exc
        await self.reap_orphans()

    async def start(self, spec: SandboxSpec) -> DockerSandbox:
        uid = self.uids.take() if self.uids is not None else SANDBOX_UID
        try:
            return await self._start(spec, uid)
        except BaseException:
            self._give_back(spec.sandbox_id, uid)
            # A fresh directory, maybe mounted for it: nobody else would unmount it.
            await asyncio.to_thread(remove_workspace, spec.workspace)
            raise

    def _size_workspace(self, path: Path, uid: int) -> None:
        if self.workspace_bytes and not os.path.ismount(path):
            self.workspace_bytes = mount_workspace(path, self.workspace_bytes, uid)  # 0: cannot mount here

    def _give_back(self, sandbox_id: str, uid: int, workspace: Path | None = None) -> None:
        if self.uids is not None:
            self.uids.give_back(uid, once_gone=workspace)
        if self.etc_root is not None:
            shutil.rmtree(self.etc_root / sandbox_id, ignore_errors=True)

    async def _start(self, spec: SandboxSpec, uid: int) -> DockerSandbox:
        etc_dir = None
        if self.etc_root is not None:
            etc_dir = self.etc_root / spec.sandbox_id
            write_etc(etc_dir, uid)
        spec.workspace.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            self._size_workspace(spec.workspace, uid)
            os.chown(spec.workspace, uid, uid)
            # uid 1000 may be a real user of this host: it owns the workspace,
            # so the directory above it must keep everyone but root out.
            if spec.workspace.parent.stat().st_uid == 0:
                spec.workspace.parent.chmod(0o700)
        spec.workspace.chmod(0o700)
        config = container_config(
            spec, self.image, self.limits, self.owner, self.tmp_bytes, uid, etc_dir, self.session_bytes
        )
        container: DockerContainer | None = None
        stream: Stream | None = None
        try:
            container = await self.docker.containers.create(config, name=container_name(spec.sandbox_id))
            stream = container.attach(stdin=True, stdout=True, stderr=True, logs=False)
            await stream.__aenter__()  # attached before start: no output is lost
            await container.start()
            info = await container.show()
        except BaseException as exc:  # cancelled too: leave no container behind
            if stream is not None:
                await stream.close()
            if container is not None:
                await self.remove(container.id)
            if isinstance(exc, aiodocker.DockerError | aiohttp.ClientError | OSError):
                raise SandboxError(f"cannot start sandbox container: {exc}", code=Code.SANDBOX_START_FAILED) from exc
            raise
        sandbox = DockerSandbox(self, container, stream, spec, int(info.get("State", {}).get("Pid") or 0), uid)
        self.live[spec.sandbox_id] = sandbox
        log.info("sandbox_started", sandbox_id=spec.sandbox_id, container=container.id[:12], pid=sandbox.pid)
        return sandbox

    async def remove(self, container_id: str) -> None:
        """Force-remove a container (kills it first); a missing one is fine."""
        try:
            await self.docker.containers.container(container_id).delete(force=True, v=True, timeout=API_TIMEOUT_S)
        except aiodocker.DockerError as exc:
            if exc.status not in (404, 409):  # gone, or removal already in progress
                log.warning("sandbox_remove_failed", container=container_id[:12], error=str(exc)[:200])
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("sandbox_remove_failed", container=container_id[:12], error=type(exc).__name__)

    async def ready(self) -> str | None:
        try:
            await asyncio.wait_for(self.docker.version(), 5.0)
        except (aiodocker.DockerError, aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            return f"the Docker engine at {self.url or 'the default socket'} does not answer: {exc}"
        return None

    async def bind_proxy(self, proxy: ModelProxy) -> None:
        """Nothing to do: the proxy's socket is mounted into each sandbox."""

    async def reap(self, handle: dict[str, Any]) -> None:
        """Remove the container a previous run of the service started (from its persisted handle)."""
        container_id = handle.get("container_id")
        sandbox_id = handle.get("sandbox_id")
        if not isinstance(container_id, str) or sandbox_id in self.live:
            return
        await self.remove(container_id)

    async def reap_orphans(self) -> int:
        """Remove every container labelled as ours that this process does not run."""
        try:
            found = await self.docker.containers.list(all=True, filters={"label": [f"{LABEL_OWNER}={self.owner}"]})
        except (aiodocker.DockerError, aiohttp.ClientError, OSError) as exc:
            log.warning("sandbox_orphans_unlisted", error=str(exc)[:200])
            return 0
        mine = {s.container_id for s in self.live.values()}
        orphans = [c.id for c in found if c.id not in mine]
        await asyncio.gather(*(self.remove(cid) for cid in orphans))
        if orphans:
            log.info("sandbox_orphans_reaped", count=len(orphans))
        return len(orphans)

    async def close(self) -> None:
        await asyncio.gather(*(s.stop(2.0) for s in list(self.live.values())), return_exceptions=True)
        if self._docker is not None:
            await self._docker.close()
            self._docker = None
