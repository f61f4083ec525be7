"""The pure parts of webhooks: which logged frames announce what (and that this follows the
Managed Agents projection), the retry schedule, the signature the official client verifies, and
the URL rules for webhook targets (the egress tunnel's SSRF rules)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest
from anthropic import Anthropic
from ma_frames import frames_of, load
from moorage.ma_events import Projector
from moorage.ssrf import CheckedResolver, TargetRefused
from moorage.tunnel import parse_networks
from moorage.webhook_delivery import WebhookConfig, attempt, backoff_s, encode, signed_headers
from moorage.webhook_events import SESSION_EVENT_TYPES, announcements, webhook_type
from moorage.webhook_policy import UrlRefused, check_addresses, parse_target, refusal
from moorage_session_store.webhooks import Announcement, Delivery, new_secret, payload
from standardwebhooks import Webhook, WebhookVerificationError

LOOPBACK = parse_networks("127.0.0.0/8")


# -- event mapping --------------------------------------------------------------


def test_a_turn_with_an_approval_announces_start_requires_action_and_idle_in_log_order() -> None:
    frames = load("ma_frames_approvals.jsonl")
    said = announcements("sesn_1", frames)
    assert [a.type for a in said][:3] == [
        "session.status_run_started",
        "session.requires_action",
        "session.status_idled",
    ]
    assert all(a.subject_id == "sesn_1" for a in said)
    by_seq = {f.created_at: f.seq for f in frames}
    assert [by_seq[a.at] for a in said] == sorted(by_seq[a.at] for a in said)


def test_every_idle_the_projection_shows_for_a_frame_is_announced_for_that_frame() -> None:
    """The webhook mapping follows ma_events: a frame whose projection holds ``session.status_idle``
    (a result, or a wait for a client) announces idled or requires_action; and a frame the mapping
    announces as idled or requires_action is one the projection shows idle for."""
    for name in ("ma_frames_approvals.jsonl", "ma_frames_custom_tool.jsonl"):
        projector = Projector()
        for frame in load(name):
            idle = any(e.type == "session.status_idle" for e in projector.project(frame))
            announced = webhook_type(frame.type, frame.body)
            if frame.type in ("result", "permission_request", "custom_tool_use"):
                assert idle and announced in ("session.status_idled", "session.requires_action"), frame
            if announced in ("session.status_idled", "session.requires_action"):
                assert idle, frame


def test_fatal_errors_terminate_except_a_drain_and_other_frames_say_nothing() -> None:
    assert webhook_type("error", {"code": "sandbox_crashed", "fatal": True}) == "session.status_terminated"
    assert webhook_type("error", {"code": "service_draining", "fatal": True}) is None
    assert webhook_type("error", {"code": "queue_full", "fatal": False}) is None
    assert webhook_type("system", {"subtype": "compact_boundary"}) is None
    assert webhook_type("rescheduled", {"reason": "rehydrated"}) == "session.status_rescheduled"
    for kind in ("assistant", "user", "user_message", "permission_response", "stream_event"):
        assert webhook_type(kind, {}) is None
    frames = frames_of({"type": "system", "subtype": "init"}, {"type": "result", "subtype": "success"})
    assert [a.type for a in announcements("s", frames)] == ["session.status_run_started", "session.status_idled"]
    assert {a.type for a in announcements("s", frames)} <= set(SESSION_EVENT_TYPES)


# -- retries ----------------------------------------------------------------------


def test_backoff_doubles_from_the_base_is_capped_and_jittered_between_half_and_all() -> None:
    assert [backoff_s(n, 5.0, 120.0, rand=lambda: 0.999999) for n in range(1, 8)] == pytest.approx(
        [5, 10, 20, 40, 80, 120, 120], rel=1e-5
    )
    assert [backoff_s(n, 5.0, 120.0, rand=lambda: 0.0) for n in range(1, 4)] == [2.5, 5.0, 10.0]
    assert backoff_s(10_000, 0.1, 2.0, rand=lambda: 0.5) == pytest.approx(1.5)  # no overflow


# -- signature --------------------------------------------------------------------


def test_a_signed_delivery_verifies_with_the_official_clients_unwrap_and_nothing_else() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    at = datetime.now(UTC)
    body = encode(payload("wevt_1", Announcement("session.status_idled", "sesn_9", at), "acme"))
    headers = signed_headers(secret, "wevt_1", at, body)
    assert headers["webhook-id"] == "wevt_1" and headers["webhook-timestamp"] == str(int(at.timestamp()))
    event = Anthropic(api_key="unused").beta.webhooks.unwrap(body, headers=headers, key=secret)
    assert event.id == "wevt_1" and event.type == "event"
    assert event.data.type == "session.status_idled" and event.data.id == "sesn_9"
    assert event.data.organization_id == "acme"
    with pytest.raises(WebhookVerificationError):  # another endpoint's secret
        Webhook(new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):  # a changed body
        Webhook(secret).verify(body.replace("sesn_9", "sesn_8"), headers)
    # The same event signed again (a retry) keeps its id and body; only the time moves.
    again = signed_headers(secret, "wevt_1", datetime.fromtimestamp(at.timestamp() + 60, UTC), body)
    assert again["webhook-id"] == "wevt_1" and again["webhook-signature"] != headers["webhook-signature"]
    assert json.loads(body)["id"] == "wevt_1"


# -- URL rules ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/hook",
        "example.com/hook",
        "https://",
        "https://user:pw@example.com/hook",
        "https://example.com/hook#frag",
        "https://example.com:99999/",
        "https://exa mple.com/",
        "https://example.com/\n",
        "https://example.com/" + "a" * 3000,
        42,
        "",
    ],
)
def test_malformed_urls_are_refused(url: object) -> None:
    with pytest.raises(UrlRefused):
        parse_target(url)


def test_a_public_https_target_is_allowed_and_its_port_defaults() -> None:
    target = parse_target("https://hooks.example.com/moorage")
    assert (target.scheme, target.host, target.port) == ("https", "hooks.example.com", 443)
    check_addresses(target, ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"], ())


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.5",
        "172.16.3.4",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "::1",
        "fe80::1",
        "fd00::1",
        "::ffff:127.0.0.1",
        "64:ff9b::a9fe:a9fe",  # NAT64 of the metadata address
        "0.0.0.0",
    ],
)
def test_non_public_addresses_are_refused_unless_the_operator_allows_their_network(address: str) -> None:
    target = parse_target("https://inward.example/")
    with pytest.raises(UrlRefused, match="non-public"):
        check_addresses(target, [address], ())
    with pytest.raises(UrlRefused):  # one bad address among good ones is enough; another network is no help
        check_addresses(target, ["93.184.216.34", address], parse_networks("10.99.0.0/16"))
    check_addresses(target, [address], parse_networks("0.0.0.0/0,::/0"))  # the operator allowed it


def test_plain_http_only_to_the_operators_networks() -> None:
    local = parse_target("http://127.0.0.1:9000/hook")
    check_addresses(local, ["127.0.0.1"], LOOPBACK)
    check_addresses(parse_target("https://localhost:9000/"), ["127.0.0.1"], LOOPBACK)
    with pytest.raises(UrlRefused, match="https"):
        check_addresses(parse_target("http://hooks.example.com/"), ["93.184.216.34"], LOOPBACK)
    with pytest.raises(UrlRefused):
        check_addresses(local, ["127.0.0.1"], ())
    with pytest.raises(UrlRefused, match="does not resolve"):
        check_addresses(local, [], LOOPBACK)


def test_the_connections_resolver_answers_only_addresses_the_rule_allows() -> None:
    """The resolver a webhook attempt connects with checks what the name resolves to *then*."""

    async def run() -> None:
        target = parse_target("https://localhost:9000/hooks")
        answers = await CheckedResolver(refusal(target, parse_networks("127.0.0.0/8,::1/128"))).resolve(
            "localhost", 9000
        )
        assert answers and all(a["host"] in ("127.0.0.1", "::1") and a["port"] == 9000 for a in answers)
        with pytest.raises(TargetRefused, match="non-public"):
            await CheckedResolver(refusal(target, ())).resolve("localhost", 9000)

    asyncio.run(run())


def test_each_attempt_checks_the_target_again_before_connecting() -> None:
    """An endpoint whose URL was fine when made is refused at send time when its address is not
    (here: loopback, once the operator no longer allows it), without a connection."""

    def config(networks: str) -> WebhookConfig:
        return WebhookConfig(parse_networks(networks), 3, 0.1, 1.0, 3, 2.0, 0.1, 0)

    delivery = Delivery(1, "whep_1", "acme", "wevt_1", "session.created", {"id": "wevt_1"}, 1, "", new_secret())
    now = datetime.now(UTC)
    for url, networks, outcome in [
        ("http://127.0.0.1:9/hooks", "", "refused: url must be an https:// URL"),
        ("https://127.0.0.1:9/hooks", "", "refused: 127.0.0.1 resolves to a non-public address"),
        ("https://[::ffff:169.254.169.254]/", "127.0.0.0/8", "refused: "),
        ("http://127.0.0.1:9/hooks", "127.0.0.0/8", "ClientConnectorError"),  # allowed: tried, nobody there
    ]:
        moved = Delivery(**{**{k: getattr(delivery, k) for k in delivery.__slots__}, "url": url})
        error = asyncio.run(attempt(moved, config(networks), now))
        assert error is not None and error.startswith(outcome), (url, error)
