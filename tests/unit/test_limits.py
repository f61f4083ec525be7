"""Token buckets, with time passed in."""

from __future__ import annotations

from moorage.limits import TenantBuckets, TokenBucket


def test_bucket_allows_a_burst_then_the_rate() -> None:
    """A full bucket admits its burst at once, then one token per 1/rate seconds."""
    bucket = TokenBucket(rate=2.0, burst=3)
    assert [bucket.take(10.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(10.0) == 0.5
    assert bucket.take(10.5) == 0.0
    assert bucket.take(10.5) > 0


def test_bucket_never_holds_more_than_its_burst() -> None:
    """Idle time refills only up to the burst."""
    bucket = TokenBucket(rate=1.0, burst=2)
    bucket.take(0.0)
    assert [bucket.take(1000.0) for _ in range(3)][-1] > 0


def test_tenants_have_separate_buckets() -> None:
    """One tenant spending its turns does not slow another."""
    buckets = TenantBuckets(rate=1.0, burst=1)
    assert buckets.take("acme", 0.0) == 0.0
    assert buckets.take("acme", 0.0) > 0
    assert buckets.take("globex", 0.0) == 0.0
