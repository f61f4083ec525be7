"""Webhooks: each tenant's endpoints (``webhook_endpoints``) and the delivery outbox
(``webhook_deliveries``).

Contract, held on SQLite and PostgreSQL by ``tests/integration/test_webhook_store.py``:

- :func:`enqueue` runs inside the caller's transaction: the one that appends the session's log
  (``SessionEvents.append``) or changes its record (``SessionRecords.create`` / ``archive`` /
  ``purge``). So an event is in the outbox exactly when what caused it is committed: a crash
  between the two cannot happen. It writes one row per event per *enabled* endpoint of the tenant
  that takes the event's type (an endpoint disabled when the event happens never gets it, as the
  hosted API documents). Each event gets one ``wevt_`` id, the ``webhook-id`` of every attempt to
  every endpoint. A tenant with :data:`MAX_PENDING_PER_TENANT` deliveries pending gets further
  rows as ``dropped`` (``last_error = "outbox_full"``), so a dead receiver cannot grow the table
  without bound; finished rows are deleted by :meth:`WebhookOutbox.prune`.
- :meth:`WebhookOutbox.claim` takes due rows for one worker: it pushes their ``next_attempt_at``
  ``lease_s`` ahead (the lease: a worker that dies mid-attempt leaves the row to be retried after
  it) and names the worker in ``claimed_by``. On PostgreSQL the rows are selected ``FOR UPDATE
  SKIP LOCKED`` (claimers do not queue behind each other) and the ``UPDATE`` re-checks that each
  row is still due, so replicas claiming at once never get the same row; SQLite serialises
  writers (and runs one replica). :meth:`~WebhookOutbox.delivered` and :meth:`~WebhookOutbox.failed`
  record an attempt only if the row is still this worker's claim of that attempt.
- An event whose last attempt failed counts against its endpoint (``failures``, reset by any
  success); at ``disable_after`` in a row the endpoint is disabled with a reason and its pending
  rows are dropped.
"""

from __future__ import annotations

import base64
import builtins
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .columns import utcnow
from .database import Database
from .errors import MoorageStoreError
from .models import SESSIONS, WEBHOOK_DELIVERIES, WEBHOOK_ENDPOINTS

__all__ = [
    "MAX_ENDPOINTS",
    "MAX_PENDING_PER_TENANT",
    "Announcement",
    "Delivery",
    "EndpointRecord",
    "TooManyEndpoints",
    "WebhookEndpoints",
    "WebhookOutbox",
    "enqueue",
    "enqueue_for_session",
    "new_secret",
]

ENDPOINT_PREFIX = "whep_"
EVENT_PREFIX = "wevt_"
SECRET_PREFIX = "whsec_"
#: Endpoints one tenant may have, enabled or disabled (the hosted API's limit).
MAX_ENDPOINTS = 32
#: Deliveries one tenant may have pending; past it new ones are stored as dropped.
MAX_PENDING_PER_TENANT = 10_000
#: The workspace every event names (Moorage has one per tenant).
WORKSPACE_ID = "default"

_EP = WEBHOOK_ENDPOINTS
_DL = WEBHOOK_DELIVERIES


class TooManyEndpoints(MoorageStoreError):
    """The tenant has :data:`MAX_ENDPOINTS` endpoints already."""

    code = "too_many_webhook_endpoints"


