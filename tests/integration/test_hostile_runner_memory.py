"""A hostile runner cannot exhaust the service's memory or poison /metrics
(issue 10 item 4).

The service runs in this process (its real app, uvicorn, SQLite, a real
WebSocket client); the sandbox backend is a fake whose sandboxes implement
the ``Sandbox`` protocol and send what an attacker who replaced the runner
would: endless rpc frames it never reads the answers to, endless SDK
messages to a client that does not read, error frames with codes of its own
choosing, result frames with ``total_cost_usd: Infinity``. Memory is
measured with tracemalloc; the floods are endless, so without a bound the
test sees memory pass its limit instead of hanging.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import os
import socket
import tracemalloc
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import websockets
from moorage import app as app_module
from moorage.channel import CHANNEL_VERSION, RunnerFrame
from moorage.egress import ModelProxy
from moorage.sandbox.base import Sandbox, SandboxSpec, decode_frame, encode_frame
from moorage.sessions import Session
from moorage.settings import Settings
from prometheus_client.parser import text_string_to_metric_families
from support import scaled

MiB = 1024 * 1024
CHUNK = "x" * (64 * 1024 - 1)
# What the service may hold for one flooded session: the relay (8 MiB) or a
# client queue (4 MiB), a frame or two in flight, and slack for the rest of
# the process. Without the bounds the same floods pass this within seconds.
MEMORY_LIMIT = 48 * MiB

Script = Callable[["FakeSandbox"], AsyncIterator[dict[str, Any]]]


class FakeSandbox:
    """A sandbox whose runner is ``script``: after the ``loaded``/``start``/
    ``ready`` handshake, every frame it yields is what the runner sends. With
    ``reads_input=False`` it never reads its input: ``send`` blocks, as a
    write into a full pipe does."""

    def __init__(self, spec: SandboxSpec, script: Script, reads_input: bool) -> None:
        self.spec = spec
        self.reads_input = reads_input
        self.produced = 0
        self._frames = script(self)
        self._started = asyncio.Event()
        self._stopped = asyncio.Event()
        self._handshake = [{"kind": "loaded", "version": CHANNEL_VERSION}]
        self.turns: asyncio.Queue[None] = asyncio.Queue()  # one item per user frame received

    @property
    def handle(self) -> dict[str, Any]:
        return {"backend": "fake", "sandbox_id": self.spec.sandbox_id}

    @property
    def returncode(self) -> int | None:
        return 0 if self._stopped.is_set() else None

    async def send(self, frame: dict[str, Any]) -> None:
        if self._stopped.is_set():
            from moorage.errors import SandboxError

            raise SandboxError("sandbox input is closed")
        if frame.get("kind") == "start":
            self._handshake.append({"kind": "ready"})
            return
        if frame.get("kind") == "user":
            self.turns.put_nowait(None)
        if not self.reads_input:
            await self._stopped.wait()  # the pipe is full until the sandbox is gone

    async def recv(self) -> RunnerFrame | None:
        """The next frame, through the strict channel parser every backend uses."""
        if self._handshake:
            return decode_frame(encode_frame(self._handshake.pop(0)))
        if self._stopped.is_set():
            return None
        await asyncio.sleep(0)  # a pipe read: other tasks run between frames
        try:
            frame = await anext(self._frames)
        except StopAsyncIteration:
            await self._stopped.wait()
            return None
        self.produced += 1
        return decode_frame(encode_frame(frame))

    async def stop(self, grace_s: float) -> int | None:
        self._stopped.set()
        return 0

    async def kill(self) -> None:
        self._stopped.set()

    def limit_events(self) -> dict[str, int]:
        return {"oom_kills": 0, "pids_refusals": 0}

    def memory_bytes(self) -> int | None:
        return None


class FakeBackend:
    name = "local"  # a label from the fixed set

    def __init__(self) -> None:
        self.script: Script | None = None
        self.reads_input = True
        self.sandboxes: list[FakeSandbox] = []

    async def start(self, spec: SandboxSpec) -> Sandbox:
        assert self.script is not None, "no runner script for this test"
        spec.workspace.mkdir(parents=True, exist_ok=True)
        sandbox = FakeSandbox(spec, self.script, self.reads_input)
        self.sandboxes.append(sandbox)
        return sandbox

    async def ready(self) -> str | None:
        return None

    async def reap(self, handle: dict[str, Any]) -> None:
        pass  # nothing outlives a fake sandbox

    async def bind_proxy(self, proxy: ModelProxy) -> None:
        pass

    async def close(self) -> None:
        for sandbox in self.sandboxes:
            await sandbox.stop(0)


@dataclass
class Running:
    backend: FakeBackend
    port: int
    app: Any

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/sessions"

    def session(self) -> Session:
        sessions = list(self.app.state.services.sessions.sessions.values())
        assert len(sessions) == 1
        session: Session = sessions[0]
        return session

    async def metrics_text(self) -> str:
        def get() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=30) as r:
                return str(r.read().decode())

        return await asyncio.to_thread(get)


@pytest.fixture
async def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Running]:
    backend = FakeBackend()

    async def make_backend(settings: Settings) -> FakeBackend:
        return backend

    monkeypatch.setattr(app_module, "make_backend", make_backend)
    settings = Settings(
        state_dir=tmp_path / "state",
        warm_sandboxes=0,
        warm_agents=0,  # its scripted runners answer no prestart: each session starts its own
        workspace_checkpoint_s=3600,
        anthropic_base_url="http://127.0.0.1:9",
    )
    app = app_module.create_app(settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, ws="websockets-sansio", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    deadline = asyncio.get_running_loop().time() + scaled(30)
    while not server.started:
        assert not task.done(), "the service did not start"
        assert asyncio.get_running_loop().time() < deadline, "the service did not start in time"
        await asyncio.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield Running(backend, port, app)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, scaled(60))


async def conversation_frame(ws: Any) -> dict[str, Any]:
    """The next frame, past start progress (``status``)."""
    while True:
        frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), scaled(30)))
        if frame.get("type") != "status":
            return frame


async def wait_bounded(done: Callable[[], bool], what: str, baseline: int, timeout: float = 60) -> int:
    """Poll until ``done()``; fail as soon as traced memory passes
    ``baseline + MEMORY_LIMIT`` (the flood is endless: unbounded memory
    never makes ``done()`` true first). Returns the peak growth seen."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + scaled(timeout)
    while True:
        peak = tracemalloc.get_traced_memory()[1] - baseline
        assert peak < MEMORY_LIMIT, f"memory grew by {peak / MiB:.0f} MiB before {what}"
        if done():
            return peak
        assert loop.time() < deadline, f"no {what} within {scaled(timeout)}s"
        await asyncio.sleep(0.01)


