"""The webhook store on SQLite and PostgreSQL: the outbox row is written in the same transaction
as the log batch (or session record change) that caused it, claims never overlap, an attempt is
recorded only by the claim it belongs to, failures disable an endpoint, and tenants see only
their own endpoints."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from moorage.webhook_events import announcements
from moorage_session_store import (
    Announcement,
    Database,
    EventConflict,
    NewEvent,
    SessionEvents,
    SessionRecords,
    TooManyEndpoints,
    WebhookEndpoints,
    WebhookOutbox,
)
from moorage_session_store import webhooks as store_webhooks
from moorage_session_store.models import WEBHOOK_DELIVERIES, WEBHOOK_ENDPOINTS
from sqlalchemy import select

EVERYTHING = ["session.created", "session.status_run_started", "session.status_idled", "session.deleted"]


@pytest.fixture(autouse=True)
async def clean(db: Database) -> None:
    async with db.engine.begin() as conn:
        await conn.execute(WEBHOOK_DELIVERIES.delete())
        await conn.execute(WEBHOOK_ENDPOINTS.delete())


def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def frames(first: int, *bodies: dict[str, object]) -> list[NewEvent]:
    now = datetime.now(UTC)
    return [NewEvent(first + i, str(b["type"]), dict(b), now) for i, b in enumerate(bodies)]


async def outbox(db: Database, who: str) -> list[tuple[str, str, str]]:
    stmt = select(WEBHOOK_DELIVERIES.c.event_type, WEBHOOK_DELIVERIES.c.state, WEBHOOK_DELIVERIES.c.endpoint_id)
    async with db.engine.connect() as conn:
        rows = (await conn.execute(stmt.where(WEBHOOK_DELIVERIES.c.tenant == who).order_by("id"))).all()
    return [(str(a), str(b), str(c)) for a, b, c in rows]


async def test_a_log_batch_and_its_webhook_events_commit_together_or_not_at_all(db: Database) -> None:
    who = tenant()
    endpoint, secret = await WebhookEndpoints(db).create(who, "https://example.com/h", EVERYTHING)
    assert secret.startswith("whsec_")
    sid = f"s-{uuid.uuid4().hex[:8]}"
    await SessionRecords(db).create(sid, who, {})
    log = SessionEvents(db, announce=announcements)
    await log.append(sid, frames(1, {"type": "system", "subtype": "init"}, {"type": "result", "subtype": "success"}))
    assert [t for t, _, _ in await outbox(db, who)] == [
        "session.created",
        "session.status_run_started",
        "session.status_idled",
    ]
    # A batch the log refuses (its seqs are taken) announces nothing.
    with pytest.raises(EventConflict):
        await log.append(sid, frames(2, {"type": "result", "subtype": "success"}))
    assert len(await outbox(db, who)) == 3
    # An endpoint that does not take a type gets none of it; another tenant's events are not ours.
    other = tenant()
    await SessionRecords(db).create(f"s-{uuid.uuid4().hex[:8]}", other, {})
    assert await outbox(db, other) == []
    assert {e for _, _, e in await outbox(db, who)} == {endpoint.id}


async def test_an_outbox_write_that_fails_takes_the_log_batch_with_it(db: Database) -> None:
    """The other half of "together": if the webhook rows cannot be written, neither is the batch,
    so the log writer retries both (a status is never logged without its announcement)."""
    who = tenant()
    await WebhookEndpoints(db).create(who, "https://example.com/h", EVERYTHING)
    sid = f"s-{uuid.uuid4().hex[:8]}"
    await SessionRecords(db).create(sid, who, {})

    def broken(session_id: str, events: Sequence[NewEvent]) -> list[Announcement]:
        return [Announcement("session.status_idled", session_id, datetime.now(UTC)), None]  # type: ignore[list-item]

    with pytest.raises(AttributeError):
        await SessionEvents(db, announce=broken).append(sid, frames(1, {"type": "result", "subtype": "success"}))
    assert await SessionEvents(db).read(sid, 0) == []
    assert [t for t, _, _ in await outbox(db, who)] == ["session.created"]


async def test_archive_and_delete_of_a_session_are_announced_in_their_own_transaction(db: Database) -> None:
    who = tenant()
    await WebhookEndpoints(db).create(who, "https://example.com/h", ["session.archived", "session.deleted"])
    records = SessionRecords(db)
    sid = f"s-{uuid.uuid4().hex[:8]}"
    await records.create(sid, who, {})
    await records.archive(sid, who)
    await records.archive(sid, who)  # archived once: announced once
    assert await records.purge(sid)
    assert [t for t, _, _ in await outbox(db, who)] == ["session.archived", "session.deleted"]


async def test_claims_never_overlap_and_only_the_claim_records_its_attempt(db: Database) -> None:
    who = tenant()
    hooks, box = WebhookEndpoints(db), WebhookOutbox(db)
    await hooks.create(who, "https://example.com/h", ["session.created"])
    records = SessionRecords(db)
    for _ in range(20):
        await records.create(f"s-{uuid.uuid4().hex[:8]}", who, {})
    claims = await asyncio.gather(*(box.claim(f"r{n}", lease_s=60, limit=5) for n in range(8)))
    taken = [d.id for claim in claims for d in claim]
    assert taken and len(set(taken)) == len(taken)  # eight claimers at once: each row once
    late = await box.claim("late", lease_s=60, limit=50)  # what lost a race is still there
    assert len(taken) + len(late) == 20 and not set(taken) & {d.id for d in late}
    assert await box.claim("c", lease_s=60, limit=50) == []  # leased
    a = next(claim for claim in claims if claim)
    first = a[0]
    assert first.attempts == 1 and first.secret.startswith("whsec_") and first.url == "https://example.com/h"
    owner = next(f"r{n}" for n, claim in enumerate(claims) if claim is a)
    assert not await box.delivered(first, "someone-else")  # not their claim
    assert await box.delivered(first, owner)
    assert not await box.delivered(first, owner)  # recorded once
    assert await box.depth() == 19


async def test_a_lapsed_lease_is_claimed_again_with_the_same_event_id(db: Database) -> None:
    who = tenant()
    box = WebhookOutbox(db)
    await WebhookEndpoints(db).create(who, "https://example.com/h", ["session.created"])
    await SessionRecords(db).create(f"s-{uuid.uuid4().hex[:8]}", who, {})
    (dead,) = await box.claim("dead-replica", lease_s=0.05, limit=5)
    await asyncio.sleep(0.1)
    (again,) = await box.claim("live-replica", lease_s=60, limit=5)
    assert again.id == dead.id and again.event_id == dead.event_id and again.attempts == 2
    assert not await box.delivered(dead, "dead-replica")  # the dead claim's late answer is ignored
    assert await box.delivered(again, "live-replica")


async def test_failed_events_in_a_row_disable_the_endpoint_and_drop_what_waits(db: Database) -> None:
    who = tenant()
    hooks, box = WebhookEndpoints(db), WebhookOutbox(db)
    endpoint, _ = await hooks.create(who, "https://example.com/h", ["session.created"])
    for _ in range(3):
        await SessionRecords(db).create(f"s-{uuid.uuid4().hex[:8]}", who, {})
    one, two, three = await box.claim("a", lease_s=60, limit=5)
    retry = datetime.now(UTC) + timedelta(hours=1)
    assert await box.failed(one, "a", "HTTP 500", retry_at=retry, disable_after=2) is None  # will retry
    assert await box.failed(two, "a", "HTTP 500", retry_at=None, disable_after=2) is None  # 1 in a row
    assert await box.delivered(three, "a")  # a success resets the count
    record = await hooks.get(who, endpoint.id)
    assert record is not None and record.failures == 0 and record.state == "enabled"
    # Two final failures in a row now: the second disables it and drops the pending row.
    for _ in range(2):
        await SessionRecords(db).create(f"s-{uuid.uuid4().hex[:8]}", who, {})
    four, five = await box.claim("a", lease_s=60, limit=5)
    assert await box.failed(four, "a", "HTTP 500", retry_at=None, disable_after=2) is None
    disabled = await box.failed(five, "a", "ConnectionRefused", retry_at=None, disable_after=2)
    assert disabled is not None and disabled.state == "disabled" and "2 events" in disabled.disabled_reason
    states = [s for _, s, _ in await outbox(db, who)]
    assert states.count("dropped") == 1 and states.count("failed") == 3 and states.count("delivered") == 1
    # A disabled endpoint gets nothing new; enabling it clears the reason and the count.
    await SessionRecords(db).create(f"s-{uuid.uuid4().hex[:8]}", who, {})
    assert len(await outbox(db, who)) == 5
    enabled = await hooks.update(who, endpoint.id, state="enabled")
    assert enabled is not None and enabled.disabled_reason == "" and enabled.failures == 0


async def test_a_full_outbox_stores_further_events_as_dropped(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_webhooks, "MAX_PENDING_PER_TENANT", 2)
    who = tenant()
    await WebhookEndpoints(db).create(who, "https://example.com/h", ["session.created"])
    for _ in range(3):
        await SessionRecords(db).create(f"s-{uuid.uuid4().hex[:8]}", who, {})
    assert [s for _, s, _ in await outbox(db, who)] == ["pending", "pending", "dropped"]


async def test_endpoints_belong_to_their_tenant_and_page_by_id(db: Database) -> None:
    who, other = tenant(), tenant()
    hooks = WebhookEndpoints(db)
    made = [(await hooks.create(who, f"https://example.com/{i}", ["session.created"]))[0] for i in range(5)]
    assert await hooks.get(other, made[0].id) is None
    assert await hooks.update(other, made[0].id, name="x") is None
    assert await hooks.regenerate_secret(other, made[0].id) is None
    assert not await hooks.delete(other, made[0].id)
    newest_first = [r.id for r in await hooks.list(who, limit=10)]
    assert newest_first == [r.id for r in sorted(made, key=lambda r: (r.created_at, r.id), reverse=True)]
    after = await hooks.list(who, limit=2, after=await hooks.get(who, newest_first[1]))
    assert [r.id for r in after] == newest_first[2:4]
    oldest_first = [r.id for r in await hooks.list(who, limit=10, order="asc")]
    assert oldest_first == newest_first[::-1]
    before = await hooks.list(who, limit=2, before=await hooks.get(who, newest_first[3]))
    assert [r.id for r in before] == newest_first[:2]
    assert await hooks.list(other, limit=10) == []
    assert await hooks.delete(who, made[0].id)


async def test_a_tenant_has_at_most_32_endpoints(db: Database) -> None:
    who = tenant()
    hooks = WebhookEndpoints(db)
    await asyncio.gather(*(hooks.create(who, "https://example.com/h", ["x"]) for _ in range(32)))
    with pytest.raises(TooManyEndpoints):
        await hooks.create(who, "https://example.com/h", ["x"])
