"""Files' bytes in an S3-compatible object store (``MOORAGE_FILE_STORE=s3://bucket/prefix``), and
the janitor that deletes the objects of deleted files.

A file's row can go without the service touching the bucket: with its session (a client's delete,
the retention reaper: ``ON DELETE CASCADE``), by the expiry sweep, or because a crash cut an upload
short. Every such delete names the file in the ``file_blob_deletions`` outbox in its own
transaction; the :class:`BlobJanitor` drains the outbox every ``MOORAGE_FILE_STORE_DRAIN_S``
(deleting the objects, then the outbox rows: an outage leaves the rows for the next round) and,
every ``MOORAGE_FILE_STORE_SWEEP_S``, lists the bucket and deletes the objects that have no
``files`` row and are older than ``MOORAGE_FILE_STORE_ORPHAN_GRACE_S`` (the reconciliation sweep:
whatever the outbox missed). Every replica runs one; both rounds are idempotent. It also refreshes
``moorage_tenant_file_bytes`` from the database, at start and every ``FILE_USAGE_S`` (one grouped
query over the ``files`` rows).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

import structlog
from moorage_session_store import Files, S3Blobs, parse_location

from .metrics import Metrics
from .settings import Settings

log = structlog.get_logger(__name__)

__all__ = ["FILE_USAGE_S", "BlobJanitor", "blob_store"]

FILE_USAGE_S = 60.0  # how stale moorage_tenant_file_bytes may get (this replica's own changes: at once)


def blob_store(settings: Settings) -> S3Blobs | None:
    """The object store the settings name (not started), or ``None`` for the database."""
    if not settings.file_store:
        return None
    return S3Blobs(
        parse_location(settings.file_store),
        endpoint_url=settings.s3_endpoint_url or None,
        region=settings.s3_region or None,
        access_key_id=settings.s3_access_key_id or None,
        secret_access_key=settings.s3_secret_access_key.get_secret_value() or None,
    )


class BlobJanitor:
    """Drains the deletion outbox and runs the reconciliation sweep, from :meth:`start` to
    :meth:`close`. Errors (database or object store) are logged by type and retried next round."""

    def __init__(self, files: Files, settings: Settings, metrics: Metrics) -> None:
        self._files = files
        self._drain_s = settings.file_store_drain_s
        self._sweep_s = settings.file_store_sweep_s
        self._grace = timedelta(seconds=settings.file_store_orphan_grace_s)
        self._metrics = metrics
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def drain(self) -> int:
        deleted = await self._files.drain_deletions()
        if deleted:
            self._metrics.file_objects_deleted.labels("outbox").inc(deleted)
        return deleted

    async def sweep(self, now: datetime) -> int:
        deleted = await self._files.sweep_orphans(now, self._grace)
        if deleted:
            self._metrics.file_objects_deleted.labels("orphan").inc(deleted)
            log.info("file_objects_orphaned", deleted=deleted)
        return deleted

    async def count(self) -> None:
        """Every tenant's ``moorage_tenant_file_bytes``, from the database."""
        self._metrics.tenant_file_bytes.replace(await self._files.bytes_by_tenant())

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_sweep = loop.time() + self._sweep_s if self._files.blobs is not None else float("inf")
        next_count = loop.time()
        while True:
            if loop.time() >= next_count:
                next_count = loop.time() + FILE_USAGE_S
                try:
                    await self.count()
                except Exception as exc:  # the database's: the gauge keeps its last figures until next time
                    log.warning("file_usage_unread", error=type(exc).__name__)
            try:
                await self.drain()
                if loop.time() >= next_sweep:
                    next_sweep = loop.time() + self._sweep_s
                    await self.sweep(datetime.now(UTC))
            except Exception as exc:  # the database's or the object store's (botocore's): next round
                log.warning("file_objects_delete_failed", error=type(exc).__name__)
            await asyncio.sleep(self._drain_s)
