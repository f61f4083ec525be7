"""A session claiming a warm sandbox sets the sandbox's tunnel policy before its runner is
started, and the ``start`` frame names the tunnel only when that policy lets something through
(``session_start.start_sandbox``, with stand-ins for the sandbox, the pool and the store)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import structlog
from moorage.channel import Phase, Ready, RunnerChannel
from moorage.egress_intercept import Grant
from moorage.egress_secrets import EnvCredential, Plan
from moorage.errors import Code
from moorage.metrics import Metrics
from moorage.model_spans import ModelSpans
from moorage.pending import AgentTools
from moorage.pool import Loaded
from moorage.session_start import start_sandbox
from moorage.sessions import Session
from moorage.settings import Settings
from moorage.tunnel import NO_EGRESS, Policy, Rule


class Interceptor:
    """The tunnel's TLS termination (egress_intercept.Interceptor): grants one placeholder, skips one."""

    def __init__(self) -> None:
        self.granted: list[tuple[str, str, tuple[str, ...], str]] = []
        self.forgotten: list[str] = []

    async def grant(self, sandbox_id: str, tenant: str, vault_ids: Any, session_id: str) -> Grant:
        self.granted.append((sandbox_id, tenant, tuple(vault_ids), session_id))
        skipped = EnvCredential("vcrd_3", "PATH", None, True, False)
        made = Plan({"API_KEY": "moorage-secret-api-key-00"}, {"vcrd_2": "moorage-secret-api-key-00"}, [(skipped, "x")])
        return Grant(made, "-----BEGIN CERTIFICATE-----\n")

    def forget(self, sandbox_id: str) -> None:
        self.forgotten.append(sandbox_id)


class Tunnel:
    """Records the policy each sandbox holds (``Tunnel.allow``)."""

    def __init__(self, interceptor: Interceptor | None = None) -> None:
        self.policies: dict[str, Policy] = {"warm-1": NO_EGRESS}
        self.interceptor = interceptor

    def allow(self, sandbox_id: str, policy: Policy) -> None:
        self.policies[sandbox_id] = policy


class WarmSandbox:
    """A loaded sandbox: notes the tunnel policy in force when each frame reaches it."""

    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel
        self.seen: list[tuple[str, Policy, dict[str, Any]]] = []
        self.started = False

    handle: dict[str, Any] = {"backend": "fake"}

    async def send(self, frame: dict[str, Any]) -> None:
        self.seen.append((frame["kind"], self.tunnel.policies["warm-1"], frame))
        self.started = self.started or frame["kind"] == "start"

    async def recv(self) -> Ready | None:
        return Ready() if self.started else None


class Records:
    async def update(self, session_id: str, **fields: Any) -> None:
        pass

    async def get(self, session_id: str) -> None:
        return None


