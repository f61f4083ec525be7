"""Bounded storage: the per-tenant quota and the retention of suspended sessions.

What a tenant stores — its sessions' workspace snapshots and transcript
entries — is counted by the database (``SessionRecords.tenant_storage_bytes``).
Past ``MOORAGE_TENANT_STORAGE_BYTES``:

- refused: opening a new session (fatal ``storage_quota_exceeded``), and a
  workspace save (checkpoint or suspension) that would store more than the
  session's last save — the last save is kept, the session is flagged and
  its next client is told (non-fatal ``storage_quota_exceeded``);
- still works: attaching to and rehydrating existing sessions, turns in
  them (a transcript entry is never refused: a turn's ``result`` promises
  its transcript is saved, so transcripts may take a tenant past the quota),
  saves that do not grow, and deleting sessions.

The quota is soft under concurrency: sessions saving at the same moment each
see the count before the others' saves, so a tenant can overshoot by at most
one workspace (``MOORAGE_WORKSPACE_MAX_BYTES``) per session saving at once.

Retention: a reaper (``SessionManager``) deletes sessions suspended longer
than ``MOORAGE_SESSION_RETENTION_DAYS`` with everything they stored, in
batches, through a conditional ``DELETE`` that skips any session a replica
holds a lease on (``SessionRecords.reap_suspended``).

The decisions here are pure (numbers and times in, verdicts out).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from .errors import STORE_ERRORS, Code, MoorageError, SessionError
from .seams import RecordStore

log = structlog.get_logger(__name__)

NOT_SAVED_FLAG = "workspace_not_saved"  # in a session's options: why its last suspension kept the older save


@dataclass(frozen=True)
class StorageQuota:
    """``MOORAGE_TENANT_STORAGE_BYTES`` (0: unlimited) and what it admits."""

    limit: int

    def admits_session(self, used: int) -> bool:
        """A new session may start while the tenant stores less than the quota."""
        return self.limit <= 0 or used < self.limit

    def session_refused(self, used: int) -> SessionError:
        return SessionError(
            f"this tenant stores {used} bytes, at or over its quota of {self.limit} "
            "(MOORAGE_TENANT_STORAGE_BYTES): delete sessions to open new ones",
            code=Code.STORAGE_QUOTA_EXCEEDED,
            fatal=True,
        )

    def workspace_not_saved(self) -> MoorageError:
        """Told (not fatal) to the clients of a session whose last workspace save was refused."""
        return MoorageError(
            f"this session's workspace was not saved when it was last suspended: its tenant is over its "
            f"storage quota of {self.limit} bytes (MOORAGE_TENANT_STORAGE_BYTES). /workspace holds the "
            "files of its previous save; delete sessions to make room",
            code=Code.STORAGE_QUOTA_EXCEEDED,
        )

    def over_quota(self, used: int) -> MoorageError:
        """Told (not fatal) when a session of an over-quota tenant is rehydrated."""
        return MoorageError(
            f"this tenant stores {used} bytes, over its quota of {self.limit} (MOORAGE_TENANT_STORAGE_BYTES): "
            "changes to /workspace will not be saved unless it shrinks; delete sessions to make room",
            code=Code.STORAGE_QUOTA_EXCEEDED,
        )

    def workspace_allowance(self, used: int, old: int) -> int | None:
        """The largest archive that may replace a saved one of ``old`` bytes while the tenant stores
        ``used`` (old included); ``None``: unlimited. Never less than ``old``: a save that does not
        grow is always admitted."""
        if self.limit <= 0:
            return None
        return max(old, self.limit - (used - old))


class OverQuota(MoorageError):
    """A workspace save stopped because it would take its tenant past the quota."""

    code = Code.STORAGE_QUOTA_EXCEEDED


async def workspace_allowance(records: RecordStore, session_id: str, limit: int) -> int | None:
    """How many bytes the session's next workspace archive may have under its tenant's quota
    (``None``: no limit). Asked before a save streams, so the archive never has to be held to be
    measured. When the count cannot be read the save goes ahead (it fails or retries on its own):
    a database hiccup must never cost a client its files."""
    quota = StorageQuota(limit)
    if quota.limit <= 0:
        return None
    try:
        old = await records.workspace_bytes(session_id)
        record = await records.get(session_id)
        if record is None:
            return None
        used = await records.tenant_storage_bytes(record.tenant)
    except STORE_ERRORS as exc:
        log.warning("storage_count_failed", session_id=session_id, error=type(exc).__name__)
        return None
    return quota.workspace_allowance(used, old)


@dataclass(frozen=True)
class Retention:
    """``MOORAGE_SESSION_RETENTION_DAYS`` (0: keep forever) and the reaper's pacing."""

    days: float
    batch: int = 100  # sessions deleted per transaction
    max_batches: int = 50  # per sweep; the next sweep goes on
    period_s: float = 300.0  # between sweeps

    @property
    def enabled(self) -> bool:
        return self.days > 0

    def cutoff(self, now: datetime) -> datetime | None:
        """Sessions suspended (last updated) before this are due; ``None``: keep everything."""
        return now - timedelta(days=self.days) if self.enabled else None

    def due(
        self, state: str, updated_at: datetime, owner: str | None, lease_expires_at: datetime | None, now: datetime
    ) -> bool:
        """The rule ``SessionRecords.reap_suspended`` applies in SQL, for one record: suspended before
        the cutoff, and no replica holds an unexpired lease on it."""
        cutoff = self.cutoff(now)
        if cutoff is None or state != "suspended" or updated_at >= cutoff:
            return False
        return owner is None or (lease_expires_at is not None and lease_expires_at < now)

    def another_batch(self, deleted: int, batches: int) -> bool:
        """After a batch: sweep on while batches come back full, up to ``max_batches`` a sweep."""
        return deleted >= self.batch and batches < self.max_batches
