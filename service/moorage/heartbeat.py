"""This replica's heartbeat in the database (``replicas``), and the SQLite single-replica guard.

Every replica beats at start and every third of its lease TTL, and leaves at a clean stop, so the
database knows which replicas are alive. SQLite serves one replica (one writer, no
notifications between processes): at start, on SQLite, a replica that sees another one's heartbeat
within the lease TTL refuses to start (``moorage serve`` exits 2 with :func:`sqlite_refusal`'s
message). The same replica id restarting (after a ``kill -9``) is itself, not another. On
PostgreSQL any number of replicas share the database.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta

import structlog
from moorage_session_store import Database, Replicas

from .errors import STORE_ERRORS

log = structlog.get_logger(__name__)


def sqlite_refusal(others: list[tuple[str, datetime]], now: datetime) -> str | None:
    """Why this replica must not start on a SQLite database where ``others`` (``(id, last beat)``,
    most recent first) beat recently; ``None`` when there are none."""
    if not others:
        return None
    replica, seen = others[0]
    ago = max(0, round((now - seen).total_seconds()))
    return (
        f"replica {replica} uses this SQLite database (seen {ago}s ago); SQLite serves one replica — "
        "point every replica at PostgreSQL (MOORAGE_DATABASE_URL=postgresql://…) to run more"
    )


async def join(db: Database, replica: str, ttl_s: float, now: datetime) -> str | None:
    """Start-up, once the schema is migrated: on SQLite, claim the database for ``replica``
    (its first beat) unless another replica beat within ``ttl_s``; the refusal then, else ``None``.
    On PostgreSQL, nothing to check."""
    if db.dialect != "sqlite":
        return None
    return sqlite_refusal(await Replicas(db).join(replica, now - timedelta(seconds=ttl_s)), now)


class Heartbeat:
    """Beats for ``replica`` every ``every_s`` from :meth:`start` until :meth:`stop`, which leaves.

    A beat the database refuses (an outage) is logged and tried again next period: a missed beat
    only matters to a SQLite replica starting meanwhile.
    """

    def __init__(self, replicas: Replicas, replica: str, every_s: float) -> None:
        self._replicas = replicas
        self._replica = replica
        self._every_s = every_s
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Beat now, then in the background."""
        await self._beat()
        self._task = asyncio.create_task(self._beat_forever(), name="moorage-heartbeat")

    async def stop(self) -> None:
        """Stop beating and leave (a clean stop: the next replica need not wait for the TTL)."""
        if self._task is None:
            return
        self._task.cancel()
        await asyncio.wait([self._task])
        self._task = None
        with contextlib.suppress(*STORE_ERRORS):
            await self._replicas.leave(self._replica)

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self._every_s)
            await self._beat()

    async def _beat(self) -> None:
        try:
            await self._replicas.beat(self._replica)
        except STORE_ERRORS as exc:
            log.warning("heartbeat_failed", replica=self._replica, error=str(exc)[:300])
