"""Opt-in egress: a sandbox reaches allowlisted hosts through the service's tunnel, and nothing else."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator

import pytest
from moorage.testing.scripted_model import ScriptedModelServer
from support import Client, events, free_port, metric_value, run_service, tool_output

# Runs inside the sandbox: open tunnels through $HTTPS_PROXY the way pip or
# curl would, and report the proxy's first response line for each target.
PROBE = """
import os, socket, sys, urllib.parse
proxy = urllib.parse.urlparse(os.environ["HTTPS_PROXY"])
for target in sys.argv[1:]:
    s = socket.create_connection((proxy.hostname, proxy.port), timeout=20)
    s.sendall(f"CONNECT {target} HTTP/1.1\\r\\nHost: {target}\\r\\n\\r\\n".encode())
    head = s.recv(4096).decode(errors="replace")
    line = head.split("\\r\\n")[0]
    if " 200 " in line:
        s.sendall(b"ping\\n")
        line += " echo=" + s.recv(100).decode().strip()
    print(target, "->", line)
"""


def probe_command(*targets: str) -> str:
    script = base64.b64encode(PROBE.encode()).decode()
    return f"bash echo {script} | base64 -d > /tmp/probe.py && python3 /tmp/probe.py {' '.join(targets)}"


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    """A TCP service on the host's loopback that answers 'pong:' + what it got."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        writer.write(b"pong:" + line)
        await writer.drain()
        writer.close()

    port = free_port()
    server = await asyncio.start_server(serve, "127.0.0.1", port)
    yield port
    server.close()


async def test_allowlisted_host_is_tunnelled_and_others_are_refused(model: ScriptedModelServer, echo_port: int) -> None:
    """CONNECT to an allowlisted host:port works end to end; any other host or port gets 403."""
    with run_service(
        model.url,
        MOORAGE_EGRESS_ALLOW=f"localhost:{echo_port}",
        # The test's "internet" is this host's loopback, which is otherwise refused.
        MOORAGE_EGRESS_ALLOW_NETWORKS="127.0.0.0/8,::1/128",
    ) as svc:
        assert events(svc, "egress_allowlist")
        client = await Client.connect(svc)
        frames = await client.turn(probe_command(f"localhost:{echo_port}", "localhost:5432", "example.com:443"))
        out = tool_output(frames)
        assert f"localhost:{echo_port} -> HTTP/1.1 200 Connection Established echo=pong:ping" in out
        assert "localhost:5432 -> HTTP/1.1 403 Forbidden" in out
        assert "example.com:443 -> HTTP/1.1 403 Forbidden" in out
        assert await asyncio.to_thread(metric_value, svc, "moorage_egress_connections_total", verdict="allowed") == 1
        assert await asyncio.to_thread(metric_value, svc, "moorage_egress_connections_total", verdict="refused") == 2
        await client.close()


async def test_an_allowlisted_name_that_resolves_inward_is_refused(model: ScriptedModelServer, echo_port: int) -> None:
    """Without an allowed network, a name resolving to loopback is refused even when allowlisted."""
    with run_service(model.url, MOORAGE_EGRESS_ALLOW=f"localhost:{echo_port}") as svc:
        client = await Client.connect(svc)
        out = tool_output(await client.turn(probe_command(f"localhost:{echo_port}")))
        assert f"localhost:{echo_port} -> HTTP/1.1 403 Forbidden" in out
        refused = events(svc, "egress_refused")
        assert refused and refused[-1]["reason"] == "non_public_address"
        await client.close()


# Runs inside the sandbox: a CONNECT straight to the tunnel's socket, whatever $HTTPS_PROXY says.
DIRECT = """
import socket
s = socket.socket(socket.AF_UNIX)
s.settimeout(20)
s.connect("/run/moorage/tunnel.sock")
s.sendall(b"CONNECT example.com:443 HTTP/1.1\\r\\n\\r\\n")
print("direct ->", s.recv(4096).decode(errors="replace").split("\\r\\n")[0])
"""


async def test_without_an_allowlist_the_sandbox_has_no_proxy_and_the_tunnel_refuses_all(
    model: ScriptedModelServer,
) -> None:
    """By default a sandbox gets no proxy variable, and its tunnel socket (every sandbox has one:
    a session's environment may open hosts, tests/integration/test_environment_egress.py) refuses
    every CONNECT."""
    with run_service(model.url) as svc:
        client = await Client.connect(svc)
        script = base64.b64encode(DIRECT.encode()).decode()
        command = f"bash echo proxy=${{HTTPS_PROXY:-none}}; echo {script} | base64 -d | python3"
        out = tool_output(await client.turn(command))
        assert "proxy=none" in out and "direct -> HTTP/1.1 403 Forbidden" in out
        assert not events(svc, "egress_allowlist")
        await client.close()
