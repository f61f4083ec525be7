"""Signed webhooks, driven by the unmodified official ``anthropic`` client against the service as a
process, delivered to a real HTTP receiver on 127.0.0.1 (the operator allows loopback with
``MOORAGE_WEBHOOK_ALLOW_NETWORKS``): an endpoint's secret is shown once, a turn's idle arrives
and ``client.beta.webhooks.unwrap`` verifies it, a receiver that was down (or answered 503) gets
the event later with the same ``webhook-id`` (across a ``kill -9`` of the service too), inward
URLs are refused, tenants see only their endpoints, and repeated failures disable an endpoint.
Only the model is scripted."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anthropic
import pytest
from aiohttp import web
from ma_client import ACME, GLOBEX, KEYS, TOOLSET, client, close_all, code, say
from moorage.testing.scripted_model import ScriptedModelServer
from standardwebhooks import WebhookVerificationError
from support import Service, free_port, metric_value, pg_available, pg_database, run_service, wait_until

FAST = {
    "MOORAGE_API_KEYS": KEYS,
    "MOORAGE_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8",
    "MOORAGE_WEBHOOK_POLL_S": "0.1",
    "MOORAGE_WEBHOOK_BACKOFF_BASE_MS": "100",
    "MOORAGE_WEBHOOK_BACKOFF_MAX_S": "0.4",
    "MOORAGE_WEBHOOK_TIMEOUT_S": "3",
    "MOORAGE_WEBHOOK_MAX_ATTEMPTS": "100",
    "MOORAGE_WARM_SANDBOXES": "0",
    "MOORAGE_WARM_AGENTS": "0",
}


@dataclass
class Received:
    headers: dict[str, str]
    body: str
    path: str = "/hooks"

    @property
    def event(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1 in a thread: records every request and answers ``status``;
    ``stop`` closes its port (connections refused) and ``start`` opens it again."""

    port: int = field(default_factory=free_port)
    status: int = 200
    delay_s: float = 0.0  # how long each answer takes
    got: list[Received] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    _runner: web.AppRunner | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    async def _handle(self, request: web.Request) -> web.Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.got.append(Received(headers, await request.text(), request.path))
        await asyncio.sleep(self.delay_s)
        return web.Response(status=self.status, text="ok")

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/hooks", self._handle)
        app.router.add_post("/hooks/{n}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _call(self, coro: Any) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def start(self) -> Receiver:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
            self._thread.start()
        self._call(self._start())
        return self

    def stop(self) -> None:
        self._call(self._stop())

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop.close()

    def of(self, kind: str, subject: str | None = None) -> list[Received]:
        return [
            r
            for r in list(self.got)
            if r.event["data"]["type"] == kind and (subject is None or r.event["data"]["id"] == subject)
        ]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hook = Receiver().start()
    yield hook
    hook.close()


@pytest.fixture(scope="module")
def svc(model: ScriptedModelServer) -> Iterator[Service]:
    with run_service(model.url, **FAST) as service:
        yield service


def new_session(api: anthropic.Anthropic) -> str:
    agent = api.beta.agents.create(name="Hooked", model="claude-opus-5", tools=[TOOLSET])
    env = api.beta.environments.create(name=f"hooked-{time.monotonic_ns()}")
    return api.beta.sessions.create(agent=agent.id, environment_id=env.id).id


def test_a_turns_idle_arrives_signed_and_the_official_client_verifies_it(svc: Service, receiver: Receiver) -> None:
    api = client(svc)
    made = api.beta.organization.webhooks.create(
        url=receiver.url,
        enabled_events=["session.status_run_started", "session.status_idled"],  # type: ignore[list-item]
        name="bot",
    )
    secret = made.signing_secret
    assert secret.startswith("whsec_") and made.state == "enabled" and made.name == "bot"
    # Shown once: no read returns it.
    again = api.beta.organization.webhooks.retrieve(made.id)
    assert again.url == receiver.url and "signing_secret" not in again.to_dict()
    assert all("signing_secret" not in e.to_dict() for e in api.beta.organization.webhooks.list())
    assert secret not in svc.logs()

    session_id = new_session(api)
    api.beta.sessions.events.send(session_id, events=[say("bash echo hooked")])
    wait_until(lambda: bool(receiver.of("session.status_idled", session_id)), 90, "the idle webhook")
    idle = receiver.of("session.status_idled", session_id)[0]
    event = api.beta.webhooks.unwrap(idle.body, headers=idle.headers, key=secret)
    assert event.type == "event" and event.id == idle.headers["webhook-id"]
    assert event.data.type == "session.status_idled" and event.data.id == session_id
    assert event.data.organization_id == "acme"
    started = receiver.of("session.status_run_started", session_id)
    assert started and receiver.got.index(started[0]) < receiver.got.index(idle)
    assert not receiver.of("session.created")  # not asked for
    # A regenerated secret signs from then on; the old one no longer verifies.
    fresh = api.beta.organization.webhooks.regenerate_signing_secret(made.id).signing_secret
    assert fresh.startswith("whsec_") and fresh != secret
    api.beta.sessions.events.send(session_id, events=[say("bash echo again")])
    wait_until(lambda: len(receiver.of("session.status_idled", session_id)) == 2, 90, "the second idle")
    second = receiver.of("session.status_idled", session_id)[1]
    assert api.beta.webhooks.unwrap(second.body, headers=second.headers, key=fresh).data.id == session_id
    with pytest.raises(WebhookVerificationError):
        api.beta.webhooks.unwrap(second.body, headers=second.headers, key=secret)
    assert metric_value(svc, "moorage_webhook_deliveries_total", outcome="delivered") >= 3


def test_a_receiver_that_was_down_gets_the_event_later_with_the_same_id(svc: Service, receiver: Receiver) -> None:
    api = client(svc)
    secret = api.beta.organization.webhooks.create(
        url=receiver.url,
        enabled_events=["session.created"],  # type: ignore[list-item]
    ).signing_secret
    # Answering 503 first: every attempt is recorded, and none acknowledged.
    receiver.status = 503
    first = new_session(api)
    wait_until(lambda: len(receiver.of("session.created", first)) >= 3, 30, "three refused attempts")
    # Then gone altogether (connections refused) for a while.
    receiver.stop()
    failing = metric_value(svc, "moorage_webhook_deliveries_total", outcome="retrying")
    wait_until(
        lambda: metric_value(svc, "moorage_webhook_deliveries_total", outcome="retrying") >= failing + 2,
        30,
        "attempts against a closed port",
    )
    assert metric_value(svc, "moorage_webhook_outbox_depth") >= 1  # it waits in the outbox
    receiver.status = 200
    refused = len(receiver.of("session.created", first))
    receiver.start()
    wait_until(lambda: len(receiver.of("session.created", first)) > refused, 30, "the delivery once it is back")
    attempts = receiver.of("session.created", first)
    assert len({a.headers["webhook-id"] for a in attempts}) == 1  # one event, one id, every attempt
    event = api.beta.webhooks.unwrap(attempts[-1].body, headers=attempts[-1].headers, key=secret)
    assert event.data.id == first and event.id == attempts[0].headers["webhook-id"]
    assert len({a.body for a in attempts}) == 1  # the same bytes every time


def test_a_pending_delivery_survives_a_kill_9_of_the_service(model: ScriptedModelServer, receiver: Receiver) -> None:
    receiver.status = 500
    with run_service(model.url, **FAST) as first:
        api = client(first)
        secret = api.beta.organization.webhooks.create(
            url=receiver.url,
            enabled_events=["session.created"],  # type: ignore[list-item]
        ).signing_secret
        session_id = new_session(api)
        wait_until(lambda: bool(receiver.of("session.created", session_id)), 30, "a first (refused) attempt")
        ident = receiver.of("session.created", session_id)[0].headers["webhook-id"]
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
        close_all()
        state_dir = first.state_dir
    receiver.status = 200
    seen = len(receiver.got)
    with run_service(model.url, **FAST, MOORAGE_STATE_DIR=str(state_dir)) as second:
        wait_until(lambda: len(receiver.got) > seen, 30, "the delivery after the restart")
        after = receiver.got[seen]
        assert after.headers["webhook-id"] == ident
        event = client(second).beta.webhooks.unwrap(after.body, headers=after.headers, key=secret)
        assert event.data.id == session_id


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://10.1.2.3/hooks", "non-public"),
        ("https://169.254.169.254/latest/meta-data", "non-public"),
        ("https://[::ffff:192.168.0.1]/hooks", "non-public"),
        ("http://93.184.216.34/hooks", "https"),
        ("ftp://127.0.0.1/hooks", "https"),
        ("https://user:pw@127.0.0.1/hooks", "credentials"),
    ],
)
def test_an_inward_or_plain_url_is_refused_with_a_stable_code(svc: Service, url: str, why: str) -> None:
    api = client(svc)
    with pytest.raises(anthropic.BadRequestError) as refused:
        api.beta.organization.webhooks.create(url=url, enabled_events=["session.status_idled"])  # type: ignore[list-item]
    assert code(refused.value) == "webhook_url_not_allowed" and why in refused.value.message
    made = api.beta.organization.webhooks.create(
        url="http://127.0.0.1:9/hooks",
        enabled_events=["session.status_idled"],  # type: ignore[list-item]
    )
    with pytest.raises(anthropic.BadRequestError) as moved:  # an update is checked too
        api.beta.organization.webhooks.update(made.id, url=url)
    assert code(moved.value) == "webhook_url_not_allowed"
    api.beta.organization.webhooks.delete(made.id)


