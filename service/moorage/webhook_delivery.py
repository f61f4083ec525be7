"""Sending webhook events from the outbox (docs/architecture.md, "Webhooks").

Every replica runs one :class:`WebhookSender` (started in the app's lifespan). Each
``webhook_poll_s`` it claims the due rows of ``webhook_deliveries`` (``WebhookOutbox.claim``: a
lease, ``SKIP LOCKED`` on PostgreSQL, so replicas never send one attempt twice at once), sends them
concurrently, and records each attempt:

- **Signed** per Standard Webhooks with the endpoint's secret (the ``standardwebhooks`` package,
  which the official client's ``webhooks.unwrap`` verifies with): ``webhook-id`` is the event's id
  (the same on every attempt and every replica), ``webhook-timestamp`` the attempt's time,
  ``webhook-signature`` ``v1,<base64 HMAC-SHA256>`` of ``id.timestamp.body``.
- **Checked** before every attempt (``webhook_policy``): the host is resolved, every address must
  pass the SSRF rules, and the connection's own resolver (``ssrf.CheckedResolver``) checks the
  addresses it connects to, so DNS that changed since the endpoint was made cannot lead inward.
- **Bounded**: ``webhook_timeout_s`` for the whole attempt, no redirects followed, the response
  body never read (only the status), at most ``CLAIM_BATCH`` attempts in flight per replica.
- **Outcome**: any 2xx acknowledges. Anything else (3xx included, a refused connection, a
  timeout, a refused address) fails the attempt: the next waits :func:`backoff_s`, up to
  ``webhook_max_attempts``; an event whose last attempt failed counts against its endpoint, which
  is disabled at ``webhook_disable_after`` in a row (logged as ``webhook_endpoint_disabled``).
- **Restarts** lose nothing: the rows are in the database; a claim whose replica died comes due
  again when its lease (``LEASE_FACTOR`` timeouts) runs out, with the same ``webhook-id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import aiohttp
import structlog
from moorage_session_store import Delivery, WebhookOutbox
from standardwebhooks import Webhook

from .errors import STORE_ERRORS
from .metrics import Metrics
from .settings import Settings
from .ssrf import CheckedResolver, TargetRefused
from .tunnel import Network, parse_networks
from .webhook_policy import Target, UrlRefused, parse_target, refusal

log = structlog.get_logger(__name__)

#: Deliveries one replica claims (and sends at once) per round.
CLAIM_BATCH = 32
#: A claim's lease, in attempt timeouts: long enough that a live sender always records first.
LEASE_FACTOR = 3
#: How often finished rows are pruned (the depth gauge is measured every round).
HOUSEKEEPING_S = 30.0
USER_AGENT = "Moorage-Webhooks/1"


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """The operator's webhook settings, built once from ``Settings``."""

    networks: tuple[Network, ...]
    max_attempts: int
    backoff_base_s: float
    backoff_max_s: float
    disable_after: int
    timeout_s: float
    poll_s: float
    keep_s: float

    @classmethod
    def of(cls, settings: Settings) -> WebhookConfig:
        return cls(
            parse_networks(settings.webhook_allow_networks),
            settings.webhook_max_attempts,
            settings.webhook_backoff_base_ms / 1000,
            settings.webhook_backoff_max_s,
            settings.webhook_disable_after,
            settings.webhook_timeout_s,
            settings.webhook_poll_s,
            settings.webhook_keep_s,
        )


def backoff_s(attempt: int, base_s: float, max_s: float, rand: Callable[[], float] = random.random) -> float:
    """The wait after failed attempt ``attempt`` (1, 2 …): ``base_s · 2^(attempt-1)``, at most
    ``max_s``, times a jitter factor in [0.5, 1) so receivers that failed together are not all
    retried together."""
    ceiling = min(base_s * 2.0 ** min(attempt - 1, 30), max_s)
    return ceiling * (0.5 + rand() / 2)


def signed_headers(secret: str, event_id: str, at: datetime, body: str) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt: the same ``webhook-id`` on every attempt."""
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(event_id, at, body),
    }


def encode(payload: dict[str, object]) -> str:
    """The body sent (and signed): compact JSON, the same bytes on every attempt."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


async def resolve_checked(target: Target, networks: tuple[Network, ...]) -> None:
    """Refuse (``UrlRefused``) unless every address ``target``'s host resolves to may be reached now."""
    try:
        await CheckedResolver(refusal(target, networks)).resolve(target.host, target.port, socket.AF_UNSPEC)
    except TargetRefused as exc:
        raise UrlRefused(str(exc)) from exc
    except OSError as exc:
        raise UrlRefused(f"{target.host} does not resolve") from exc


