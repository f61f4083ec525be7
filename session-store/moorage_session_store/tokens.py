"""API tokens issued by ``moorage tokens create``: the ``api_tokens`` table and its repository.

A token reads ``mrg_<id>_<secret>``: ``mrg_`` makes it recognisable (secret scanners, logs), ``<id>``
is 12 lowercase hex characters — the row's public primary key — and ``<secret>`` is 64 lowercase hex
characters (256 random bits). Only ``sha256(token)`` is stored; the token itself is returned once,
by :meth:`Tokens.create`.

:meth:`Tokens.check` parses the token, reads the one row by its id (a primary-key lookup) and
compares digests with :func:`hmac.compare_digest`. The caller learns why a token failed
(``reason``) so it can log it; a client must only ever be told "refused". ``last_used_at`` is
written at most once per :data:`TOUCH_INTERVAL` per token, by a conditional ``UPDATE`` — so many
replicas checking one token at once still write it about once a minute.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import exc as sa_exc
from sqlalchemy import exists, insert, or_, select, update

from .columns import utcnow
from .database import Database
from .errors import InvalidRecord
from .models import API_TOKENS

__all__ = ["TOKEN_PREFIX", "TokenCheck", "TokenRecord", "Tokens", "parse_token", "token_digest"]

TOKEN_PREFIX = "mrg_"
ID_HEX_CHARS = 12
SECRET_BYTES = 32
TOKEN_RE = re.compile(rf"^{TOKEN_PREFIX}([0-9a-f]{{{ID_HEX_CHARS}}})_[0-9a-f]{{{SECRET_BYTES * 2}}}$")
TOUCH_INTERVAL = timedelta(minutes=1)
_CREATE_ATTEMPTS = 3

Reason = Literal["ok", "malformed", "unknown", "mismatch", "revoked", "expired"]


def token_digest(token: str) -> str:
    """The stored form of a token: hex SHA-256 of the whole token (256 random bits need no slow hash)."""
    return hashlib.sha256(token.encode()).hexdigest()


def parse_token(token: str) -> str | None:
    """The token's id if ``token`` has the exact ``mrg_<id>_<secret>`` shape, else ``None``."""
    match = TOKEN_RE.match(token)
    return match.group(1) if match else None


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A snapshot of one ``api_tokens`` row, without its digest."""

    id: str
    tenant: str
    name: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    def state(self, now: datetime | None = None) -> Literal["active", "revoked", "expired"]:
        """``revoked`` wins over ``expired``; ``active`` otherwise."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= (now or utcnow()):
            return "expired"
        return "active"


@dataclass(frozen=True, slots=True)
class TokenCheck:
    """The outcome of :meth:`Tokens.check`: the record when the id exists, and why it passed or failed."""

    reason: Reason
    record: TokenRecord | None = None

    @property
    def ok(self) -> bool:
        return self.reason == "ok"


_COLUMNS = [c for c in API_TOKENS.c if c.name != "secret_sha256"]


def _record(row: Any) -> TokenRecord:
    mapping = dict(row._mapping)
    mapping.pop("secret_sha256", None)
    return TokenRecord(**mapping)


