"""Cost accounting and budgets, from the model proxy's own reading.

The proxy sees every model response a sandbox gets, so its figure is the
authoritative one (a sandbox cannot fake it). Tokens are priced with a
per-model table (USD per million tokens, overridable with
``MOORAGE_PRICES``); the SDK's own ``total_cost_usd`` is exported beside it,
with the discrepancy. Budgets are enforced at the proxy, before a request
leaves: per session (``MOORAGE_MAX_BUDGET_USD``, across rehydrations) and per
tenant per UTC day (``MOORAGE_TENANT_DAILY_BUDGET_USD``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from .errors import STORE_ERRORS, Code, ProtocolError
from .metrics import Metrics
from .seams import SpendStore

log = structlog.get_logger(__name__)

# The most a runner's cumulative ``total_cost_usd`` may say (for one CLI
# process); larger is not a real figure and is ignored.
MAX_RUNNER_USD = 1_000_000.0
SPEND_SYNC_S = 2.0  # how often tenant spend is shared between replicas

USAGE_KINDS = {
    "input_tokens": "input",
    "output_tokens": "output",
    "cache_read_input_tokens": "cache_read",
    "cache_creation_input_tokens": "cache_creation",
}

# USD per million tokens: input, output, cache read, cache write (5 min).
DEFAULT_PRICES: dict[str, dict[str, float]] = {
    "claude-opus": {"input": 5.0, "output": 25.0, "cache_read": 0.5, "cache_creation": 6.25},
    "claude-sonnet": {"input": 3.0, "output": 15.0, "cache_read": 0.3, "cache_creation": 3.75},
    "claude-haiku": {"input": 1.0, "output": 5.0, "cache_read": 0.1, "cache_creation": 1.25},
}


@dataclass
class Ledger:
    """One session's spend: earlier lives (from its record) plus this one."""

    tenant: str
    prior_usd: float = 0.0
    life_usd: float = 0.0
    turn_usd: float = 0.0
    refused: str | None = None  # the budget scope that refused a request this turn
    sdk_total_usd: float = 0.0  # the SDK's cumulative figure for this CLI process
    budget_usd: float | None = None  # the session's own budget (Managed Agents ``budget``), if it has one
    # Tokens the proxy metered since the last ``take_tokens`` (USAGE_KINDS keys).
    tokens: dict[str, int] = field(default_factory=dict)

    def take_tokens(self) -> dict[str, int]:
        tokens, self.tokens = self.tokens, {}
        return tokens

    @property
    def total_usd(self) -> float:
        return self.prior_usd + self.life_usd

    def settle_turn(self, result: dict[str, Any], metrics: Metrics) -> float:
        """Close a turn's books at its ``result``: export the SDK's own cost
        (a per-turn delta of its cumulative figure) beside the proxy's, and
        the discrepancy; return what the proxy metered for the turn.

        ``result`` comes from the runner, which may be hostile: its
        ``total_cost_usd`` is used only if it is a plausible amount
        (``runner_amount``), and only as far as it grew; anything else
        counts as no SDK cost this turn. Counters never see NaN, an
        infinity or a negative amount."""
        total = runner_amount(result.get("total_cost_usd"), MAX_RUNNER_USD)
        sdk_delta = 0.0
        if total is not None:
            sdk_delta = max(0.0, total - self.sdk_total_usd)
            self.sdk_total_usd = max(self.sdk_total_usd, total)
        models = result.get("modelUsage")
        model = next(iter(models), "") if isinstance(models, dict) and models else ""
        metrics.cost_usd.labels(metrics.model_label(model), "sdk").inc(sdk_delta)
        metered, self.turn_usd = self.turn_usd, 0.0
        metrics.cost_discrepancy_usd.inc(abs(sdk_delta - metered))
        return metered