async def attempt(delivery: Delivery, config: WebhookConfig, now: datetime) -> str | None:
    """Send one attempt; ``None`` when acknowledged (2xx), else why it failed (short, no secrets)."""
    try:
        target = parse_target(delivery.url)
        await resolve_checked(target, config.networks)  # an address literal skips the resolver below
    except UrlRefused as exc:
        return f"refused: {exc}"
    body = encode(delivery.payload)
    headers = {
        **signed_headers(delivery.secret, delivery.event_id, now, body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }
    # The connection's own resolver checks again: a name that re-resolved inward since is refused.
    connector = aiohttp.TCPConnector(resolver=CheckedResolver(refusal(target, config.networks)), force_close=True)
    timeout = aiohttp.ClientTimeout(total=config.timeout_s)
    try:
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False) as client,
            client.post(target.url, data=body.encode(), headers=headers, allow_redirects=False) as resp,
        ):
            status = resp.status  # the body is never read: the status is the answer
    except aiohttp.ClientConnectorError as exc:
        if isinstance(exc.os_error, TargetRefused):
            return f"refused: {exc.os_error}"
        return type(exc).__name__
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return type(exc).__name__
    return None if 200 <= status < 300 else f"HTTP {status}"


class WebhookSender:
    """The outbox's sender on this replica: ``start``, then ``close`` at shutdown (bounded)."""

    def __init__(self, outbox: WebhookOutbox, config: WebhookConfig, replica: str, metrics: Metrics) -> None:
        self.outbox = outbox
        self.config = config
        self.replica = replica
        self.metrics = metrics
        self._task: asyncio.Task[None] | None = None
        self._housekept = 0.0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="webhook-sender")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                sent = await self.round()
                await self._housekeeping()
            except STORE_ERRORS as exc:
                log.warning("webhook_outbox_unavailable", error=type(exc).__name__)
                sent = 0
            if sent < CLAIM_BATCH:  # a full batch: more may be due at once
                await asyncio.sleep(self.config.poll_s)

    async def round(self) -> int:
        """Claim what is due and send it; how many attempts were made."""
        lease_s = self.config.timeout_s * LEASE_FACTOR
        claimed = await self.outbox.claim(self.replica, lease_s=lease_s, limit=CLAIM_BATCH)
        if claimed:
            await asyncio.gather(*(self._send(d) for d in claimed))
        return len(claimed)

    async def _send(self, delivery: Delivery) -> None:
        started = time.monotonic()
        error = await attempt(delivery, self.config, datetime.now(UTC))
        self.metrics.webhook_attempt_seconds.observe(time.monotonic() - started)
        bound = log.bind(
            webhook_endpoint_id=delivery.endpoint_id,
            event_id=delivery.event_id,
            event_type=delivery.event_type,
            attempt=delivery.attempts,
        )
        try:
            if error is None:
                if await self.outbox.delivered(delivery, self.replica):
                    self.metrics.webhook_deliveries.labels("delivered").inc()
                    bound.info("webhook_delivered")
                return
            last = delivery.attempts >= self.config.max_attempts
            retry_at = None
            if not last:
                wait = backoff_s(delivery.attempts, self.config.backoff_base_s, self.config.backoff_max_s)
                retry_at = datetime.now(UTC) + timedelta(seconds=wait)
            disabled = await self.outbox.failed(
                delivery, self.replica, error, retry_at=retry_at, disable_after=self.config.disable_after
            )
        except STORE_ERRORS as exc:  # the lease runs out and the attempt is made again
            bound.warning("webhook_result_not_recorded", error=type(exc).__name__)
            return
        outcome = "refused" if error.startswith("refused") else "failed" if last else "retrying"
        self.metrics.webhook_deliveries.labels(outcome).inc()
        bound.info("webhook_attempt_failed", error=error, last=last)
        if disabled is not None:
            log.warning(
                "webhook_endpoint_disabled",
                webhook_endpoint_id=disabled.id,
                tenant=disabled.tenant,
                reason=disabled.disabled_reason,
            )

    async def _housekeeping(self) -> None:
        self.metrics.webhook_outbox_depth.set(await self.outbox.depth())
        if time.monotonic() - self._housekept < HOUSEKEEPING_S:
            return
        self._housekept = time.monotonic()
        if self.config.keep_s:
            await self.outbox.prune(datetime.now(UTC) - timedelta(seconds=self.config.keep_s))
