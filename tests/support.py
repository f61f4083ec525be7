"""Test helpers: the service as a real process, and a WebSocket client.

Every wait is bounded and scales with ``MOORAGE_TEST_TIMEOUT_FACTOR``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websockets
from aiohttp import web
from moorage.testing.scripted_model import ScriptedModelServer

FACTOR = float(os.environ.get("MOORAGE_TEST_TIMEOUT_FACTOR", "1"))
REAL_KEY = "sk-ant-real-key-that-must-never-enter-a-sandbox"


def scaled(seconds: float) -> float:
    return seconds * FACTOR


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``check`` until it holds; fail after ``timeout`` (scaled)."""
    deadline = time.monotonic() + scaled(timeout)
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {scaled(timeout):.1f}s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Service:
    port: int
    state_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes]
    env: dict[str, str] = field(default_factory=dict)
    started_by: str = ""  # the test that started it (PYTEST_CURRENT_TEST)
    started_at: float = 0.0  # CLOCK_BOOTTIME seconds
    stopped_at: float | None = None  # CLOCK_BOOTTIME seconds, once its process is gone

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False


STARTED: list[Service] = []  # every service run_service started, in order


@contextmanager
def run_service(model_url: str, **overrides: str) -> Iterator[Service]:
    """Start ``python -m moorage serve`` on a free port; stop it after."""
    state = Path(tempfile.mkdtemp(prefix="moorage-test-"))
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "MOORAGE_HOST": "127.0.0.1",
        "MOORAGE_PORT": str(port),
        "MOORAGE_STATE_DIR": str(state),
        "MOORAGE_IDLE_TIMEOUT_S": "60",
        "MOORAGE_MAX_TURNS": "3",
        "MOORAGE_LOG_LEVEL": "debug",
        # Teardown sends SIGTERM: a turn left running need not hold it up.
        "MOORAGE_DRAIN_GRACE_S": "5",
        # A loaded machine starts sandboxes slowly (the preflight too).
        "MOORAGE_SANDBOX_START_TIMEOUT_S": str(scaled(60)),
        "ANTHROPIC_BASE_URL": model_url,
        "ANTHROPIC_API_KEY": REAL_KEY,
        **overrides,
    }
    log_path = state / "service.log"
    started_at = time.clock_gettime(time.CLOCK_BOOTTIME)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moorage", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    # A restart on an earlier service's state dir (MOORAGE_STATE_DIR): its own log, the shared state.
    state_dir = Path(overrides.get("MOORAGE_STATE_DIR") or state)
    service = Service(port, state_dir, log_path, proc, env, os.environ.get("PYTEST_CURRENT_TEST", ""), started_at)
    STARTED.append(service)  # for the leak audit (tests/leaks.py)
    try:
        wait_until(lambda: service.healthy() or proc.poll() is not None, 30, "the service to answer /healthz")
        if proc.poll() is not None:
            raise AssertionError(f"service exited at start:\n{service.logs()}")
        yield service
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(scaled(30))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        service.stopped_at = time.clock_gettime(time.CLOCK_BOOTTIME)


async def refused_start(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``moorage serve`` with ``env`` where it must refuse to start: its exit and output (bounded)."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "moorage", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=scaled(60),
    )