def runner_amount(value: object, maximum: float) -> float | None:
    """A number a runner reported, if it is one we may count: an int or a
    float (not a bool), finite, between 0 and ``maximum``; else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        return None
    if not math.isfinite(number) or number < 0 or number > maximum:
        return None
    return number


def budget_error(scope: str) -> ProtocolError:
    what = "this session's budget" if scope == "session" else "the tenant's daily budget"
    return ProtocolError(f"{what} is spent: no more model requests", code=Code.BUDGET_EXCEEDED)


class Accounting:
    def __init__(
        self,
        metrics: Metrics,
        prices: dict[str, dict[str, float]],
        session_budget_usd: float | None,
        tenant_daily_budget_usd: float | None,
    ) -> None:
        self.metrics = metrics
        self.prices = prices
        self.session_budget_usd = session_budget_usd
        self.tenant_daily_budget_usd = tenant_daily_budget_usd
        self.ledgers: dict[str, Ledger] = {}  # by sandbox id
        # Tenant spend per UTC day. The database (``TenantSpend``) holds what
        # every replica spent; ``sync`` adds ours and reads the totals back.
        # A budget check sees the last totals read plus what this replica
        # metered since, so replicas overshoot by at most one sync period.
        self.spend: SpendStore | None = None  # set by the app
        self._pending: dict[tuple[str, str], float] = {}  # (day, tenant): metered here, not yet written
        self._inflight: dict[tuple[str, str], float] = {}  # being written now
        self._shared: tuple[str, dict[str, float]] = ("", {})  # (day, totals) as last read

    def price(self, model: str, usage: dict[str, int]) -> float:
        family = self.metrics.model_label(model)
        table = self.prices.get(family) or max(self.prices.values(), key=lambda p: p["output"])
        return sum(usage.get(key, 0) * table.get(kind, 0.0) for key, kind in USAGE_KINDS.items()) / 1_000_000

    def tenant_today(self, tenant: str) -> float:
        day = _today()
        shared_day, totals = self._shared
        shared = totals.get(tenant, 0.0) if shared_day == day else 0.0
        return shared + self._inflight.get((day, tenant), 0.0) + self._pending.get((day, tenant), 0.0)

    async def sync(self) -> None:
        """Write what this replica metered, read every replica's totals for
        today. Failures keep the amounts for the next try."""
        if self.spend is None:
            return
        self._inflight, self._pending = self._pending, {}
        try:
            by_day: dict[str, dict[str, float]] = {}
            for (day, tenant), usd in self._inflight.items():
                by_day.setdefault(day, {})[tenant] = usd
            for day, amounts in by_day.items():
                await self.spend.add(day, amounts)
            self._inflight = {}
            if self.tenant_daily_budget_usd is not None:
                day = _today()
                self._shared = (day, await self.spend.day(day))
        finally:
            for unwritten, usd in self._inflight.items():  # not written: try again next time
                self._pending[unwritten] = self._pending.get(unwritten, 0.0) + usd
            self._inflight = {}

    async def sync_forever(self, period_s: float = SPEND_SYNC_S) -> None:
        """``sync`` every ``period_s`` while the service runs (a database
        outage only delays it: the amounts wait in memory)."""
        while True:
            await asyncio.sleep(period_s)
            try:
                await self.sync()
            except STORE_ERRORS as exc:
                log.warning("tenant_spend_sync_failed", error=type(exc).__name__)

    def on_usage(self, sandbox_id: str, model: str, usage: dict[str, int]) -> None:
        """The proxy read one response's usage."""
        self._charge(self.ledgers.get(sandbox_id), model, usage)

    def charge(self, sandbox_id: str) -> Callable[[str, dict[str, int]], None]:
        """Where one model response's usage goes, bound when its request
        arrives: a response the proxy still drains after its session ended
        is charged to that session's ledger and tenant all the same."""
        ledger = self.ledgers.get(sandbox_id)
        return lambda model, usage: self._charge(ledger, model, usage)

    def _charge(self, ledger: Ledger | None, model: str, usage: dict[str, int]) -> None:
        label = self.metrics.model_label(model)
        for key, kind in USAGE_KINDS.items():
            if usage.get(key):
                self.metrics.tokens.labels(label, kind).inc(usage[key])
        cost = self.price(model, usage)
        self.metrics.cost_usd.labels(label, "proxy").inc(cost)
        if ledger is None:
            return
        ledger.life_usd += cost
        ledger.turn_usd += cost
        for key in USAGE_KINDS:
            if usage.get(key):
                ledger.tokens[key] = ledger.tokens.get(key, 0) + usage[key]
        day_tenant = (_today(), ledger.tenant)
        self._pending[day_tenant] = self._pending.get(day_tenant, 0.0) + cost

    def refusal(self, sandbox_id: str) -> str | None:
        """Why the next model request of this sandbox must be refused, if it must."""
        ledger = self.ledgers.get(sandbox_id)
        if ledger is None:
            return None
        scope = self.exhausted(ledger)
        if scope is not None:
            ledger.refused = scope
        return scope

    def exhausted(self, ledger: Ledger) -> str | None:
        if self.session_budget_usd is not None and ledger.total_usd >= self.session_budget_usd:
            return "session"
        if ledger.budget_usd is not None and ledger.total_usd >= ledger.budget_usd:
            return "session"
        if (
            self.tenant_daily_budget_usd is not None
            and self.tenant_today(ledger.tenant) >= self.tenant_daily_budget_usd
        ):
            return "tenant"
        return None


def _today() -> str:
    return dt.datetime.now(dt.UTC).date().isoformat()