def new_secret() -> str:
    """``whsec_`` and the base64 of 32 random bytes (the Standard Webhooks key format)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


@dataclass(frozen=True, slots=True)
class Announcement:
    """Something a webhook tells: event ``type`` about the object ``subject_id`` (a session)."""

    type: str
    subject_id: str
    at: datetime


@dataclass(frozen=True, slots=True)
class EndpointRecord:
    """One endpoint, without its secret."""

    id: str
    tenant: str
    url: str
    name: str
    description: str
    enabled_events: list[str]
    state: Literal["enabled", "disabled"]
    disabled_reason: str
    failures: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Delivery:
    """A claimed outbox row with what sending it needs (its endpoint's URL and secret now)."""

    id: int
    endpoint_id: str
    tenant: str
    event_id: str
    event_type: str
    payload: dict[str, Any]
    attempts: int  # including the one this claim is for
    url: str
    secret: str


_ENDPOINT_COLUMNS = (
    _EP.c.id,
    _EP.c.tenant,
    _EP.c.url,
    _EP.c.name,
    _EP.c.description,
    _EP.c.enabled_events,
    _EP.c.state,
    _EP.c.disabled_reason,
    _EP.c.failures,
    _EP.c.created_at,
    _EP.c.updated_at,
)


def _endpoint(row: Any) -> EndpointRecord:
    return EndpointRecord(**dict(row._mapping))


def payload(event_id: str, announcement: Announcement, tenant: str) -> dict[str, Any]:
    """The thin body of a delivery (MANAGED_AGENTS.md §10): what happened to which object."""
    at = announcement.at.isoformat().replace("+00:00", "Z")
    data = {
        "type": announcement.type,
        "id": announcement.subject_id,
        "organization_id": tenant,
        "workspace_id": WORKSPACE_ID,
    }
    return {"type": "event", "id": event_id, "created_at": at, "data": data}


async def enqueue(conn: AsyncConnection, tenant: str, announcements: Sequence[Announcement]) -> int:
    """Put ``announcements`` in the outbox of every enabled endpoint of ``tenant`` that takes
    their type, in ``conn``'s transaction; how many rows were written."""
    if not announcements:
        return 0
    mine = select(_EP.c.id, _EP.c.enabled_events).where(_EP.c.tenant == tenant, _EP.c.state == "enabled")
    endpoints = [(str(i), list(e or [])) for i, e in (await conn.execute(mine)).all()]
    return await _write(conn, tenant, endpoints, announcements)


async def enqueue_for_session(conn: AsyncConnection, session_id: str, announcements: Sequence[Announcement]) -> int:
    """:func:`enqueue` for the tenant of session ``session_id``, found in the same (one) query
    as its endpoints: a tenant without endpoints costs one indexed read."""
    if not announcements:
        return 0
    stmt = (
        select(SESSIONS.c.tenant, _EP.c.id, _EP.c.enabled_events)
        .join(_EP, and_(_EP.c.tenant == SESSIONS.c.tenant, _EP.c.state == "enabled"))
        .where(SESSIONS.c.id == session_id)
    )
    rows = (await conn.execute(stmt)).all()
    if not rows:
        return 0
    return await _write(conn, str(rows[0][0]), [(str(i), list(e or [])) for _, i, e in rows], announcements)


async def _write(
    conn: AsyncConnection, tenant: str, endpoints: list[tuple[str, list[str]]], announcements: Sequence[Announcement]
) -> int:
    matches = [(a, [i for i, types in endpoints if a.type in types]) for a in announcements]
    if not any(takers for _, takers in matches):
        return 0
    pending_q = select(func.count()).where(_DL.c.tenant == tenant, _DL.c.state == "pending")
    pending = int((await conn.execute(pending_q)).scalar_one())
    now = utcnow()
    rows = []
    for announcement, takers in matches:
        event_id = EVENT_PREFIX + secrets.token_hex(12)
        body = payload(event_id, announcement, tenant)
        for endpoint_id in takers:
            full = pending >= MAX_PENDING_PER_TENANT
            pending += not full
            rows.append(
                {
                    "endpoint_id": endpoint_id,
                    "tenant": tenant,
                    "event_id": event_id,
                    "event_type": announcement.type,
                    "payload": body,
                    "state": "dropped" if full else "pending",
                    "attempts": 0,
                    "next_attempt_at": now,
                    "last_error": "outbox_full" if full else None,
                    "created_at": now,
                    "done_at": now if full else None,
                }
            )
    await conn.execute(insert(_DL), rows)
    return len(rows)


class WebhookEndpoints:
    """Async repository for one tenant's endpoints. Safe to share between tasks."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(
        self, tenant: str, url: str, enabled_events: list[str], name: str = "", description: str = ""
    ) -> tuple[EndpointRecord, str]:
        """A new enabled endpoint and its secret. Raises :class:`TooManyEndpoints`."""
        now = utcnow()
        record = EndpointRecord(
            ENDPOINT_PREFIX + secrets.token_hex(12),
            tenant,
            url,
            name,
            description,
            list(enabled_events),
            "enabled",
            "",
            0,
            now,
            now,
        )
        secret = new_secret()
        count = select(func.count()).where(_EP.c.tenant == tenant)
        with self._db.translate_errors():
            async with self._db.engine.begin() as conn:
                if self._db.dialect == "postgresql":  # two racing creates must not both pass the count
                    await conn.execute(select(func.pg_advisory_xact_lock(func.hashtext("webhooks:" + tenant))))
                if int((await conn.execute(count)).scalar_one()) >= MAX_ENDPOINTS:
                    raise TooManyEndpoints(f"a tenant may have at most {MAX_ENDPOINTS} webhook endpoints")
                fields = {k: getattr(record, k) for k in record.__slots__}
                await conn.execute(insert(_EP).values(**fields, secret=secret))
        return record, secret

    async def get(self, tenant: str, endpoint_id: str) -> EndpointRecord | None:
        stmt = select(*_ENDPOINT_COLUMNS).where(_EP.c.id == endpoint_id, _EP.c.tenant == tenant)
        with self._db.translate_errors():
            async with self._db.engine.connect() as conn:
                row = (await conn.execute(stmt)).first()
        return None if row is None else _endpoint(row)

    async def list(
        self,
        tenant: str,
        *,
        limit: int,
        order: Literal["asc", "desc"] = "desc",
        after: EndpointRecord | None = None,
        before: EndpointRecord | None = None,
    ) -> builtins.list[EndpointRecord]:
        """Up to ``limit`` endpoints in ``order`` of (``created_at``, ``id``): those after
        ``after`` in that order, or the first ones before ``before``."""
        stmt = select(*_ENDPOINT_COLUMNS).where(_EP.c.tenant == tenant)
        if after is not None:  # the next ones in list order
            stmt = stmt.where(_beyond(after, later=order == "asc"))
        elif before is not None:  # the first ones ahead of it in list order
            stmt = stmt.where(_beyond(before, later=order == "desc"))
        key = (_EP.c.created_at, _EP.c.id)
        sort = (key[0].desc(), key[1].desc()) if order == "desc" else (key[0].asc(), key[1].asc())
        with self._db.translate_errors():
            async with self._db.engine.connect() as conn:
                rows = (await conn.execute(stmt.order_by(*sort).limit(limit))).all()
        return [_endpoint(row) for row in rows]

    async def update(self, tenant: str, endpoint_id: str, **fields: Any) -> EndpointRecord | None:
        """Change ``url``, ``name``, ``description``, ``enabled_events`` or ``state`` (enabling
        clears ``disabled_reason`` and the failure count). ``None``: no such endpoint."""
        allowed = {"url", "name", "description", "enabled_events", "state"}
        if unknown := set(fields) - allowed:
            raise ValueError(f"cannot update {sorted(unknown)}")
        values: dict[str, Any] = {**fields, "updated_at": utcnow()}
        if fields.get("state") == "enabled":
            values.update(disabled_reason="", failures=0)
        mine = (_EP.c.id == endpoint_id, _EP.c.tenant == tenant)
        with self._db.translate_errors():
            async with self._db.engine.begin() as conn:
                moved = await conn.execute(update(_EP).where(*mine).values(**values))
                if moved.rowcount != 1:
                    return None
                if fields.get("state") == "disabled":
                    await _drop_pending(conn, endpoint_id, "endpoint_disabled")
                row = (await conn.execute(select(*_ENDPOINT_COLUMNS).where(*mine))).one()
        return _endpoint(row)

    async def regenerate_secret(self, tenant: str, endpoint_id: str) -> str | None:
        """A new secret, used from the next attempt on; ``None``: no such endpoint."""
        secret = new_secret()
        stmt = (
            update(_EP)
            .where(_EP.c.id == endpoint_id, _EP.c.tenant == tenant)
            .values(secret=secret, updated_at=utcnow())
        )
        with self._db.translate_errors():
            async with self._db.engine.begin() as conn:
                moved = await conn.execute(stmt)
        return secret if moved.rowcount == 1 else None

    async def delete(self, tenant: str, endpoint_id: str) -> bool:
        """Delete the endpoint and its outbox rows (``ON DELETE CASCADE``, and explicitly for
        SQLite connections without foreign keys); ``False`` if there was none."""
        with self._db.translate_errors():
            async with self._db.engine.begin() as conn:
                gone = await conn.execute(delete(_EP).where(_EP.c.id == endpoint_id, _EP.c.tenant == tenant))
                if gone.rowcount == 1:
                    await conn.execute(delete(_DL).where(_DL.c.endpoint_id == endpoint_id))
        return bool(gone.rowcount == 1)


def _beyond(cursor: EndpointRecord, *, later: bool) -> Any:
    """Endpoints strictly later (or earlier) than ``cursor`` in (``created_at``, ``id``)."""
    at, ident = cursor.created_at, cursor.id
    if later:
        return or_(_EP.c.created_at > at, and_(_EP.c.created_at == at, _EP.c.id > ident))
    return or_(_EP.c.created_at < at, and_(_EP.c.created_at == at, _EP.c.id < ident))


async def _drop_pending(conn: AsyncConnection, endpoint_id: str, reason: str) -> None:
    await conn.execute(
        update(_DL)
        .where(_DL.c.endpoint_id == endpoint_id, _DL.c.state == "pending")
        .values(state="dropped", last_error=reason, done_at=utcnow())
    )


class WebhookOutbox:
    """The delivery side of the outbox: claim due rows, record each attempt. Safe to share."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def claim(self, owner: str, *, lease_s: float, limit: int) -> builtins.list[Delivery]:
        """Up to ``limit`` due deliveries for ``owner``, leased for ``lease_s`` (see the module)."""
        now = utcnow()
        due = (
            select(_DL.c.id)
            .where(_DL.c.state == "pending", _DL.c.next_attempt_at <= now)
            .order_by(_DL.c.next_attempt_at)
            .limit(limit)
        )
        if self._db.dialect == "postgresql":
            due = due.with_for_update(skip_locked=True)
        columns = (
            _DL.c.id,
            _DL.c.endpoint_id,
            _DL.c.tenant,
            _DL.c.event_id,
            _DL.c.event_type,
            _DL.c.payload,
            _DL.c.attempts,
            _EP.c.url,
            _EP.c.secret,
        )
        with self._db.translate_errors():
            async with self._db.engine.begin() as conn:
                ids = [int(i) for i in (await conn.execute(due)).scalars()]
                if not ids:
                    return []
                # The UPDATE re-checks "due" (PostgreSQL re-reads a row it waited for), so a row
                # another claim took between our SELECT and here is not taken twice.
                taken = await conn.execute(
                    update(_DL)
                    .where(_DL.c.id.in_(ids), _DL.c.state == "pending", _DL.c.next_attempt_at <= now)
                    .values(
                        attempts=_DL.c.attempts + 1,
                        claimed_by=owner,
                        next_attempt_at=now + timedelta(seconds=lease_s),
                    )
                    .returning(_DL.c.id)
                )
                ids = [int(i) for i in taken.scalars()]
                rows = (await conn.execute(select(*columns).join(_EP).where(_DL.c.id.in_(ids)))).all()
        return [Delivery(**dict(row._mapping)) for row in rows]

    def _mine(self, delivery: Delivery, owner: str) -> Any:
        return and_(
            _DL.c.id == delivery.id,
            _DL.c.state == "pending",
            _DL.c.claimed_by == owner,
            _DL.c.attempts == delivery.attempts,
        )

    async def delivered(self, delivery: Delivery, owner: str) -> bool:
        """The attempt was acknowledged; ``False`` if the claim was no longer ours (nothing changed)."""
        now = utcnow()
        with self._db.translate_errors():
            async with self._db.engine.begin() as conn:
                moved = await conn.execute(
                    update(_DL)
                    .where(self._mine(delivery, owner))
                    .values(state="delivered", done_at=now, last_error=None)
                )
                if moved.rowcount != 1:
                    return False
                await conn.execute(update(_EP).where(_EP.c.id == delivery.endpoint_id).values(failures=0))
        return True

    async def failed(
        self, delivery: Delivery, owner: str, error: str, *, retry_at: datetime | None, disable_after: int
    ) -> EndpointRecord | None:
        """The attempt failed (``error``, short). ``retry_at``: when to try again; ``None``: that
        was the last attempt, and the event counts against its endpoint. Returns the endpoint if
        this failure disabled it."""
        now = utcnow()
        values: dict[str, Any] = {"last_error": error[:200]}
        if retry_at is not None:
            values["next_attempt_at"] = retry_at
        else:
            values.update(state="failed", done_at=now)
        with self._db.translate_errors():
            async with self._db.engine.begin() as conn:
                moved = await conn.execute(update(_DL).where(self._mine(delivery, owner)).values(**values))
                if moved.rowcount != 1 or retry_at is not None:
                    return None
                endpoint = _EP.c.id == delivery.endpoint_id
                await conn.execute(update(_EP).where(endpoint).values(failures=_EP.c.failures + 1))
                reason = f"{disable_after} events in a row could not be delivered"
                disabled = await conn.execute(
                    update(_EP)
                    .where(endpoint, _EP.c.state == "enabled", _EP.c.failures >= disable_after)
                    .values(state="disabled", disabled_reason=reason, updated_at=now)
                )
                if disabled.rowcount != 1:
                    return None
                await _drop_pending(conn, delivery.endpoint_id, "endpoint_disabled")
                row = (await conn.execute(select(*_ENDPOINT_COLUMNS).where(endpoint))).one()
        return _endpoint(row)

    async def depth(self) -> int:
        """Deliveries pending, over every tenant."""
        with self._db.translate_errors():
            async with self._db.engine.connect() as conn:
                return int((await conn.execute(select(func.count()).where(_DL.c.state == "pending"))).scalar_one())

    async def prune(self, before: datetime) -> int:
        """Delete finished rows (delivered, failed, dropped) done before ``before``; how many."""
        stmt = delete(_DL).where(_DL.c.state != "pending", _DL.c.done_at < before)
        with self._db.translate_errors():
            async with self._db.engine.begin() as conn:
                return int((await conn.execute(stmt)).rowcount)

    async def history(self, endpoint_id: str) -> builtins.list[tuple[str, str, int, str | None]]:
        """``(event_id, state, attempts, last_error)`` of an endpoint's rows, oldest first (tests, ops)."""
        stmt = (
            select(_DL.c.event_id, _DL.c.state, _DL.c.attempts, _DL.c.last_error)
            .where(_DL.c.endpoint_id == endpoint_id)
            .order_by(_DL.c.id)
        )
        with self._db.translate_errors():
            async with self._db.engine.connect() as conn:
                return [(str(a), str(b), int(c), d) for a, b, c, d in (await conn.execute(stmt)).all()]
