"""Rate limits, without I/O: token buckets keyed by connection and tenant.

Time is passed in, so the arithmetic is unit-tested without sleeping.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst``."""

    rate: float
    burst: float
    tokens: float = -1.0
    stamp: float = 0.0

    def take(self, now: float, cost: float = 1.0) -> float:
        """0.0 when allowed (a token is spent); else seconds until it would be."""
        if self.tokens < 0:
            self.tokens, self.stamp = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        return (cost - self.tokens) / self.rate if self.rate > 0 else float("inf")


@dataclass
class TenantBuckets:
    """One bucket per tenant (tenants are few and configured)."""

    rate: float
    burst: float
    buckets: dict[str, TokenBucket] = field(default_factory=dict)

    def take(self, tenant: str, now: float) -> float:
        bucket = self.buckets.setdefault(tenant, TokenBucket(self.rate, self.burst))
        return bucket.take(now)
