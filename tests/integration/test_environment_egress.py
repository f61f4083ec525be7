"""Egress per environment, played from inside real local sandboxes: the service's own lifespan
(``create_app``: the tunnel, the warm pool, the session manager as in production), the real
runner and CLI, the scripted model running a probe with its Bash tool.

The probe is the attacker: besides going through ``$HTTPS_PROXY`` the way pip or curl would, it
talks to the tunnel's socket directly, ignoring whatever the environment variables say, so what is
checked is what the tunnel lets through, not what the runner advertises. The test's "internet" is
this host's loopback (``MOORAGE_EGRESS_ALLOW_NETWORKS``), two echo servers A and B on it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from moorage.app import Services, create_app
from moorage.environments import create_spec
from moorage.protocol import UserFrame
from moorage.sessions import Session
from moorage.settings import Settings
from moorage.testing.scripted_model import ScriptedModelServer
from moorage.tunnel import NO_EGRESS, Policy, Rule, Tunnel, parse_networks
from support import REAL_KEY, Recorder, eventually, free_port, scaled, tool_output

UID_BASE, UID_COUNT = 238_000, 16

# Runs inside the sandbox. Each argument is ``via=host:port``: ``proxy`` goes through
# $HTTPS_PROXY, ``sock`` straight to the tunnel's socket. Prints the proxy's first response line.
PROBE = """
import os, socket, sys, urllib.parse
print("proxy=" + os.environ.get("HTTPS_PROXY", "none"))
for arg in sys.argv[1:]:
    via, target = arg.split("=", 1)
    try:
        if via == "sock":
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(20)
            s.connect("/run/moorage/tunnel.sock")
        else:
            proxy = urllib.parse.urlparse(os.environ["HTTPS_PROXY"])
            s = socket.create_connection((proxy.hostname, proxy.port), timeout=20)
        s.sendall(f"CONNECT {target} HTTP/1.1\\r\\nHost: {target}\\r\\n\\r\\n".encode())
        line = s.recv(4096).decode(errors="replace").split("\\r\\n")[0]
        if " 200 " in line:
            s.sendall(b"ping\\n")
            line += " echo=" + s.recv(100).decode().strip()
    except Exception as exc:
        line = "failed: " + type(exc).__name__
    print(arg, "->", line)
"""

OPENED = "HTTP/1.1 200 Connection Established echo=pong:ping"
REFUSED = "HTTP/1.1 403 Forbidden"


def probe(*targets: str) -> str:
    script = base64.b64encode(PROBE.encode()).decode()
    return f"bash echo {script} | base64 -d > /tmp/probe.py && python3 /tmp/probe.py {' '.join(targets)}"


def environment(env_id: str, networking: dict[str, Any]) -> dict[str, Any]:
    """What the sessions API hands ``SessionManager.create``: the id and the stored spec."""
    body = {"name": env_id, "config": {"type": "cloud", "networking": networking}}
    return {"id": env_id, "spec": create_spec(body, allow_unrestricted=True)}


@pytest.fixture
async def echo_ports() -> AsyncIterator[tuple[int, int]]:
    """Two TCP services on the host's loopback (A and B) that answer 'pong:' + what they got."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            writer.write(b"pong:" + line)
            await writer.drain()
        finally:
            writer.close()

    ports = free_port(), free_port()
    servers = [await asyncio.start_server(serve, "127.0.0.1", port) for port in ports]
    yield ports
    for server in servers:
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def running(model: ScriptedModelServer, state: Path, **settings: Any) -> AsyncIterator[Services]:
    """The service's lifespan, in this process (it makes ``state``)."""
    config = Settings.model_validate(
        {
            "ANTHROPIC_BASE_URL": model.url,
            "ANTHROPIC_API_KEY": REAL_KEY,
            "state_dir": state,
            "idle_timeout_s": 60,
            "max_turns": 3,
            "sandbox_start_timeout_s": scaled(60),
            "sandbox_uid_base": UID_BASE,
            "sandbox_uid_count": UID_COUNT,
            # The test's "internet" is this host's loopback, which is otherwise refused.
            "egress_allow_networks": "127.0.0.0/8,::1/128",
            **settings,
        }
    )
    app = create_app(config)
    async with app.router.lifespan_context(app):
        yield app.state.services


