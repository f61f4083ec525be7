"""The object file store's pure parts: where ``MOORAGE_FILE_STORE`` points (and what it refuses),
a file's key (one segment per tenant, whatever the tenant's characters, and back to its file id),
which listed objects the reconciliation sweep deletes, how an upload is cut into parts, and that
neither the store's repr nor the settings' print the secret."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from moorage.file_blobs import BlobJanitor, blob_store
from moorage.metrics import Metrics
from moorage.settings import Settings
from moorage_session_store import BlobLocation, S3Blobs, parse_location
from moorage_session_store.blobs import _regroup
from moorage_session_store.files import orphans
from pydantic import SecretStr, ValidationError


def test_a_location_is_a_bucket_and_a_prefix() -> None:
    assert parse_location("s3://bucket") == BlobLocation("bucket", "")
    assert parse_location("s3://bucket/") == BlobLocation("bucket", "")
    assert parse_location("s3://bucket/a/b/") == BlobLocation("bucket", "a/b/")
    for bad in ("bucket", "http://bucket/x", "s3://", "s3:///x", "s3://b?x=1", "/tmp/files"):
        with pytest.raises(ValueError, match="s3://bucket"):
            parse_location(bad)


def test_the_settings_refuse_a_bad_location_and_default_to_the_database() -> None:
    assert blob_store(Settings()) is None
    with pytest.raises(ValidationError, match="s3://bucket"):
        Settings(file_store="bucket/x")
    store = blob_store(Settings(file_store="s3://files/moorage", s3_secret_access_key=SecretStr("very-secret")))
    assert isinstance(store, S3Blobs) and store.location == BlobLocation("files", "moorage/")
    assert "very-secret" not in repr(store) and "very-secret" not in repr(
        Settings(s3_secret_access_key=SecretStr("very-secret"))
    )


@given(st.text(min_size=1, max_size=40), st.sampled_from(["", "p/", "a/b/"]))
def test_a_key_is_one_segment_per_tenant_and_names_its_file(tenant: str, prefix: str) -> None:
    store = S3Blobs(BlobLocation("b", prefix))
    key = store.key(tenant, "file_abc")
    assert key.startswith(prefix) and key[len(prefix) :].count("/") == 1
    assert store.file_id(key) == "file_abc"
    assert store.key(tenant + "/x", "file_abc") != key and store.key(tenant, "file_abd") != key


def test_keys_that_are_not_ours_name_no_file() -> None:
    store = S3Blobs(BlobLocation("b", "p/"))
    for key in ("p/README", "p/a/b/c", "other/t/file_x", "p//file_x", "p/t/", "p/a%2/file_x"):
        assert store.file_id(key) is None, key


def test_the_sweep_deletes_only_old_objects_without_a_row() -> None:
    now = datetime(2026, 12, 2, tzinfo=UTC)
    old, young = now - timedelta(hours=2), now - timedelta(minutes=5)
    listed = [("k1", "f1", old), ("k2", "f2", old), ("k3", "f3", young)]
    assert orphans(listed, {"f2"}, now - timedelta(hours=1)) == ["k1"]
    assert orphans(listed, set(), now) == ["k1", "k2", "k3"]
    assert orphans([], set(), now) == []


def regroup(sizes: list[int], part: int) -> list[int]:
    async def source() -> AsyncIterator[bytes]:
        for size in sizes:
            yield b"x" * size

    async def run() -> list[int]:
        return [len(p) async for p in _regroup(source(), part)]

    return asyncio.run(run())


@given(st.lists(st.integers(min_value=0, max_value=50), max_size=12), st.integers(min_value=1, max_value=20))
def test_an_upload_is_cut_into_whole_parts_and_a_shorter_last_one(sizes: list[int], part: int) -> None:
    got = regroup(sizes, part)
    total = sum(sizes)
    assert sum(got) == total and got  # every byte, at least one (possibly empty) piece
    assert all(size == part for size in got[:-1]) and 0 <= got[-1] <= part
    assert got[-1] < part or total % part == 0  # a shorter last piece only when bytes are left over
    assert got != [0] or total == 0


class FakeFiles:
    """What the janitor calls on ``Files``: the first drain fails like an outage."""

    def __init__(self, blobs: object | None) -> None:
        self.blobs = blobs
        self.drains = self.sweeps = self.counts = 0
        self.enough = asyncio.Event()  # three drains, and a sweep when there is a store

    def _check(self) -> None:
        if self.drains >= 3 and (self.blobs is None or self.sweeps >= 1):
            self.enough.set()

    async def drain_deletions(self) -> int:
        self.drains += 1
        self._check()
        if self.drains == 1:
            raise OSError("the object store is down")
        return 1

    async def sweep_orphans(self, now: datetime, grace: timedelta) -> int:
        assert grace == timedelta(seconds=60)
        self.sweeps += 1
        self._check()
        return 2

    async def bytes_by_tenant(self) -> dict[str, int]:
        self.counts += 1
        if self.counts == 1:
            raise OSError("the database is down")  # the first count fails: the drains go on
        return {"acme": 5, "globex": 0}


@pytest.mark.parametrize("with_store", [True, False])
async def test_the_janitor_keeps_draining_after_an_error_and_sweeps_only_an_object_store(with_store: bool) -> None:
    fake = FakeFiles(object() if with_store else None)
    settings = Settings(file_store_drain_s=0.01, file_store_sweep_s=0.05, file_store_orphan_grace_s=60)
    metrics = Metrics(())
    janitor = BlobJanitor(fake, settings, metrics)  # type: ignore[arg-type]
    janitor.start()
    try:
        await asyncio.wait_for(fake.enough.wait(), 10)
    finally:
        await janitor.close()
    assert fake.drains >= 3  # the failed round did not end the loop
    assert (fake.sweeps >= 1) == with_store
    drained = metrics.registry.get_sample_value("moorage_file_objects_deleted_total", {"way": "outbox"})
    assert drained is not None and drained >= 2
    assert fake.counts == 1  # at start; the next one is FILE_USAGE_S later


async def test_the_janitor_counts_each_tenants_file_bytes_at_start() -> None:
    """moorage_tenant_file_bytes comes from the database when the janitor starts (a tenant with
    nothing stored has no series)."""
    fake = FakeFiles(None)
    fake.counts = 1  # past the failing first count
    metrics = Metrics(())
    janitor = BlobJanitor(fake, Settings(file_store_drain_s=0.01), metrics)  # type: ignore[arg-type]
    janitor.start()
    try:
        await asyncio.wait_for(fake.enough.wait(), 10)
    finally:
        await janitor.close()
    assert metrics.registry.get_sample_value("moorage_tenant_file_bytes", {"tenant": "acme"}) == 5
    assert metrics.registry.get_sample_value("moorage_tenant_file_bytes", {"tenant": "globex"}) is None
    assert metrics.registry.get_sample_value("moorage_tenant_file_bytes", {"tenant": "_other"}) == 0
