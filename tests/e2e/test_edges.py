"""The public listener's edges, against the service as a process: slowloris
clients are cut at the header deadline and never hold more descriptors than
the connection cap; browser origins that are not allowed are refused at the
handshake (cross-site WebSocket hijacking); /metrics and /readyz move to
their own listener when one is configured."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from moorage.testing.scripted_model import ScriptedModelServer
from support import Client, Service, events, free_port, run_service, scaled

MAX_CONNECTIONS = 64
HEADER_TIMEOUT_S = 2.0
LISTED_ORIGIN = "http://console.test:3000"
FLOOD = 400


@pytest.fixture(scope="module")
def edge_service(model: ScriptedModelServer) -> Iterator[Service]:
    with run_service(
        model.url,
        MOORAGE_MAX_CONNECTIONS=str(MAX_CONNECTIONS),
        MOORAGE_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S),
        MOORAGE_ALLOWED_ORIGINS=LISTED_ORIGIN,
        MOORAGE_METRICS_PORT=str(free_port()),
        MOORAGE_WARM_SANDBOXES="0",
        MOORAGE_WARM_AGENTS="0",
    ) as svc:
        yield svc


def open_fds(svc: Service) -> int:
    return len(os.listdir(f"/proc/{svc.proc.pid}/fd"))


def nofile_limits(svc: Service) -> tuple[str, str]:
    limits = Path(f"/proc/{svc.proc.pid}/limits").read_text()
    (line,) = [x for x in limits.splitlines() if x.startswith("Max open files")]
    soft, hard = line.split()[3:5]
    return soft, hard


def get(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=scaled(10)) as r:
            return int(r.status), r.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


class Slowloris:
    """``count`` connections that send a request's headers one byte at a time
    and never finish them; each one the server cuts is opened again, so the
    pressure lasts. ``cut`` counts server-side closes per generation."""

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.count = count
        self.cut: list[int] = []  # generation of each connection the server closed
        self.lived: list[float] = []  # how long each first-generation connection lasted
        self.opened = 0
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._one()) for _ in range(self.count)]

    async def _one(self) -> None:
        generation = 0
        while True:
            # Timed from before the connect: the server's header clock starts at its accept, which a
            # busy client loop can see well after the fact (a lifetime measured from then is short).
            opened_at = time.monotonic()
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            self.opened += 1
            head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 10_000
            eof = asyncio.create_task(reader.read(1024))
            try:
                for byte in head:
                    if eof.done():
                        break
                    writer.write(bytes([byte]))
                    with contextlib.suppress(ConnectionError):
                        await writer.drain()
                    await asyncio.sleep(0.25)
                with contextlib.suppress(ConnectionError):
                    await eof
            finally:
                eof.cancel()
                writer.close()
            self.cut.append(generation)
            if generation == 0:
                self.lived.append(time.monotonic() - opened_at)
            generation += 1

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + scaled(timeout)
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {scaled(timeout):.0f}s waiting for {what}")
        await asyncio.sleep(0.05)


async def test_slowloris_connections_are_cut_while_normal_clients_are_served(edge_service: Service) -> None:
    """40 connections dribbling header bytes are each cut at the header deadline
    (and come back, and are cut again), while a normal client gets /healthz and a
    WebSocket session all along."""
    attack = Slowloris(edge_service.port, 40)
    attack.start()
    try:
        await wait_for(lambda: attack.opened >= 40, 10, "the slow connections to be open")
        status, body = await asyncio.to_thread(get, edge_service.url + "/healthz")
        assert (status, json.loads(body)) == (200, {"status": "ok"})
        client = await Client.connect(edge_service)
        assert client.first["type"] == "session"
        await client.send({"type": "ping", "id": 1})
        assert (await client.until("pong"))[-1]["id"] == 1
        await wait_for(lambda: attack.cut.count(0) == 40, 30, "every first slow connection to be cut")
        # Connected before the server saw them, so never shorter than the deadline.
        assert min(attack.lived) >= HEADER_TIMEOUT_S, "cut at the header deadline, not before"
        await client.close()
        status, _ = await asyncio.to_thread(get, edge_service.url + "/healthz")
        assert status == 200
    finally:
        await attack.stop()


async def test_a_connection_flood_never_holds_more_descriptors_than_the_cap(edge_service: Service) -> None:
    """400 connections that send nothing, at once: past MOORAGE_MAX_CONNECTIONS
    each is closed as it arrives, so the service's open descriptors stay bounded
    whatever the flood's size: by the cap, plus the accept batches (each at most the
    listen backlog, the cap again) that are in flight for the three loop turns it
    takes to close one — twice the cap was passed on a loaded machine (169 > 161)."""
    await wait_for(lambda: open_fds(edge_service) < 200, 30, "earlier connections to be gone")
    baseline = open_fds(edge_service)
    flood: list[socket.socket] = []
    peak = baseline
    try:
        for _ in range(FLOOD):
            s = socket.create_connection(("127.0.0.1", edge_service.port), timeout=scaled(10))
            s.setblocking(False)
            flood.append(s)
            peak = max(peak, open_fds(edge_service))

        def closed_by_server() -> int:
            n = 0
            for s in flood:
                try:
                    n += s.recv(1) == b""
                except BlockingIOError:
                    pass
                except ConnectionError:
                    n += 1
            return n

        async def settled() -> bool:
            nonlocal peak
            peak = max(peak, open_fds(edge_service))
            return closed_by_server() >= FLOOD - MAX_CONNECTIONS

        deadline = time.monotonic() + scaled(10)
        while not await settled():
            if time.monotonic() > deadline:
                raise AssertionError("connections past the cap were never closed")
            await asyncio.sleep(0.01)
        assert peak <= baseline + 4 * MAX_CONNECTIONS + 16, f"{peak} descriptors open (baseline {baseline})"
        assert baseline + 4 * MAX_CONNECTIONS + 16 < FLOOD  # still a bound the flood would pass
    finally:
        for s in flood:
            s.close()
    soft, hard = nofile_limits(edge_service)
    assert soft == hard, "the soft open-file limit is raised to the hard one"


async def refused(svc: Service, origin: str, path: str = "/v1/sessions") -> tuple[int, dict[str, Any]]:
    with pytest.raises(websockets.InvalidStatus) as info:
        await websockets.connect(svc.ws_url + path, origin=origin, open_timeout=scaled(10))  # type: ignore[arg-type]
    response = info.value.response
    return int(response.status_code), json.loads(response.body or b"{}")


async def test_browser_origins_that_are_not_allowed_are_refused_at_the_handshake(edge_service: Service) -> None:
    """A page from another origin gets HTTP 403 origin_not_allowed before any session
    starts; no Origin, the service's own origin and listed origins are let in."""
    before = len(events(edge_service, "session_ready"))
    for origin in ("https://evil.example", "http://localhost:3000", "null", "http://rebind.evil.example:1"):
        status, body = await refused(edge_service, origin)
        assert (status, body["code"]) == (403, "origin_not_allowed"), origin
    attach = "/v1/sessions/11111111-1111-1111-1111-111111111111"
    status, body = await refused(edge_service, "https://evil.example", attach)
    assert (status, body["code"]) == (403, "origin_not_allowed")
    assert len(events(edge_service, "session_ready")) == before, "nothing started for a refused origin"
    assert events(edge_service, "client_refused") and "origin_not_allowed" in edge_service.logs()

    own = f"http://127.0.0.1:{edge_service.port}"
    allowed: list[str | None] = [None, own, f"http://localhost:{edge_service.port}", LISTED_ORIGIN]
    for let_in in allowed:
        ws = await websockets.connect(
            edge_service.ws_url + "/v1/sessions",
            origin=let_in,  # type: ignore[arg-type]
            open_timeout=scaled(10),
        )
        first = json.loads(await asyncio.wait_for(ws.recv(), scaled(10)))
        assert first["type"] == "session", (let_in, first)
        await ws.close()