class Client:
    """A WebSocket client speaking protocol v1, with bounded waits."""

    def __init__(self, ws: Any, first: dict[str, Any]) -> None:
        self.ws = ws
        self.first = first
        self.session_id: str = first.get("session_id", "")
        # Start progress (``status`` frames, ephemeral) is kept apart, as a chat client shows it
        # apart: ``recv`` and ``until`` return the conversation's frames only.
        self.statuses: list[dict[str, Any]] = []

    async def _next(self, timeout_s: float) -> dict[str, Any]:
        frame: dict[str, Any] = json.loads(await self.text(timeout_s))
        return frame

    async def text(self, timeout_s: float) -> str:
        """The next frame that is not a ``status``, as the server wrote it."""
        while True:
            text = str(await asyncio.wait_for(self.ws.recv(), timeout_s))
            frame = json.loads(text)
            if not isinstance(frame, dict) or frame.get("type") != "status":
                return text
            self.statuses.append(frame)

    @classmethod
    async def connect(
        cls,
        service: Service,
        session_id: str | None = None,
        token: str | None = None,
        query: str = "",
        subprotocols: list[str] | None = None,
    ) -> Client:
        path = "/v1/sessions" + (f"/{session_id}" if session_id else "") + query
        headers = {"Authorization": f"Bearer {token}"} if token else None
        ws = await websockets.connect(
            service.ws_url + path,
            max_size=None,
            open_timeout=scaled(10),
            additional_headers=headers,
            subprotocols=subprotocols,  # type: ignore[arg-type]
        )
        first = json.loads(await asyncio.wait_for(ws.recv(), scaled(10)))
        return cls(ws, first)

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    async def say(self, prompt: str) -> None:
        await self.send({"type": "user", "message": {"role": "user", "content": prompt}})

    async def recv(self, timeout: float = 30) -> dict[str, Any]:
        return await self._next(scaled(timeout))

    async def until(self, *types: str, timeout: float = 60) -> list[dict[str, Any]]:
        """Frames up to and including the first whose type is in ``types``."""
        deadline = asyncio.get_running_loop().time() + scaled(timeout)
        frames: list[dict[str, Any]] = []
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(f"no {types} frame within {scaled(timeout)}s; got {[f['type'] for f in frames]}")
            frame = await self._next(left)
            frames.append(frame)
            if frame.get("type") in types:
                return frames

    async def turn(self, prompt: str, timeout: float = 60) -> list[dict[str, Any]]:
        await self.say(prompt)
        return await self.until("result", "error", timeout=timeout)

    async def close(self) -> None:
        await self.ws.close()


def result_of(frames: list[dict[str, Any]]) -> dict[str, Any]:
    results = [f for f in frames if f.get("type") == "result"]
    assert results, f"no result frame in {[f.get('type') for f in frames]}"
    return results[-1]


def tool_output(frames: list[dict[str, Any]]) -> str:
    """The text of every tool result the client saw in a turn."""
    out: list[str] = []
    for f in frames:
        if f.get("type") != "user":
            continue
        for block in (f.get("message") or {}).get("content") or []:
            if isinstance(block, dict) and block.get("type") == "tool_result":
                content = block.get("content")
                if isinstance(content, list):
                    out.extend(b.get("text", "") for b in content if isinstance(b, dict))
                else:
                    out.append(str(content))
    return "\n".join(out)


def session_pids(session_id: str) -> list[int]:
    """Host pids of the processes running a session's sandbox."""
    pids = []
    marker = f"MOORAGE_SESSION_ID={session_id}".encode()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if marker in f.read().split(b"\0"):
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


def uid_of(pid: int) -> int:
    return os.stat(f"/proc/{pid}").st_uid