def test_another_tenants_endpoints_are_invisible(svc: Service) -> None:
    acme, globex = client(svc, ACME), client(svc, GLOBEX)
    made = acme.beta.organization.webhooks.create(
        url="http://127.0.0.1:9/hooks",
        enabled_events=["session.status_idled"],  # type: ignore[list-item]
    )
    hooks = globex.beta.organization.webhooks
    for call in (
        lambda: hooks.retrieve(made.id),
        lambda: hooks.update(made.id, name="mine now"),
        lambda: hooks.regenerate_signing_secret(made.id),
        lambda: hooks.delete(made.id),
    ):
        with pytest.raises(anthropic.NotFoundError) as missing:
            call()
        assert code(missing.value) == "webhook_not_found"
    assert made.id not in [e.id for e in hooks.list()]
    assert made.id in [e.id for e in acme.beta.organization.webhooks.list()]
    gone = acme.beta.organization.webhooks.delete(made.id)
    assert gone.id == made.id and gone.type == "webhook_endpoint_deleted"


def test_list_pages_with_after_id(svc: Service) -> None:
    api = client(svc, "tok-pager-0123456789abcdef")
    made = [
        api.beta.organization.webhooks.create(
            url=f"http://127.0.0.1:9/{i}",
            enabled_events=["session.status_idled"],  # type: ignore[list-item]
        ).id
        for i in range(5)
    ]
    page = api.beta.organization.webhooks.list(limit=2)
    assert page.has_more and len(page.data) == 2 and page.last_id == page.data[-1].id
    assert [e.id for e in api.beta.organization.webhooks.list(limit=2)] == made[::-1]  # auto-paging, newest first
    assert [e.id for e in api.beta.organization.webhooks.list(limit=3, order="asc")] == made