async def test_state_changing_http_requests_get_the_same_origin_check(edge_service: Service) -> None:
    """HTTP routes reuse the check: a cross-site POST is refused with 403 before routing."""
    status, body = await asyncio.to_thread(
        get, edge_service.url + "/v1/sessions", {"Origin": "https://evil.example"}, "POST"
    )
    assert (status, json.loads(body)["code"]) == (403, "origin_not_allowed")
    status, _ = await asyncio.to_thread(get, edge_service.url + "/v1/sessions", None, "POST")
    assert status != 403, "no Origin: not a browser, not refused for its origin"
    status, _ = await asyncio.to_thread(get, edge_service.url + "/healthz", {"Origin": "https://evil.example"})
    assert status == 200, "reads are not state-changing"


async def test_metrics_and_readiness_live_only_on_the_metrics_listener(edge_service: Service) -> None:
    """With MOORAGE_METRICS_PORT the public port answers 404 for /metrics and /readyz."""
    metrics_url = f"http://127.0.0.1:{edge_service.env['MOORAGE_METRICS_PORT']}"
    for path in ("/metrics", "/readyz"):
        status, _ = await asyncio.to_thread(get, edge_service.url + path)
        assert status == 404, path
    status, body = await asyncio.to_thread(get, metrics_url + "/metrics")
    assert status == 200 and b"moorage_errors_total" in body
    status, body = await asyncio.to_thread(get, metrics_url + "/readyz")
    assert status in (200, 503) and b"status" in body
    status, _ = await asyncio.to_thread(get, metrics_url + "/healthz")
    assert status == 200
    with pytest.raises(websockets.InvalidStatus):
        await websockets.connect(metrics_url.replace("http", "ws") + "/v1/sessions", open_timeout=scaled(10))