def processes_of_uid(uid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


# -- databases and logs ---------------------------------------------------------

PG = ("127.0.0.1", 5432)


def pg_available() -> bool:
    try:
        with socket.create_connection(PG, timeout=1):
            return True
    except OSError:
        return False


def events(svc: Service, event: str, session_id: str | None = None) -> list[dict[str, Any]]:
    found = []
    for line in svc.logs().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == event and (session_id is None or record.get("session_id") == session_id):
            found.append(record)
    return found


async def wait_suspended(svc: Service, session_id: str) -> None:
    await asyncio.to_thread(
        wait_until, lambda: bool(events(svc, "session_suspended", session_id)), 30, "the session to be suspended"
    )


class Cuttable:
    """A TCP proxy (to PostgreSQL unless told otherwise) that a test can cut and restore."""

    def __init__(self, target: tuple[str, int] = PG) -> None:
        self.target = target
        self.port = free_port()
        self._server: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def restore(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(16)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            if self._server is not None:
                with contextlib.suppress(OSError):
                    self._server.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
                self._server.close()
                self._server = None
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self._conns.clear()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                b.shutdown(socket.SHUT_WR)


@contextmanager
def pg_database(tag: str = "") -> Iterator[str]:
    """A new PostgreSQL database for this process (``tag`` tells two apart), dropped after."""
    name = f"moorage_test_{os.getpid()}{tag}"
    subprocess.run(
        ["psql", "-h", PG[0], "-U", "postgres", "-c", f"DROP DATABASE IF EXISTS {name}"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["psql", "-h", PG[0], "-U", "postgres", "-c", f"CREATE DATABASE {name}"], check=True, capture_output=True
    )
    try:
        yield name
    finally:
        subprocess.run(
            ["psql", "-h", PG[0], "-U", "postgres", "-c", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"],
            capture_output=True,
        )


# -- the Docker engine for the Docker backend's tests -----------------------------

DOCKER_URL = os.environ.get("MOORAGE_TEST_DOCKER_URL", "unix:///run/moorage-dockerd/docker.sock")
_docker_image: tuple[str | None, str] | None = None


def docker_engine_problem() -> str | None:
    """Why no Docker engine answers at ``DOCKER_URL`` (None: one does)."""
    path = DOCKER_URL.removeprefix("unix://")
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(path)
            s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
            if b" 200 " not in s.recv(64):
                return f"the Docker engine at {DOCKER_URL} does not answer /_ping"
    except OSError as exc:
        return f"no Docker engine at {DOCKER_URL} ({exc}); .ci/run starts one (container/dockerd.sh)"
    return None


def docker_settings(image: str) -> dict[str, str]:
    """``run_service`` overrides for the Docker backend with ``image``, cold starts only (no
    warm pool: each container is labelled with its session from the start)."""
    return {
        "MOORAGE_SANDBOX": "docker",
        "MOORAGE_DOCKER_URL": DOCKER_URL,
        "MOORAGE_SANDBOX_IMAGE": image,
        "MOORAGE_WARM_SANDBOXES": "0",
        "MOORAGE_WARM_AGENTS": "0",
    }


def docker_sandbox_image() -> tuple[str | None, str]:
    """(the sandbox image's content-hash tag, "") once container/build-images.sh
    has made sure it exists (idempotent; quick when it does), or (None, why not)."""
    global _docker_image
    if _docker_image is None:
        problem = docker_engine_problem()
        if problem is not None:
            _docker_image = (None, problem)
        else:
            script = Path(__file__).parent.parent / "container" / "build-images.sh"
            env = {**os.environ, "DOCKER_HOST": DOCKER_URL}
            done = subprocess.run(
                [str(script), "sandbox"], env=env, capture_output=True, text=True, timeout=scaled(1200), check=False
            )
            if done.returncode != 0:
                raise AssertionError(f"container/build-images.sh failed:\n{done.stderr[-3000:]}")
            _docker_image = (done.stdout.split()[-1], "")
    return _docker_image


def metric_value(svc: Service, name: str, **labels: str) -> float:
    """One sample from the service's /metrics (0 when the series is absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(svc.url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def http_status(url: str) -> tuple[int, dict[str, object]]:
    """Status and JSON body of a GET (error statuses included)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def prompts_seen(model: ScriptedModelServer) -> str:
    """Everything the model was last sent, as text (the conversation it saw)."""
    return json.dumps(model.model.requests[-1]["messages"])


@contextlib.asynccontextmanager
async def serve_messages(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]], max_body: int = 1024**2
) -> AsyncIterator[str]:
    """A stand-in Messages API upstream on a free loopback port: ``handler``
    answers ``POST /v1/messages`` (bodies up to ``max_body``, aiohttp's
    default); yields the base URL."""
    app = web.Application(client_max_size=max_body)
    app.router.add_post("/v1/messages", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def moorage_chat(svc: Service, stdin: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``moorage chat`` against ``svc`` with ``stdin`` typed in, then end of file (it quits once
    every turn it saw has its result)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "moorage",
        "chat",
        "--url",
        svc.ws_url,
        *args,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), scaled(90))
    assert proc.returncode is not None
    return subprocess.CompletedProcess(list(args), proc.returncode, out.decode(), err.decode())


class Recorder:
    """A subscriber (``protocol.Subscriber``) attached to a session in-process: keeps every frame
    a client would get, decoded."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None

    def offer(self, text: str) -> bool:
        self.frames.append(json.loads(text))
        return True

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f.get("type") == kind]

    def ended(self) -> bool:
        """The turn's result came, or a fatal error."""
        return any(f.get("type") == "result" or (f.get("type") == "error" and f.get("fatal")) for f in self.frames)


async def eventually(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``check`` until it holds (bounded by ``timeout``, scaled)."""
    deadline = time.monotonic() + scaled(timeout)
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {scaled(timeout):.0f}s waiting for {what}")
        await asyncio.sleep(0.05)
