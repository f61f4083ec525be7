"""The operator's metrics without a service: what sessions wait on, files per tenant (bounded),
HTTP status classes and the route templates the request counter is zeroed with."""

from __future__ import annotations

from moorage.http_api import api_routes
from moorage.metrics import OTHER_TENANTS, TENANT_SERIES, Metrics, top_tenants
from moorage.pending import Pending
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_waits_are_read_from_the_live_sessions_at_each_scrape() -> None:
    """Queued messages are summed, pending requests counted by kind; unknown kinds add no series."""
    metrics = Metrics(())
    assert sample(metrics, "moorage_turns_queued") == 0
    live: list[tuple[int, list[str]]] = [(2, ["permission_request"]), (0, []), (1, ["custom_tool_use", "sneaky"])]
    metrics.session_waits.source = lambda: live
    assert sample(metrics, "moorage_turns_queued") == 3
    assert sample(metrics, "moorage_approvals_pending", kind="permission_request") == 1
    assert sample(metrics, "moorage_approvals_pending", kind="custom_tool_use") == 1
    assert sample(metrics, "moorage_approvals_pending", kind="sneaky") is None
    live.clear()  # the sessions ended: nothing to drift
    assert sample(metrics, "moorage_turns_queued") == 0
    assert sample(metrics, "moorage_approvals_pending", kind="permission_request") == 0


def test_pending_names_the_kind_of_each_request() -> None:
    assert Pending(60.0).kinds() == []


def test_file_bytes_keep_the_largest_tenants_and_sum_the_rest() -> None:
    """However many tenants store files, at most TENANT_SERIES + 1 series."""
    usage = {f"t{n:03}": n + 1 for n in range(100)}
    shown = top_tenants(usage)
    assert len(shown) == TENANT_SERIES + 1
    assert shown["t099"] == 100 and "t000" not in shown
    assert sum(shown.values()) == sum(usage.values())
    assert shown[OTHER_TENANTS] == sum(range(1, 81))
    assert top_tenants({"b": 5, "a": 5, "c": 1}, keep=2) == {"a": 5, "b": 5, OTHER_TENANTS: 1}  # ties by name
    assert top_tenants({}) == {OTHER_TENANTS: 0}


def test_file_bytes_per_tenant_follow_set_and_replace() -> None:
    metrics = Metrics(())
    gauge = metrics.tenant_file_bytes
    gauge.replace({"acme": 10, "globex": 0})
    assert sample(metrics, "moorage_tenant_file_bytes", tenant="acme") == 10
    assert sample(metrics, "moorage_tenant_file_bytes", tenant="globex") is None
    gauge.set("globex", 7)
    gauge.set("acme", 0)  # its last file went: its series goes
    assert sample(metrics, "moorage_tenant_file_bytes", tenant="globex") == 7
    assert sample(metrics, "moorage_tenant_file_bytes", tenant="acme") is None
    assert sample(metrics, "moorage_tenant_file_bytes", tenant=OTHER_TENANTS) == 0


def test_status_classes_are_five_labels_at_most() -> None:
    assert [Metrics.status_class(code) for code in (200, 201, 404, 409, 503, 599)] == [
        "2xx",
        "2xx",
        "4xx",
        "4xx",
        "5xx",
        "5xx",
    ]
    assert {Metrics.status_class(code) for code in range(0, 1000)} == {"1xx", "2xx", "3xx", "4xx", "5xx"}


def test_api_routes_are_the_v1_http_templates_without_head() -> None:
    async def nothing(request: object) -> Response:
        return Response()

    async def socket(ws: object) -> None:
        return None

    routes = [
        Route("/healthz", nothing),
        Route("/v1/agents", nothing, methods=["GET", "POST"]),
        Route("/v1/agents/{agent_id}", nothing, methods=["GET"]),
        WebSocketRoute("/v1/sessions", socket),
    ]
    assert api_routes(routes) == [("GET", "/v1/agents"), ("GET", "/v1/agents/{agent_id}"), ("POST", "/v1/agents")]
