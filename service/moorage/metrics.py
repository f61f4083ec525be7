"""Every Prometheus metric the service exports, defined once.

Names carry base units and ``_total`` on counters; labels come from small
fixed sets (never a session or user id), and every labelled series is created
at start so dashboards show zeros instead of gaps. One exception, bounded on
purpose: ``moorage_tenant_file_bytes`` has a ``tenant`` label (tenant names are
the operator's: API keys and issued tokens), for the ``TENANT_SERIES`` largest
tenants only, the rest summed as ``_other``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .errors import Code

BACKENDS = ("local", "docker", "kubernetes")
POOL = ("started", "warm", "cold")  # a started agent claimed, a loaded sandbox, none
WARM_CLAIMS = ("hit", "miss")
WARM_STARTS = ("ok", "failed")
WARM_EVICTIONS = ("idle", "surplus", "dead")
PACKAGE_BUILDS = ("ok", "failed")
TURN_OUTCOMES = ("success", "error_max_turns", "error_max_budget_usd", "error_during_execution", "other")
TOKEN_KINDS = ("input", "output", "cache_read", "cache_creation")
COST_SOURCES = ("proxy", "sdk")
DIRECTIONS = ("in", "out")
REHYDRATION_OUTCOMES = ("ok", "failed")
OUTPUT_OUTCOMES = ("stored", "too_large", "not_stored")
BUDGET_SCOPES = ("session", "tenant")
DELETE_REASONS = ("retention", "request")  # the reaper; DELETE /v1/sessions/{id}
FILE_DELETE_REASONS = ("expired", "request")  # the sweep; DELETE /v1/files/{id}
# What the start-up sweep removes (sweep.KINDS).
VAULT_OUTCOMES = ("forwarded", "refused", "failed")  # vault_proxy.McpProxy
SWEPT_KINDS = ("workspace", "probe", "mount", "cgroup", "socket_dir", "uid_lock")
# What one webhook delivery attempt came to (webhook_delivery.py).
WEBHOOK_OUTCOMES = ("delivered", "retrying", "failed", "refused")
WEBHOOK_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
OTHER_MODEL = "other"
# HTTP API answers by class (http_api.endpoint); routes are the app's own path templates.
HTTP_STATUS_CLASSES = ("2xx", "4xx", "5xx")
# What a live session's turn waits on a client for (pending.Request.kind).
APPROVAL_KINDS = ("permission_request", "custom_tool_use")
TENANT_SERIES = 20  # tenants with a moorage_tenant_file_bytes series of their own
OTHER_TENANTS = "_other"  # the rest, summed (no tenant can be named so: auth.TENANT_RE)
_CODES = frozenset(str(code) for code in Code)

START_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60)
IDLE_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600)
BUILD_BUCKETS = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
TURN_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)


class SandboxTime(Collector):
    """``moorage_sandbox_seconds_total``: sandbox wall time, the unit hosted
    code execution bills by; live sandboxes count up to the scrape."""

    def __init__(self) -> None:
        self.finished: dict[str, float] = dict.fromkeys(BACKENDS, 0.0)
        self.live: dict[str, tuple[str, float]] = {}  # sandbox id -> (backend, started)

    def started(self, sandbox_id: str, backend: str) -> None:
        self.live[sandbox_id] = (backend, time.monotonic())

    def stopped(self, sandbox_id: str) -> None:
        entry = self.live.pop(sandbox_id, None)
        if entry is not None:
            self.finished[entry[0]] += time.monotonic() - entry[1]

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "moorage_sandbox_seconds",
            "Wall-clock seconds sandboxes have run (billable container time).",
            labels=["backend"],
        )
        now = time.monotonic()
        totals = dict(self.finished)
        for backend, started in self.live.values():
            totals[backend] = totals.get(backend, 0.0) + now - started
        for backend, seconds in totals.items():
            family.add_metric([backend], seconds)
        yield family


# What one live session waits with: user messages queued behind its running turn, and the kinds
# of the requests (approvals, client tools) it waits on a client for.
Waits = tuple[int, Iterable[str]]


class SessionWaits(Collector):
    """``moorage_turns_queued`` and ``moorage_approvals_pending``: read from the live sessions at
    scrape time (``source``, set by the session manager), so no count can drift from the truth."""

    def __init__(self) -> None:
        self.source: Callable[[], Iterable[Waits]] = lambda: ()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        queued = 0
        pending = dict.fromkeys(APPROVAL_KINDS, 0)
        for depth, kinds in self.source():
            queued += depth
            for kind in kinds:
                if kind in pending:
                    pending[kind] += 1
        yield GaugeMetricFamily(
            "moorage_turns_queued", "User messages waiting behind a running turn, in live sessions.", value=queued
        )
        family = GaugeMetricFamily(
            "moorage_approvals_pending",
            "Requests live sessions wait on a client for: tool approvals and client-executed custom tools.",
            labels=["kind"],
        )
        for kind, count in pending.items():
            family.add_metric([kind], count)
        yield family


def top_tenants(usage: dict[str, int], keep: int = TENANT_SERIES) -> dict[str, int]:
    """The ``keep`` largest tenants by bytes (ties by name), the rest summed as ``_other`` (always
    there, 0 when nobody else stores anything): a bounded set of series however many tenants."""
    ranked = sorted(usage.items(), key=lambda item: (-item[1], item[0]))
    shown = dict(ranked[:keep])
    shown[OTHER_TENANTS] = sum(used for _, used in ranked[keep:])
    return shown


class TenantFileBytes(Collector):
    """``moorage_tenant_file_bytes``: bytes of Files API files each tenant stores (uploads in
    flight included), from the database: refreshed whole by the file janitor, per tenant after
    this replica's uploads and deletions. Every replica exports the same figures (use ``max``)."""

    def __init__(self) -> None:
        self.usage: dict[str, int] = {}

    def replace(self, usage: dict[str, int]) -> None:
        self.usage = {tenant: used for tenant, used in usage.items() if used > 0}

    def set(self, tenant: str, used: int) -> None:
        if used > 0:
            self.usage[tenant] = used
        else:
            self.usage.pop(tenant, None)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "moorage_tenant_file_bytes",
            f"Bytes of files (Files API) stored per tenant: the {TENANT_SERIES} largest, the rest as {OTHER_TENANTS}.",
            labels=["tenant"],
        )
        for tenant, used in top_tenants(self.usage).items():
            family.add_metric([tenant], used)
        yield family


