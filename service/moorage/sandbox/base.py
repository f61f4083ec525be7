"""The sandbox contract every backend (local, docker, kubernetes) implements.

A backend starts one sandbox per live session. Inside runs the agent runner
(``container/``); the service talks to it over a JSON-lines channel. Outside
it, the sandbox has exactly one way out: the model proxy endpoint named in the
spec. Backends keep no hidden per-session state: ``Sandbox.handle`` is plain
JSON that a restarted service can use to find and reap what it left behind.

Contracts (checked by tests/integration/test_sandbox_conformance.py):
- ``start`` returns once the process exists; readiness is the runner's
  ``ready`` frame, which the caller awaits with its own deadline.
- ``recv`` yields frames in order, each parsed strictly by
  ``channel.decode_frame`` (a line that breaks the protocol is a
  ``Violation`` frame), and returns None exactly once the runner's output
  ended; it never raises for a dead sandbox or for anything the runner sent.
- ``stop`` is staged and bounded: close the input, wait ``grace_s``, then
  terminate and kill. It is idempotent and safe after a crash.
- After ``stop`` returns, no process of the sandbox is left.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

# The channel's codec, re-exported for every backend.
from ..channel import SESSION_DIR as SESSION_DIR
from ..channel import RunnerFrame
from ..channel import decode_frame as decode_frame
from ..channel import encode_frame as encode_frame

if TYPE_CHECKING:
    from ..egress import ModelProxy

MODEL_SOCKET = "/run/moorage/model.sock"
TUNNEL_SOCKET = "/run/moorage/tunnel.sock"
# Every sandbox's /mnt/session (SESSION_DIR) is a tmpfs of this size by default
# (MOORAGE_SESSION_FILES_BYTES): counted, like every tmpfs, in the sandbox's memory.
SESSION_FILES_BYTES = 256 * 1024 * 1024
# An environment's packages (packages.py): its layer, mounted read-only here, ``bin/`` first on
# PATH; the runner gives the agent's commands ``site-packages`` as PYTHONPATH (AGENT_PYTHONPATH).
PACKAGES_PATH = "/opt/moorage/packages"
PACKAGES_SITE = "site-packages"
PACKAGES_NODE = "node"  # npm packages: node/node_modules (NODE_PATH), node/node_modules/.bin (PATH)
AGENT_PYTHONPATH = "MOORAGE_AGENT_PYTHONPATH"


@dataclass(frozen=True)
class SandboxSpec:
    session_id: str
    sandbox_id: str
    workspace: Path
    model_socket: Path
    labels: dict[str, str] = field(default_factory=dict)
    # The egress tunnel's socket (tunnel.py), mounted at TUNNEL_SOCKET like the model socket at
    # MODEL_SOCKET (local, docker; Kubernetes pods cannot reach it). It allows nothing until the
    # session that claims the sandbox sets its policy (egress_policy.py). None: no tunnel.
    tunnel_socket: Path | None = None
    # The session's environment packages (packages.py): a built layer, mounted at PACKAGES_PATH
    # (local, docker). None: none.
    packages: Path | None = None


def packages_env(spec: SandboxSpec) -> dict[str, str]:
    """What a sandbox with a packages layer adds to its environment (the PATH entry is the
    backend's: it knows its own PATH)."""
    if spec.packages is None:
        return {}
    return {
        AGENT_PYTHONPATH: f"{PACKAGES_PATH}/{PACKAGES_SITE}",
        "NODE_PATH": f"{PACKAGES_PATH}/{PACKAGES_NODE}/node_modules",
    }


def packages_path(spec: SandboxSpec) -> list[str]:
    """The PATH entries a packages layer puts first: its console scripts, its npm packages' bins."""
    if spec.packages is None:
        return []
    return [f"{PACKAGES_PATH}/bin", f"{PACKAGES_PATH}/{PACKAGES_NODE}/node_modules/.bin"]


class Sandbox(Protocol):
    @property
    def handle(self) -> dict[str, Any]: ...

    @property
    def returncode(self) -> int | None: ...

    async def send(self, frame: dict[str, Any]) -> None: ...

    async def recv(self) -> RunnerFrame | None: ...

    async def stop(self, grace_s: float) -> int | None: ...

    async def kill(self) -> None: ...

    def limit_events(self) -> dict[str, int]:
        """Counters of limits that bit: ``oom_kills``, ``pids_refusals``."""

    def memory_bytes(self) -> int | None:
        """What the sandbox holds in memory now (its memory cgroup's charge), or None where the
        backend cannot tell: the warm pool measures its started agents with it (pool.py)."""


class SandboxBackend(Protocol):
    name: str

    async def start(self, spec: SandboxSpec) -> Sandbox: ...

    async def ready(self) -> str | None:
        """None when sandboxes can be started now, else what is wrong."""

    async def close(self) -> None: ...

    async def reap(self, handle: dict[str, Any]) -> None:
        """Remove whatever a sandbox with this ``handle`` left behind (a
        restarted service recovering its sessions); idempotent."""

    async def bind_proxy(self, proxy: ModelProxy) -> None:
        """Make the model proxy reachable from sandboxes before the first
        start (kubernetes: the proxy's TCP port for pods); a no-op where the
        proxy socket is mounted."""


SANDBOX_HOME = "/home/agent"  # the sandbox user's home, in every backend
# For the agent's tools, in every backend (the image's ENV says the same): matplotlib draws to
# files, never to a display a sandbox does not have.
TOOL_ENV = {"MPLBACKEND": "Agg"}


def write_etc(etc_dir: Path, uid: int) -> None:
    """``passwd`` and ``group`` naming ``uid`` the sandbox user ``agent``, and
    ``hosts``/``hostname``, for a backend to mount over the system's."""
    etc_dir.mkdir(parents=True, exist_ok=True)
    etc_dir.chmod(0o755)
    files = {
        "passwd": f"root:x:0:0:root:/root:/usr/sbin/nologin\nagent:x:{uid}:{uid}:agent:{SANDBOX_HOME}:/bin/bash\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        "group": f"root:x:0:\nagent:x:{uid}:\nnogroup:x:65534:\n",
        "hosts": "127.0.0.1 localhost moorage-sandbox\n::1 localhost\n",
        "hostname": "moorage-sandbox\n",
    }
    for name, text in files.items():
        (etc_dir / name).write_text(text)
        (etc_dir / name).chmod(0o644)


async def stop_in_stages(
    exited: asyncio.Event, send: Callable[[signal.Signals], Awaitable[None]], grace_s: float
) -> None:
    """The stop every backend does once the runner's input is closed: wait
    ``grace_s`` for it to exit, then SIGTERM and wait 2 s, then SIGKILL and
    wait 5 s. Returns as soon as ``exited`` is set; bounded either way."""
    for sig, wait_s in ((None, grace_s), (signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
        if sig is not None and not exited.is_set():
            await send(sig)
        try:
            await asyncio.wait_for(exited.wait(), wait_s)
            return
        except TimeoutError:
            continue