async def turn(session: Session, prompt: str) -> str:
    """One turn in ``session``; the text of its tool results."""
    client = Recorder()
    session.attach(client)
    try:
        await session.submit(UserFrame({"role": "user", "content": prompt}))
        await eventually(client.ended, 60, "the turn's result")
    finally:
        session.detach(client)
    errors = [f for f in client.frames if f.get("type") == "error"]
    assert not any(e.get("fatal") for e in errors), errors
    return tool_output(client.frames)


async def suspended(services: Services, session: Session) -> None:
    await session.close()
    records = services.sessions.records

    async def state() -> str | None:
        record = await records.get(session.id)
        return record.state if record is not None else None

    deadline = time.monotonic() + scaled(30)
    while await state() != "suspended":
        assert time.monotonic() < deadline, "the session was not suspended"
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("kind", ["loaded", "started"])
async def test_a_session_reaches_its_environments_hosts_and_one_without_the_operators(
    model: ScriptedModelServer, echo_ports: tuple[int, int], tmp_path: Path, kind: str
) -> None:
    """The operator allows B (MOORAGE_EGRESS_ALLOW); the environment allows A. A session in the
    environment, on a sandbox the warm pool started before the session existed (a loaded one, or a
    started agent of the operator's default spec, whose CLI ran under the operator's policy),
    reaches A (through $HTTPS_PROXY and straight through the socket) and is refused B, the
    operator's host, and any other; so is it after rehydration, in a fresh sandbox. A session
    without an environment still gets the operator's list: B, not A."""
    a, b = echo_ports
    pools = {"warm_sandboxes": 1, "warm_agents": 0} if kind == "loaded" else {"warm_sandboxes": 0, "warm_agents": 1}
    async with running(model, tmp_path / "state", egress_allow=f"localhost:{b}", **pools) as services:
        manager, pool = services.sessions, services.sessions.deps.pool
        if kind == "loaded":
            await eventually(lambda: len(pool.ready) == 1, 60, "a warm sandbox")
            warm = pool.ready[0].sandbox_id
        else:
            await eventually(lambda: sum(map(len, pool.agents.values())) == 1, 60, "a started agent")
            warm = next(e for entries in pool.agents.values() for e in entries).loaded.sandbox_id
        env_a = environment("env_a", {"type": "limited", "allowed_hosts": [f"localhost:{a}"]})
        session = await manager.create("tenant-a", None, env_a)
        targets = (f"proxy=localhost:{a}", f"sock=localhost:{a}", f"sock=localhost:{b}", "sock=example.com:443")
        out = await turn(session, probe(*targets))
        assert session.sandbox_id == warm, "the session was to claim the warm sandbox"
        assert "proxy=http://127.0.0.1:" in out
        assert f"proxy=localhost:{a} -> {OPENED}" in out and f"sock=localhost:{a} -> {OPENED}" in out
        assert f"sock=localhost:{b} -> {REFUSED}" in out
        assert f"sock=example.com:443 -> {REFUSED}" in out
        record = await manager.records.get(session.id)
        assert record is not None and record.options["environment"] == env_a

        await suspended(services, session)
        again, state = await manager.attach(session.id, "tenant-a")
        assert state == "rehydrated" and again.environment == env_a
        out = await turn(again, probe(f"sock=localhost:{a}", f"sock=localhost:{b}"))
        assert again.sandbox_id != warm
        assert f"sock=localhost:{a} -> {OPENED}" in out and f"sock=localhost:{b} -> {REFUSED}" in out
        await again.close()

        plain = await manager.create("tenant-a")
        out = await turn(plain, probe(f"proxy=localhost:{b}", f"sock=localhost:{a}"))
        assert f"proxy=localhost:{b} -> {OPENED}" in out and f"sock=localhost:{a} -> {REFUSED}" in out
        await plain.close()