def test_repeated_failures_disable_the_endpoint(model: ScriptedModelServer, receiver: Receiver) -> None:
    receiver.status = 302  # a redirect is not an acknowledgement
    settings = {**FAST, "MOORAGE_WEBHOOK_MAX_ATTEMPTS": "2", "MOORAGE_WEBHOOK_DISABLE_AFTER": "2"}
    with run_service(model.url, **settings) as svc:
        api = client(svc)
        made = api.beta.organization.webhooks.create(
            url=receiver.url,
            enabled_events=["session.created"],  # type: ignore[list-item]
        )
        for _ in range(2):
            new_session(api)
        hooks = api.beta.organization.webhooks
        wait_until(lambda: hooks.retrieve(made.id).state == "disabled", 30, "the endpoint to be disabled")
        disabled = hooks.retrieve(made.id)
        assert "2 events in a row" in disabled.disabled_reason
        assert len(receiver.got) == 4  # two events, two attempts each
        assert "webhook_endpoint_disabled" in svc.logs()
        assert metric_value(svc, "moorage_webhook_deliveries_total", outcome="failed") == 2
        # Disabled: new events are not sent. Enabled again: they are, and the reason is gone.
        new_session(api)
        enabled = hooks.update(made.id, state="enabled")
        assert enabled.state == "enabled" and enabled.disabled_reason == ""
        receiver.status = 200
        later = new_session(api)
        wait_until(lambda: bool(receiver.of("session.created", later)), 30, "a delivery after re-enabling")
        assert len(receiver.got) == 5


@pytest.mark.skipif(not pg_available(), reason="PostgreSQL is not reachable at 127.0.0.1:5432")
def test_two_replicas_on_postgresql_send_each_delivery_once(model: ScriptedModelServer, receiver: Receiver) -> None:
    """Both replicas poll the one outbox every 0.1 s while each answer takes 0.3 s: every
    (endpoint, event) arrives exactly once."""
    receiver.delay_s = 0.3
    with pg_database() as name:
        url = f"postgresql://postgres@127.0.0.1:5432/{name}"
        with (
            run_service(model.url, **FAST, MOORAGE_DATABASE_URL=url) as a,
            run_service(model.url, **FAST, MOORAGE_DATABASE_URL=url) as b,
        ):
            api = client(a)
            for n in range(16):
                api.beta.organization.webhooks.create(
                    url=f"{receiver.url}/{n}",
                    enabled_events=["session.created"],  # type: ignore[list-item]
                )
            sessions = [new_session(api), new_session(client(b))]

            def recorded() -> float:
                return sum(metric_value(svc, "moorage_webhook_deliveries_total", outcome="delivered") for svc in (a, b))

            # Every delivery recorded: a second claim of any row would have been sent by now too
            # (claims of one row can only overlap while the first attempt is in flight).
            wait_until(lambda: recorded() >= 32, 60, "32 recorded deliveries")
            keys = [(r.path, r.headers["webhook-id"]) for r in receiver.got]
            assert len(keys) == 32 and len(set(keys)) == 32 and recorded() == 32
            assert {r.event["data"]["id"] for r in receiver.got} == set(sessions)