class Tokens:
    """Async repository for ``api_tokens``. Safe to share between tasks."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(
        self, tenant: str, name: str | None = None, expires_at: datetime | None = None
    ) -> tuple[TokenRecord, str]:
        """Issue a token for ``tenant``: its record and the token itself (the only time it exists in full)."""
        if not tenant:
            raise InvalidRecord("a token needs a tenant")
        for attempt in range(_CREATE_ATTEMPTS):
            id = secrets.token_hex(ID_HEX_CHARS // 2)
            token = f"{TOKEN_PREFIX}{id}_{secrets.token_hex(SECRET_BYTES)}"
            record = TokenRecord(id, tenant, name or None, utcnow(), expires_at, None, None)
            values = {
                "id": id,
                "tenant": tenant,
                "name": record.name,
                "secret_sha256": token_digest(token),
                "created_at": record.created_at,
                "expires_at": expires_at,
            }
            with self._db.translate_errors():
                try:
                    async with self._db.engine.begin() as conn:
                        await conn.execute(insert(API_TOKENS).values(**values))
                except sa_exc.IntegrityError:  # a 48-bit id collided: draw again
                    if attempt == _CREATE_ATTEMPTS - 1:
                        raise
                    continue
            return record, token
        raise AssertionError("unreachable")

    async def check(self, token: str) -> TokenCheck:
        """Judge a presented token with one primary-key read (plus, about once a minute, a ``last_used_at`` write)."""
        id = parse_token(token)
        if id is None:
            return TokenCheck("malformed")
        with self._db.translate_errors():
            async with self._db.engine.connect() as conn:
                row = (await conn.execute(select(API_TOKENS).where(API_TOKENS.c.id == id))).first()
        if row is None:
            return TokenCheck("unknown")
        record = _record(row)
        if not hmac.compare_digest(str(row.secret_sha256), token_digest(token)):
            return TokenCheck("mismatch", record)
        now = utcnow()
        state = record.state(now)
        if state != "active":
            return TokenCheck(state, record)
        if record.last_used_at is None or now - record.last_used_at >= TOUCH_INTERVAL:
            await self._touch(id, now)
        return TokenCheck("ok", record)

    async def _touch(self, id: str, now: datetime) -> None:
        stale = or_(API_TOKENS.c.last_used_at.is_(None), API_TOKENS.c.last_used_at <= now - TOUCH_INTERVAL)
        with self._db.translate_errors():
            async with self._db.engine.begin() as conn:
                await conn.execute(update(API_TOKENS).where(API_TOKENS.c.id == id, stale).values(last_used_at=now))

    async def get(self, id: str) -> TokenRecord | None:
        """The token's record, or ``None``."""
        with self._db.translate_errors():
            async with self._db.engine.connect() as conn:
                row = (await conn.execute(select(*_COLUMNS).where(API_TOKENS.c.id == id))).first()
        return None if row is None else _record(row)

    async def list(self, tenant: str | None = None) -> builtins.list[TokenRecord]:
        """Every token (revoked and expired too), oldest first, optionally of one tenant."""
        stmt = select(*_COLUMNS).order_by(API_TOKENS.c.created_at, API_TOKENS.c.id)
        if tenant is not None:
            stmt = stmt.where(API_TOKENS.c.tenant == tenant)
        with self._db.translate_errors():
            async with self._db.engine.connect() as conn:
                rows = (await conn.execute(stmt)).all()
        return [_record(row) for row in rows]

    async def revoke(self, id: str) -> TokenRecord | None:
        """Revoke the token (idempotent: a second call keeps the first ``revoked_at``); ``None`` if no such id."""
        with self._db.translate_errors():
            async with self._db.engine.begin() as conn:
                await conn.execute(
                    update(API_TOKENS)
                    .where(API_TOKENS.c.id == id, API_TOKENS.c.revoked_at.is_(None))
                    .values(revoked_at=utcnow())
                )
        return await self.get(id)

    async def no_longer_valid(self, ids: Iterable[str]) -> set[str]:
        """Which of ``ids`` are revoked, expired or gone (one query), for cutting open connections."""
        wanted = set(ids)
        if not wanted:
            return set()
        now = utcnow()
        stmt = select(API_TOKENS.c.id).where(
            API_TOKENS.c.id.in_(wanted),
            API_TOKENS.c.revoked_at.is_(None),
            or_(API_TOKENS.c.expires_at.is_(None), API_TOKENS.c.expires_at > now),
        )
        with self._db.translate_errors():
            async with self._db.engine.connect() as conn:
                valid = {row[0] for row in (await conn.execute(stmt)).all()}
        return wanted - valid

    async def any(self) -> bool:
        """Whether any token was ever issued (revoked and expired ones count)."""
        with self._db.translate_errors():
            async with self._db.engine.connect() as conn:
                return bool((await conn.execute(select(exists().select_from(API_TOKENS)))).scalar())
