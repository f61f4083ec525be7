"""Tenant spend shared through the database: totals add up across replicas and survive restarts."""

from __future__ import annotations

import pytest
from moorage.accounting import Accounting, Ledger
from moorage.metrics import Metrics
from moorage_session_store import Database, TenantSpend

# 10 cents an input token: 6 tokens cost 0.60 USD.
PRICES = {"claude-opus": {"input": 100_000.0, "output": 0.0, "cache_read": 0.0, "cache_creation": 0.0}}


async def test_amounts_add_up_per_tenant_and_day(db: Database) -> None:
    """Concurrent-style adds accumulate (an upsert, not an overwrite); days and tenants stay apart."""
    spend = TenantSpend(db)
    await spend.add("2026-11-22", {"acme": 0.25, "zeta": 1.0})
    await spend.add("2026-11-22", {"acme": 0.5})
    await spend.add("2026-11-21", {"acme": 9.0})
    assert await spend.day("2026-11-22") == {"acme": 0.75, "zeta": 1.0}
    assert await spend.day("2026-11-20") == {}


def replica(db: Database, budget: float) -> tuple[Accounting, Ledger]:
    """One replica's accounting with one live sandbox of tenant acme."""
    accounting = Accounting(Metrics(tuple(PRICES)), PRICES, None, budget)
    accounting.spend = TenantSpend(db)
    ledger = Ledger("acme")
    accounting.ledgers["sbx"] = ledger
    return accounting, ledger


async def test_a_tenant_budget_holds_across_replicas_and_restarts(db: Database) -> None:
    """Two replicas each under the daily budget are over it together; a restarted one still knows."""
    one, ledger_one = replica(db, budget=1.0)
    two, ledger_two = replica(db, budget=1.0)
    one.on_usage("sbx", "claude-opus-4", {"input_tokens": 6})
    two.on_usage("sbx", "claude-opus-4", {"input_tokens": 5})
    assert one.exhausted(ledger_one) is None and two.exhausted(ledger_two) is None
    await one.sync()
    await two.sync()
    await one.sync()
    assert one.exhausted(ledger_one) == "tenant" and two.exhausted(ledger_two) == "tenant"
    restarted, ledger = replica(db, budget=1.0)
    assert restarted.exhausted(ledger) is None  # nothing read yet
    await restarted.sync()
    assert restarted.tenant_today("acme") == pytest.approx(1.1)
    assert restarted.exhausted(ledger) == "tenant"