@contextlib.contextmanager
def traced() -> Any:
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


async def endless_rpc(sandbox: FakeSandbox) -> AsyncIterator[dict[str, Any]]:
    n = 0
    while True:
        n += 1
        yield {"kind": "rpc", "id": n, "method": "store.append", "params": {"pad": CHUNK + str(n)}}


async def endless_sdk(sandbox: FakeSandbox) -> AsyncIterator[dict[str, Any]]:
    n = 0
    while True:
        n += 1
        yield {"kind": "sdk", "message": {"type": "assistant", "message": {"content": CHUNK + str(n)}}}


async def test_a_runner_flooding_rpc_frames_it_never_reads_answers_to_is_not_buffered(service: Running) -> None:
    """Endless rpc frames from a runner that does not read its input: the
    relay's queue fills (in bytes) and the service stops reading that
    sandbox; memory stays bounded instead of holding every frame."""
    service.backend.script = endless_rpc
    service.backend.reads_input = False
    with traced():
        async with websockets.connect(service.ws_url, max_size=None) as ws:
            await ws.recv()  # session
            baseline = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            relay = service.session().relay

            def relay_full() -> bool:
                return bool(getattr(relay, "queued_bytes", 0) >= 8 * MiB - 128 * 1024)

            await wait_bounded(relay_full, "the relay queue to fill", baseline)
            produced = service.backend.sandboxes[-1].produced
            # Backpressure: the pump waits, nothing more is read from the sandbox.
            for _ in range(200):
                await asyncio.sleep(0)
            # At most the frame the pump holds and the one the worker took after the check.
            assert service.backend.sandboxes[-1].produced <= produced + 2
            assert tracemalloc.get_traced_memory()[1] - baseline < MEMORY_LIMIT


