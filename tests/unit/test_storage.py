"""The storage decisions (``moorage.storage``): the tenant quota and the retention rule, pure."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

import pytest
from moorage.errors import Code, close_code
from moorage.manager import SessionManager
from moorage.metrics import Metrics
from moorage.settings import Settings
from moorage.storage import OverQuota, Retention, StorageQuota
from moorage.workspaces import _within

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
GIB = 1024**3


def test_new_sessions_are_refused_at_the_quota_and_never_when_unlimited() -> None:
    quota = StorageQuota(10 * GIB)
    assert quota.admits_session(0) and quota.admits_session(10 * GIB - 1)
    assert not quota.admits_session(10 * GIB) and not quota.admits_session(11 * GIB)
    assert StorageQuota(0).admits_session(10**15)
    error = quota.session_refused(11 * GIB)
    assert error.code == Code.STORAGE_QUOTA_EXCEEDED and error.fatal
    assert close_code(error.code) == 1008


def test_a_workspace_save_is_refused_only_when_it_grows_past_the_quota() -> None:
    quota = StorageQuota(1000)
    assert quota.workspace_allowance(used=900, old=100) == 200  # 1000: still fits; 201 would not
    assert quota.workspace_allowance(used=5000, old=300) == 300  # over quota: not growing, or shrinking
    assert quota.workspace_allowance(used=5000, old=0) == 0
    assert StorageQuota(0).workspace_allowance(used=10**15, old=0) is None
    assert not quota.workspace_not_saved().fatal and not quota.over_quota(2000).fatal


async def test_a_save_streaming_past_its_allowance_stops_with_over_quota() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"x" * 100

    assert [len(c) async for c in _within(chunks(), 300)] == [100, 100, 100]
    assert [len(c) async for c in _within(chunks(), None)] == [100, 100, 100]
    with pytest.raises(OverQuota):
        [c async for c in _within(chunks(), 299)]


def test_retention_cutoff_and_due_follow_the_clock_passed_in() -> None:
    policy = Retention(days=30)
    assert policy.cutoff(NOW) == NOW - timedelta(days=30)
    old = NOW - timedelta(days=30, seconds=1)
    assert policy.due("suspended", old, None, None, NOW)
    assert not policy.due("suspended", NOW - timedelta(days=29), None, None, NOW)
    assert not policy.due("suspended", NOW - timedelta(days=30), None, None, NOW)  # exactly at the cutoff
    assert not policy.due("active", old, None, None, NOW)
    # A replica holds a lease: never; an expired lease holds nothing.
    assert not policy.due("suspended", old, "replica-b", NOW + timedelta(seconds=5), NOW)
    assert policy.due("suspended", old, "replica-b", NOW - timedelta(seconds=5), NOW)


def test_zero_days_keeps_everything() -> None:
    forever = Retention(days=0)
    assert not forever.enabled and forever.cutoff(NOW) is None
    assert not forever.due("suspended", NOW - timedelta(days=10_000), None, None, NOW)


def test_a_sweep_goes_on_while_batches_come_back_full_and_stops_at_its_bound() -> None:
    policy = Retention(days=1, batch=100, max_batches=3)
    assert policy.another_batch(100, 1) and policy.another_batch(100, 2)
    assert not policy.another_batch(100, 3)  # the next sweep goes on
    assert not policy.another_batch(99, 1) and not policy.another_batch(0, 1)


class FakeRecords:
    """Answers reap_suspended with the batches given, recording the cutoffs asked for."""

    def __init__(self, batches: list[int]) -> None:
        self.batches = batches
        self.cutoffs: list[datetime] = []

    async def reap_suspended(self, before: datetime, limit: int) -> list[str]:
        self.cutoffs.append(before)
        n = self.batches.pop(0) if self.batches else 0
        return [f"s{i}" for i in range(min(n, limit))]


def manager(days: float, records: FakeRecords) -> tuple[SessionManager, Metrics]:
    metrics = Metrics(())
    settings = Settings(session_retention_days=days)
    deps = SimpleNamespace(settings=settings, records=records, metrics=metrics, replica="r1")
    return SessionManager(cast(Any, deps)), metrics


async def test_a_sweep_deletes_in_batches_counts_them_and_stops_at_a_short_batch() -> None:
    records = FakeRecords([100, 100, 3, 100])
    reaper, metrics = manager(30, records)
    assert await reaper.reap_once(NOW) == 203
    assert records.cutoffs == [NOW - timedelta(days=30)] * 3
    assert metrics.registry.get_sample_value("moorage_sessions_deleted_total", {"reason": "retention"}) == 203
    assert metrics.registry.get_sample_value("moorage_sessions_deleted_total", {"reason": "request"}) == 0


async def test_no_sweep_when_sessions_are_kept_forever() -> None:
    records = FakeRecords([5])
    reaper, _ = manager(0, records)
    assert await reaper.reap_once(NOW) == 0 and records.cutoffs == []


class FakeFiles:
    def __init__(self, expired: int) -> None:
        self.expired = expired
        self.asked: list[datetime] = []

    async def delete_expired(self, now: datetime) -> int:
        self.asked.append(now)
        return self.expired


async def test_the_sweep_deletes_expired_files_and_counts_them() -> None:
    metrics = Metrics(())
    files = FakeFiles(7)
    deps = SimpleNamespace(settings=Settings(), records=FakeRecords([]), metrics=metrics, replica="r1", files=files)
    sweeper = SessionManager(cast(Any, deps))
    assert await sweeper.expire_files(NOW) == 7 and files.asked == [NOW]
    assert metrics.registry.get_sample_value("moorage_files_deleted_total", {"reason": "expired"}) == 7
    assert metrics.registry.get_sample_value("moorage_files_deleted_total", {"reason": "request"}) == 0
    deps.files = None  # no files store: nothing to sweep
    assert await sweeper.expire_files(NOW) == 0