class Metrics:
    def __init__(self, models: tuple[str, ...]) -> None:
        self.registry = CollectorRegistry()
        self.models = (*models, OTHER_MODEL)
        r = self.registry
        self.sessions_active = Gauge(
            "moorage_sessions_active", "Sessions with a running sandbox.", ["backend"], registry=r
        )
        self.ws_connections_active = Gauge("moorage_ws_connections_active", "Open client WebSockets.", registry=r)
        self.sandbox_start_seconds = Histogram(
            "moorage_sandbox_start_seconds",
            "From taking a sandbox to its agent being ready.",
            ["backend", "pool"],
            buckets=START_BUCKETS,
            registry=r,
        )
        self.warm_agents = Gauge(
            "moorage_warm_agents", "Started agents ready in the warm pool (CLI running, unclaimed).", registry=r
        )
        self.warm_agents_limit = Gauge(
            "moorage_warm_agents_limit",
            "Started agents the warm pool may keep now: MOORAGE_WARM_AGENTS, or fewer if that many would not "
            "fit in MOORAGE_WARM_AGENTS_MEMORY_BYTES at what one was measured to hold.",
            registry=r,
        )
        self.warm_agent_claims = Counter(
            "moorage_warm_agent_claims_total",
            "New sessions that found a started agent of their spec (hit) or not (miss; vault sessions not counted).",
            ["result"],
            registry=r,
        )
        self.warm_agent_starts = Counter(
            "moorage_warm_agent_starts_total",
            "Started agents the pool started (refills), by outcome.",
            ["outcome"],
            registry=r,
        )
        self.warm_agent_evictions = Counter(
            "moorage_warm_agent_evictions_total",
            "Started agents let go unclaimed: their spec idle, over its share, or dead.",
            ["reason"],
            registry=r,
        )
        # Environment packages (packages.py): each build of a layer, and what the built ones hold.
        self.package_builds = Counter(
            "moorage_package_builds_total", "Environment package layers built, by outcome.", ["outcome"], registry=r
        )
        self.package_build_seconds = Histogram(
            "moorage_package_build_seconds",
            "How long building one environment's packages layer took (successful builds).",
            buckets=BUILD_BUCKETS,
            registry=r,
        )
        self.package_cache_bytes = Gauge(
            "moorage_package_cache_bytes", "Bytes the built environment package layers on this host hold.", registry=r
        )
        self.sandbox_stop_seconds = Histogram(
            "moorage_sandbox_stop_seconds",
            "Staged sandbox stop duration.",
            ["backend"],
            buckets=START_BUCKETS,
            registry=r,
        )
        self.sandbox_idle_timeouts = Counter(
            "moorage_sandbox_idle_timeouts_total", "Sessions suspended after the idle timeout.", ["backend"], registry=r
        )
        self.session_idle_seconds = Histogram(
            "moorage_session_idle_seconds",
            "How long sessions sat idle (no client, no turn) before activity or suspension.",
            buckets=IDLE_BUCKETS,
            registry=r,
        )
        self.turns = Counter("moorage_turns_total", "Finished turns by outcome.", ["outcome"], registry=r)
        self.turn_seconds = Histogram(
            "moorage_turn_duration_seconds", "User turn wall time.", ["outcome"], buckets=TURN_BUCKETS, registry=r
        )
        self.max_turns_exceeded = Counter(
            "moorage_max_turns_exceeded_total", "Turns stopped at the max-turns limit.", registry=r
        )
        self.budget_exceeded = Counter(
            "moorage_budget_exceeded_total", "Turns ended or refused because a budget was spent.", ["scope"], registry=r
        )
        self.cost_usd = Counter("moorage_cost_usd_total", "Model spend in USD.", ["model", "source"], registry=r)
        self.cost_discrepancy_usd = Counter(
            "moorage_cost_discrepancy_usd_total", "Sum of |SDK-reported - proxy-metered| cost per turn.", registry=r
        )
        self.tokens = Counter(
            "moorage_tokens_total", "Tokens metered by the model proxy.", ["model", "kind"], registry=r
        )
        self.rehydrations = Counter(
            "moorage_rehydrations_total", "Suspended sessions brought back.", ["outcome"], registry=r
        )
        self.outputs = Counter(
            "moorage_session_outputs_total", "Files found in sandboxes' outputs/, by outcome.", ["outcome"], registry=r
        )
        self.frames = Counter("moorage_ws_frames_total", "Client frames by direction.", ["direction"], registry=r)
        self.errors = Counter("moorage_errors_total", "Error frames sent to clients, by code.", ["code"], registry=r)
        self.store_errors = Counter(
            "moorage_transcript_store_errors_total", "Failed transcript writes (retried until they land).", registry=r
        )
        self.egress_connections = Counter(
            "moorage_egress_connections_total",
            "Tunnel CONNECTs from sandboxes (their session's egress policy), by verdict.",
            ["verdict"],
            registry=r,
        )
        self.vault_requests = Counter(
            "moorage_vault_requests_total",
            "Requests from sandboxes that a vault credential is for (MCP requests through the model proxy, "
            "HTTPS requests the egress tunnel puts an environment secret into): sent on with it (forwarded), "
            "refused (no grant, egress policy, address, revoked, too large, credentials unreadable) or "
            "undeliverable (failed).",
            ["outcome"],
            registry=r,
        )
        self.sessions_deleted = Counter(
            "moorage_sessions_deleted_total",
            "Sessions deleted with everything they stored, by reason (retention reaper, client request).",
            ["reason"],
            registry=r,
        )
        self.files_deleted = Counter(
            "moorage_files_deleted_total",
            "Files (Files API) deleted with their bytes, by reason (expiry sweep, client request).",
            ["reason"],
            registry=r,
        )
        self.file_objects_deleted = Counter(
            "moorage_file_objects_deleted_total",
            "Objects of deleted files removed from the object store, by way (outbox drain, orphan sweep).",
            ["way"],
            registry=r,
        )
        self.file_bytes = Counter(
            "moorage_file_bytes_total",
            "Bytes of files stored by uploads (in) and served by downloads (out).",
            ["direction"],
            registry=r,
        )
        self.state_swept = Counter(
            "moorage_state_swept_total",
            "What the start-up sweep removed from the state dir that a crashed run left, by kind.",
            ["kind"],
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "moorage_webhook_deliveries_total",
            "Webhook delivery attempts by outcome (delivered; retrying, or failed for good, after a non-2xx "
            "or no answer; refused: the target's address broke the SSRF rules at send time).",
            ["outcome"],
            registry=r,
        )
        self.webhook_attempt_seconds = Histogram(
            "moorage_webhook_attempt_seconds",
            "Wall time of one webhook delivery attempt (connect, send, status).",
            buckets=WEBHOOK_BUCKETS,
            registry=r,
        )
        self.webhook_outbox_depth = Gauge(
            "moorage_webhook_outbox_depth", "Webhook deliveries pending (every tenant, every replica).", registry=r
        )
        self.http_requests = Counter(
            "moorage_http_requests_total",
            "HTTP API requests answered, by method, route (the path template) and status class.",
            ["method", "route", "status"],
            registry=r,
        )
        self.sse_streams_active = Gauge(
            "moorage_sse_streams_active", "Open server-sent event streams (GET …/events/stream).", registry=r
        )
        self.sandbox_time = SandboxTime()
        r.register(self.sandbox_time)
        self.session_waits = SessionWaits()
        r.register(self.session_waits)
        self.tenant_file_bytes = TenantFileBytes()
        r.register(self.tenant_file_bytes)
        self._zero()

    def _zero(self) -> None:
        for backend in BACKENDS:
            self.sessions_active.labels(backend)
            self.sandbox_idle_timeouts.labels(backend)
            self.sandbox_stop_seconds.labels(backend)
            for pool in POOL:
                self.sandbox_start_seconds.labels(backend, pool)
        for result in WARM_CLAIMS:
            self.warm_agent_claims.labels(result)
        for outcome in PACKAGE_BUILDS:
            self.package_builds.labels(outcome)
        for outcome in WARM_STARTS:
            self.warm_agent_starts.labels(outcome)
        for reason in WARM_EVICTIONS:
            self.warm_agent_evictions.labels(reason)
        for outcome in TURN_OUTCOMES:
            self.turns.labels(outcome)
            self.turn_seconds.labels(outcome)
        for model in self.models:
            for source in COST_SOURCES:
                self.cost_usd.labels(model, source)
            for kind in TOKEN_KINDS:
                self.tokens.labels(model, kind)
        for outcome in REHYDRATION_OUTCOMES:
            self.rehydrations.labels(outcome)
        for outcome in OUTPUT_OUTCOMES:
            self.outputs.labels(outcome)
        for direction in DIRECTIONS:
            self.frames.labels(direction)
        for code in Code:
            self.errors.labels(str(code))
        for scope in BUDGET_SCOPES:
            self.budget_exceeded.labels(scope)
        for verdict in ("allowed", "refused"):
            self.egress_connections.labels(verdict)
        for outcome in VAULT_OUTCOMES:
            self.vault_requests.labels(outcome)
        for reason in DELETE_REASONS:
            self.sessions_deleted.labels(reason)
        for kind in SWEPT_KINDS:
            self.state_swept.labels(kind)
        for reason in FILE_DELETE_REASONS:
            self.files_deleted.labels(reason)
        for direction in DIRECTIONS:
            self.file_bytes.labels(direction)
        for outcome in WEBHOOK_OUTCOMES:
            self.webhook_deliveries.labels(outcome)

    def zero_http(self, routes: Iterable[tuple[str, str]]) -> None:
        """Create the request series of every ``(method, route)`` the HTTP API serves (at start)."""
        for method, route in routes:
            for status in HTTP_STATUS_CLASSES:
                self.http_requests.labels(method, route, status)

    @staticmethod
    def status_class(status: int) -> str:
        """``2xx``, ``4xx``, ``5xx`` (and ``1xx``, ``3xx``): one of five labels whatever the code."""
        return f"{min(max(status // 100, 1), 5)}xx"

    def count_error(self, code: object) -> None:
        """Count one error frame sent to clients. Only the service's own
        codes are labels: a frame whose ``code`` is anything else (a runner
        can put any text there) is not counted, so nothing a sandbox sends
        can add a series to /metrics."""
        if isinstance(code, str) and code in _CODES:
            self.errors.labels(code).inc()

    def model_label(self, model: str) -> str:
        """A bounded label: the configured model family it belongs to, or 'other'."""
        if not isinstance(model, str):
            return OTHER_MODEL
        for known in self.models:
            if model.startswith(known):
                return known
        return OTHER_MODEL

    @staticmethod
    def turn_outcome(subtype: object) -> str:
        return subtype if isinstance(subtype, str) and subtype in TURN_OUTCOMES else "other"