async def test_a_client_that_does_not_read_is_dropped_after_its_byte_budget(
    service: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Endless SDK messages to a client that does not read: its queue holds
    at most MOORAGE_CLIENT_QUEUE_BYTES, then it is dropped (slow_consumer);
    the session's memory stays bounded while the flood goes on."""
    service.backend.script = endless_sdk
    # The session is listed before the client is attached to it: "no subscribers"
    # means dropped only once one was attached (CI stop 22 saw the gap).
    attached: list[object] = []
    attach = Session.attach

    def recording_attach(self: Session, sub: Any, replaying: bool = False) -> None:
        attached.append(sub)
        attach(self, sub, replaying)

    monkeypatch.setattr(Session, "attach", recording_attach)
    with traced():
        _reader, writer = await silent_client(service.port)
        try:
            baseline = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            await wait_bounded(lambda: bool(service.app.state.services.sessions.sessions), "the session", baseline)
            session = service.session()

            def dropped() -> bool:
                return bool(attached) and not session.subscribers and bool(service.backend.sandboxes)

            await wait_bounded(dropped, "the client to be dropped", baseline)
            sandbox = service.backend.sandboxes[-1]
            after_drop = sandbox.produced
            await wait_bounded(lambda: sandbox.produced > after_drop + 1000, "64 MiB more of the flood", baseline)
        finally:
            writer.close()


async def silent_client(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket client that opens a session and then never reads: its
    socket's receive buffer is small, so the service's writes soon block."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=16 * 1024)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET /v1/sessions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), scaled(30))
    assert head.startswith(b"HTTP/1.1 101"), head
    # Never read again: the asyncio reader stops at 2 x its 16 KiB limit.
    return reader, writer


async def test_error_frames_with_runner_chosen_codes_add_no_metric_series(service: Running) -> None:
    """5,000 SDK error messages, each with a code of the runner's choosing:
    /metrics gets no new series (it grew to 15 MB before)."""
    count = 5_000

    async def label_flood(sandbox: FakeSandbox) -> AsyncIterator[dict[str, Any]]:
        for n in range(count):
            yield {"kind": "sdk", "message": {"type": "error", "code": f"evil_{n}", "message": "x"}}
        yield {"kind": "sdk", "message": {"type": "error", "code": "sandbox_crashed", "message": "x"}}

    service.backend.script = label_flood
    before = await service.metrics_text()
    async with websockets.connect(service.ws_url, max_size=None) as ws:
        await ws.recv()
        sandbox = service.backend.sandboxes[-1]
        await wait_bounded(lambda: sandbox.produced == count + 1, "the flood to end", 0, timeout=120)
    after = await service.metrics_text()
    assert "evil_" not in after
    assert len(after) < len(before) + 1024, f"/metrics grew from {len(before)} to {len(after)} bytes"


@pytest.mark.parametrize(
    "cost",
    [math.inf, math.nan, -1.0, -math.inf, 1e308, True, "12", 10**400, [1], None],
    ids=["inf", "nan", "negative", "-inf", "huge", "bool", "string", "int-overflow", "list", "null"],
)
async def test_result_frames_with_hostile_numbers_leave_counters_finite(service: Running, cost: object) -> None:
    """``total_cost_usd`` that is not a plausible amount is ignored: every
    /metrics sample stays finite, the SDK cost counter does not move on it,
    and a valid figure after it still counts (only its growth). Numbers the
    channel cannot carry as JSON (NaN, Infinity) end the session instead
    (a protocol violation); the counters stay finite either way."""

    async def results(sandbox: FakeSandbox) -> AsyncIterator[dict[str, Any]]:
        hostile = {"type": "result", "subtype": "success", "total_cost_usd": cost, "modelUsage": {"evil": {}}}
        for message in (hostile, {"type": "result", "subtype": "success", "total_cost_usd": 0.25}, hostile):
            await sandbox.turns.get()  # a result answers a turn: the channel refuses one outside a turn
            yield {"kind": "sdk", "message": message}

    service.backend.script = results
    survived = True
    async with websockets.connect(service.ws_url, max_size=None) as ws:
        await ws.recv()
        for _ in range(3):
            await ws.send(json.dumps({"type": "user", "message": {"role": "user", "content": "go"}}))
            frame = await conversation_frame(ws)
            if frame["type"] == "user_message":  # the echo of the accepted message (the event log)
                frame = await conversation_frame(ws)
            if frame["type"] != "result":
                assert frame["type"] == "error" and frame["code"] == "sandbox_crashed" and frame["fatal"], frame
                survived = False
                break
    text = await service.metrics_text()
    sdk_cost = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert math.isfinite(sample.value), f"{sample.name}{sample.labels} = {sample.value}"
            assert sample.value >= 0 or family.name.endswith("_active"), sample
            if sample.name == "moorage_cost_usd_total" and sample.labels.get("source") == "sdk":
                sdk_cost += sample.value
    if survived:
        assert sdk_cost == pytest.approx(0.25)
    else:  # only what JSON cannot carry is a violation
        assert isinstance(cost, float) and not math.isfinite(cost) and sdk_cost == 0


async def test_a_runner_that_stops_reading_its_input_is_still_killed_at_the_turn_deadline(service: Running) -> None:
    """A runner that never reads its input blocks the service's writes to it
    (the user frame, the interrupt): the turn's wall clock must still end the
    turn, with a fatal turn_timeout, rather than leave the session busy and
    its slot held forever."""

    async def silent(sandbox: FakeSandbox) -> AsyncIterator[dict[str, Any]]:
        await sandbox._stopped.wait()  # says nothing and reads nothing until it is killed
        return
        yield {}

    service.backend.script = silent
    service.backend.reads_input = False
    settings = service.app.state.services.settings
    settings.turn_timeout_s, settings.interrupt_grace_s = 0.5, 0.5
    async with websockets.connect(service.ws_url, max_size=None) as ws:
        assert json.loads(await ws.recv())["type"] == "session"
        await ws.send(json.dumps({"type": "user", "message": {"role": "user", "content": "hello"}}))
        echo = await conversation_frame(ws)
        assert echo["type"] == "user_message"  # the accepted message, from the event log
        error = await conversation_frame(ws)
        assert error["type"] == "error" and error["code"] == "turn_timeout" and error["fatal"] is True
        await asyncio.wait_for(ws.wait_closed(), scaled(30))
        assert ws.close_code == 1011
    sessions = service.app.state.services.sessions
    await wait_bounded(lambda: not sessions.sessions, "the session to end", tracemalloc.get_traced_memory()[0])