class Grants:
    """The vault route's grant (vault_proxy.McpProxy.grant): records what it was asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str, tuple[str, ...], list[str]]] = []

    async def grant(
        self, sandbox_id: str, tenant: str, vault_ids: Any, servers: list[dict[str, str]], policy: Policy
    ) -> list[str]:
        self.asked.append((sandbox_id, tenant, tuple(vault_ids), [s["name"] for s in servers]))
        return ["gh"]


def session(
    egress: Policy, tunnel: Tunnel | None, mcp: Grants | None = None, vault_ids: tuple[str, ...] = ()
) -> tuple[Session, WarmSandbox]:
    sandbox = WarmSandbox(tunnel or Tunnel())
    loaded = Loaded(cast(Any, sandbox), "warm-1", Path("/nonexistent/warm-1"))
    settings = Settings()
    fake = SimpleNamespace(
        id="s-1",
        settings=settings,
        pool=SimpleNamespace(take=lambda: loaded),
        claimed=None,
        proxy=SimpleNamespace(tunnel=tunnel, mcp=mcp),
        tenant="acme",
        vault_ids=vault_ids,
        notices=[],
        deps=SimpleNamespace(accounting=SimpleNamespace(ledgers={}), spans=ModelSpans(), files=None),
        ledger=object(),
        records=Records(),
        rehydrate=False,
        resume=False,
        prior_cost_usd=0.0,
        agent=None,
        agent_tools=AgentTools.parse({}),
        environment={"id": "env_1"},
        egress=egress,
        channel=RunnerChannel(Phase.LOADED),
        relay=None,
        metrics=Metrics(()),
        backend=SimpleNamespace(name="local"),
        log=structlog.get_logger("test"),
        emit=lambda frame: None,
    )
    fake.notice_code = lambda code, message: fake.notices.append((code, message))
    return cast(Session, fake), sandbox


@pytest.mark.parametrize(
    ("egress", "proxied"),
    [
        (Policy((Rule("api.example.com"),)), True),
        (Policy(any_host=True), True),
        (NO_EGRESS, False),
    ],
)
async def test_the_policy_is_in_force_before_the_runner_is_started(egress: Policy, proxied: bool) -> None:
    tunnel = Tunnel()
    s, sandbox = session(egress, tunnel)
    await start_sandbox(s)
    assert [kind for kind, _, _ in sandbox.seen] == ["start"]
    _, in_force, frame = sandbox.seen[0]
    assert in_force == egress, "the runner was started before its session's policy was set"
    assert ("egress_proxy" in frame) is proxied
    if proxied:
        assert frame["egress_proxy"] == "unix:/run/moorage/tunnel.sock"


async def test_without_a_tunnel_the_runner_gets_no_proxy() -> None:
    s, sandbox = session(Policy(any_host=True), None)
    await start_sandbox(s)
    assert "egress_proxy" not in sandbox.seen[0][2]


async def test_a_sessions_credentialed_mcp_servers_are_granted_before_the_runner_starts() -> None:
    """The vault route knows the sandbox's servers before ``start`` names them in ``mcp_proxy``;
    no vaults, no grant."""
    grants = Grants()
    s, sandbox = session(NO_EGRESS, Tunnel(), grants, ("vlt_1",))
    s.agent = {"id": "agent_1", "version": 1, "mcp_servers": [{"type": "url", "name": "gh", "url": "https://g/mcp"}]}
    await start_sandbox(s)
    assert grants.asked == [("warm-1", "acme", ("vlt_1",), ["gh"])]
    assert sandbox.seen[0][2]["mcp_proxy"] == ["gh"]
    plain, plain_sandbox = session(NO_EGRESS, Tunnel(), Grants())
    await start_sandbox(plain)
    assert "mcp_proxy" not in plain_sandbox.seen[0][2]


async def test_environment_credentials_are_granted_before_the_runner_starts_where_the_tunnel_reaches() -> None:
    """``start`` carries the placeholders and the sandbox's CA (granted first); a skipped credential
    is a notice; on a backend without the tunnel nothing is set, the grant is dropped, and a notice
    says why."""
    interceptor = Interceptor()
    s, sandbox = session(Policy((Rule("api.example.com"),)), Tunnel(interceptor), None, ("vlt_1",))
    await start_sandbox(s)
    frame = sandbox.seen[0][2]
    assert interceptor.granted == [("warm-1", "acme", ("vlt_1",), "s-1")]
    assert frame["env"] == {"API_KEY": "moorage-secret-api-key-00"} and frame["egress_ca"].startswith("-----BEGIN")
    assert [code for code, _ in cast(Any, s).notices] == [Code.CREDENTIAL_NOT_SUPPORTED]
    kube, kube_sandbox = session(Policy((Rule("api.example.com"),)), Tunnel(Interceptor()), None, ("vlt_1",))
    kube.backend = cast(Any, SimpleNamespace(name="kubernetes"))
    await start_sandbox(kube)
    assert "env" not in kube_sandbox.seen[0][2] and "egress_ca" not in kube_sandbox.seen[0][2]
    assert len(cast(Any, kube).notices) == 2 and "kubernetes" in cast(Any, kube).notices[-1][1]
    none, none_sandbox = session(NO_EGRESS, Tunnel(Interceptor()))
    await start_sandbox(none)
    assert "env" not in none_sandbox.seen[0][2]