async def test_no_hosts_means_no_egress_and_unrestricted_means_any_allowed_address(
    model: ScriptedModelServer, echo_ports: tuple[int, int], tmp_path: Path
) -> None:
    """An environment with no hosts (like a session without one on a server with no
    MOORAGE_EGRESS_ALLOW): no proxy variable, and the socket refuses every CONNECT. Unrestricted
    (the operator allows it): any host, any port, still only at addresses the tunnel may reach."""
    a, b = echo_ports
    async with running(model, tmp_path / "state", warm_sandboxes=0, allow_unrestricted_network=True) as services:
        manager = services.sessions
        for closed in (environment("env_none", {"type": "limited"}), None):
            session = await manager.create("tenant-a", None, closed)
            out = await turn(session, probe(f"sock=localhost:{a}", "sock=example.com:443"))
            assert "proxy=none" in out
            assert f"sock=localhost:{a} -> {REFUSED}" in out and f"sock=example.com:443 -> {REFUSED}" in out
            await session.close()

        session = await manager.create("tenant-a", None, environment("env_open", {"type": "unrestricted"}))
        out = await turn(session, probe(f"proxy=localhost:{a}", f"sock=localhost:{b}", "sock=169.254.169.254:80"))
        assert f"proxy=localhost:{a} -> {OPENED}" in out and f"sock=localhost:{b} -> {OPENED}" in out
        assert f"sock=169.254.169.254:80 -> {REFUSED}" in out  # the metadata address: not in the allowed networks
        await session.close()


async def connect(sock: Path, target: str) -> str:
    """A CONNECT on one sandbox's tunnel socket: the response line, plus the echo when opened."""
    reader, writer = await asyncio.open_unix_connection(str(sock))
    try:
        writer.write(f"CONNECT {target} HTTP/1.1\r\n\r\n".encode())
        line = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), scaled(10))).split(b"\r\n")[0].decode()
        if " 200 " in line:
            writer.write(b"ping\n")
            line += " echo=" + (await asyncio.wait_for(reader.readline(), scaled(10))).decode().strip()
        return line
    finally:
        writer.close()


async def test_each_sandbox_socket_is_judged_by_its_own_policy(echo_ports: tuple[int, int]) -> None:
    """Two sandboxes on one tunnel: nothing passes before their sessions set a policy, then each
    reaches its own host and not the other's; a closed sandbox's policy is forgotten, and a
    policy cannot be set for a sandbox that has no socket."""
    a, b = echo_ports
    tunnel = Tunnel(Path(tempfile.mkdtemp(prefix="tun-")), networks=parse_networks("127.0.0.0/8"))
    try:
        one, two = await tunnel.open("one"), await tunnel.open("two")
        assert await connect(one, f"127.0.0.1:{a}") == REFUSED
        tunnel.allow("one", Policy((Rule("127.0.0.1", a),)))
        tunnel.allow("two", Policy((Rule("127.0.0.1", b),)))
        assert await connect(one, f"127.0.0.1:{a}") == OPENED
        assert await connect(one, f"127.0.0.1:{b}") == REFUSED
        assert await connect(two, f"127.0.0.1:{a}") == REFUSED
        assert await connect(two, f"127.0.0.1:{b}") == OPENED
        await tunnel.close_sandbox("one")
        assert tunnel.policy("one") == NO_EGRESS and tunnel.policy("two") != NO_EGRESS
        with pytest.raises(KeyError):
            tunnel.allow("one", Policy(any_host=True))
    finally:
        await tunnel.close()
        tunnel.socket_dir.rmdir()


async def test_closing_a_sandbox_ends_its_open_connections() -> None:
    """A tunnel still open when its sandbox closes is cut at both ends: the outside host sees the
    connection end and the sandbox's side reads EOF (a closed sandbox keeps no connection out)."""
    upstream_ended = asyncio.Event()

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read()  # until the tunnel closes its side
            upstream_ended.set()
        finally:
            writer.close()

    port = free_port()
    server = await asyncio.start_server(hold, "127.0.0.1", port)
    tunnel = Tunnel(Path(tempfile.mkdtemp(prefix="tun-")), networks=parse_networks("127.0.0.0/8"))
    writer: asyncio.StreamWriter | None = None
    try:
        sock = await tunnel.open("one")
        tunnel.allow("one", Policy((Rule("127.0.0.1", port),)))
        reader, writer = await asyncio.open_unix_connection(str(sock))
        writer.write(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), scaled(10))
        assert head.startswith(b"HTTP/1.1 200 ")
        await tunnel.close_sandbox("one")
        await asyncio.wait_for(upstream_ended.wait(), scaled(10))
        assert await asyncio.wait_for(reader.read(), scaled(10)) == b""
        assert not tunnel.open_connections
    finally:
        if writer is not None:
            writer.close()
        await tunnel.close()
        tunnel.socket_dir.rmdir()
        server.close()
        await server.wait_closed()
