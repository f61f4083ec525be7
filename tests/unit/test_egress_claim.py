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
from moorage.metrics import Metrics
from moorage.model_spans import ModelSpans
from moorage.pending import AgentTools
from moorage.pool import Loaded
from moorage.session_start import start_sandbox
from moorage.sessions import Session
from moorage.settings import Settings
from moorage.tunnel import NO_EGRESS, Policy, Rule


class Tunnel:
    """Records the policy each sandbox holds (``Tunnel.allow``)."""

    def __init__(self) -> None:
        self.policies: dict[str, Policy] = {"warm-1": NO_EGRESS}

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


def session(egress: Policy, tunnel: Tunnel | None) -> tuple[Session, WarmSandbox]:
    sandbox = WarmSandbox(tunnel or Tunnel())
    loaded = Loaded(cast(Any, sandbox), "warm-1", Path("/nonexistent/warm-1"))
    settings = Settings()
    fake = SimpleNamespace(
        id="s-1",
        settings=settings,
        pool=SimpleNamespace(take=lambda: loaded),
        proxy=SimpleNamespace(tunnel=tunnel),
        deps=SimpleNamespace(accounting=SimpleNamespace(ledgers={}), spans=ModelSpans()),
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
