"""The Grafana dashboard and Prometheus alert rules in deploy/observability/
against the metrics the service really exports (moorage.metrics)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from moorage.app import create_app
from moorage.http_api import api_routes
from moorage.metrics import Metrics
from moorage.settings import Settings
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

OBSERVABILITY = Path(__file__).resolve().parents[2] / "deploy" / "observability"
DASHBOARD = OBSERVABILITY / "grafana-dashboard.json"
ALERTS = OBSERVABILITY / "alerts.yaml"
METRIC_NAME = re.compile(r"\bmoorage_[a-z_]+")
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
SEVERITIES = {"critical", "warning", "info"}
# Grafana's own variables, replaced by values Prometheus accepts when the
# dashboard's expressions are handed to promtool.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$backend": ".*"}

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool is not installed (apt-get install prometheus)"
)


def started_metrics() -> Metrics:
    """Metrics as a started service has them: the HTTP API's series zeroed from the app's real routes."""
    metrics = Metrics(("claude-opus",))
    metrics.zero_http(api_routes(create_app(Settings()).routes))
    return metrics


def exported_samples() -> set[str]:
    """Every sample name in the exposition of a freshly started service's Metrics."""
    text = generate_latest(started_metrics().registry).decode()
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def all_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Panels, including those nested in collapsed rows."""
    found: list[dict[str, Any]] = []
    for panel in panels:
        found.append(panel)
        found.extend(all_panels(panel.get("panels", [])))
    return found


def dashboard_expressions() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    board = dashboard()
    found: list[tuple[str, str]] = []
    for panel in all_panels(board["panels"]):
        for target in panel.get("targets", []):
            found.append((f"panel {panel['id']} {panel['title']!r} target {target['refId']}", target["expr"]))
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            found.append((f"variable {variable['name']}", query["query"] if isinstance(query, dict) else query))
            found.append((f"variable {variable['name']} definition", variable["definition"]))
    return found


def rule_groups() -> list[dict[str, Any]]:
    loaded: dict[str, Any] = yaml.safe_load(ALERTS.read_text())
    groups: list[dict[str, Any]] = loaded["groups"]
    return groups


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group["rules"] if "alert" in rule]


def unknown_metrics(expressions: list[tuple[str, str]], exported: set[str]) -> list[str]:
    return [
        f"{where}: {name}" for where, expr in expressions for name in METRIC_NAME.findall(expr) if name not in exported
    ]


def test_exposition_has_the_sample_names_the_assets_rely_on() -> None:
    """The exposition parsed here names histogram, counter and collector samples as PromQL sees them."""
    exported = exported_samples()
    assert {
        "moorage_sessions_active",
        "moorage_turn_duration_seconds_bucket",
        "moorage_turn_duration_seconds_count",
        "moorage_turns_total",
        "moorage_sandbox_seconds_total",
    } <= exported


def test_http_request_series_exist_from_start_for_every_api_route() -> None:
    """moorage_http_requests_total has a zero for each method and route template of the HTTP API
    (never a path with a real id), so the dashboard shows zeros, not gaps."""
    registry = started_metrics().registry
    for method, route in (("POST", "/v1/agents"), ("GET", "/v1/sessions/{session_id}/events/stream")):
        for status in ("2xx", "4xx", "5xx"):
            labels = {"method": method, "route": route, "status": status}
            assert registry.get_sample_value("moorage_http_requests_total", labels) == 0, labels
    assert registry.get_sample_value("moorage_sse_streams_active") == 0
    assert registry.get_sample_value("moorage_turns_queued") == 0
    assert registry.get_sample_value("moorage_approvals_pending", {"kind": "permission_request"}) == 0
    assert registry.get_sample_value("moorage_tenant_file_bytes", {"tenant": "_other"}) == 0


def test_dashboard_expressions_use_only_exported_metrics() -> None:
    """Every metric named in a dashboard query is one the service exports."""
    expressions = dashboard_expressions()
    assert len(expressions) > 20
    assert unknown_metrics(expressions, exported_samples()) == []


def test_alert_expressions_use_only_exported_metrics() -> None:
    """Every metric named in an alert expression is one the service exports."""
    expressions = [(str(rule["alert"]), str(rule["expr"])) for rule in alert_rules()]
    assert any(METRIC_NAME.search(expr) for _, expr in expressions)
    assert unknown_metrics(expressions, exported_samples()) == []


def test_every_exported_metric_is_on_the_dashboard() -> None:
    """Each metric family metrics.py defines is charted by at least one dashboard panel."""
    charted = {name for _, expr in dashboard_expressions() for name in METRIC_NAME.findall(expr)}
    families = {re.sub(r"_(bucket|count|sum|created)$", "", name) for name in exported_samples()}
    uncharted = {family for family in families if not any(name.startswith(family) for name in charted)}
    assert uncharted == set()


def test_every_alert_has_severity_summary_description_and_for() -> None:
    """Each alert carries a for duration, a known severity label, and summary and description annotations."""
    alerts = alert_rules()
    assert len(alerts) >= 6
    assert len({rule["alert"] for rule in alerts}) == len(alerts)
    for rule in alerts:
        assert DURATION.match(str(rule.get("for", ""))), rule["alert"]
        assert rule.get("labels", {}).get("severity") in SEVERITIES, rule["alert"]
        annotations = rule.get("annotations", {})
        assert str(annotations.get("summary", "")).strip(), rule["alert"]
        assert str(annotations.get("description", "")).strip(), rule["alert"]


def test_dashboard_panel_ids_are_unique() -> None:
    """No two dashboard panels (rows included) share an id."""
    ids = [panel["id"] for panel in all_panels(dashboard()["panels"])]
    assert len(ids) == len(set(ids))
    assert all(isinstance(panel_id, int) for panel_id in ids)


def test_dashboard_queries_the_templated_prometheus_datasource() -> None:
    """Panels and targets use the ${datasource} variable, and the backend variable lists moorage backends."""
    board = dashboard()
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["backend"]["definition"] == "label_values(moorage_sessions_active, backend)"
    templated = {"type": "prometheus", "uid": "${datasource}"}
    for panel in all_panels(board["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == templated, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == templated, panel["title"]


def test_histogram_quantiles_aggregate_buckets_by_le() -> None:
    """Every histogram_quantile reads _bucket series and keeps the le label through its sum."""
    expressions = dashboard_expressions() + [(str(rule["alert"]), str(rule["expr"])) for rule in alert_rules()]
    quantiles = [(where, expr) for where, expr in expressions if "histogram_quantile" in expr]
    assert quantiles
    for where, expr in quantiles:
        assert all(name.endswith("_bucket") for name in METRIC_NAME.findall(expr)), where
        assert re.search(r"by \([^)]*\ble\b[^)]*\)", expr), where


# -- with promtool: the expressions parse, and the alerts fire when they should.


def run_promtool(*args: str | Path) -> None:
    done = subprocess.run(["promtool", *map(str, args)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_promtool_accepts_the_alert_rules() -> None:
    """promtool check rules accepts alerts.yaml, annotation templates included."""
    run_promtool("check", "rules", ALERTS)


@needs_promtool
def test_dashboard_expressions_are_valid_promql(tmp_path: Path) -> None:
    """Every dashboard query parses as PromQL once Grafana's variables are filled in."""
    rules = []
    for n, (_, expr) in enumerate(dashboard_expressions()):
        if expr.startswith("label_values("):  # Grafana's variable function, not PromQL
            continue
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"dashboard:expression_{n}", "expr": expr})
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run_promtool("check", "rules", path)


MOORAGE = 'job="moorage", instance="a"'


def start_buckets(pool: str, values: dict[str, str]) -> list[dict[str, str]]:
    """promtool input series for one pool's moorage_sandbox_start_seconds buckets, by le."""
    labels = f'{MOORAGE}, backend="local", pool="{pool}"'
    return [
        {"series": f'moorage_sandbox_start_seconds_bucket{{{labels}, le="{le}"}}', "values": counts}
        for le, counts in values.items()
    ]


# promtool unit tests of every alert: each scenario feeds series shaped like
# the service's and says which alerts fire when. Annotations are stripped from
# the rules under test so their wording can change freely.
SCENARIOS: list[dict[str, Any]] = [
    {  # a session whose idle timer was lost: no client, no frame, sandbox still up
        "interval": "1m",
        "input_series": [
            {"series": f'moorage_sessions_active{{{MOORAGE}, backend="local"}}', "values": "1x90"},
            {"series": f'moorage_sessions_active{{{MOORAGE}, backend="docker"}}', "values": "0x90"},
            {"series": f"moorage_ws_connections_active{{{MOORAGE}}}", "values": "1x19 0x70"},
            {"series": f'moorage_ws_frames_total{{{MOORAGE}, direction="in"}}', "values": "0+5x19 95x70"},
            {"series": f'moorage_ws_frames_total{{{MOORAGE}, direction="out"}}', "values": "0+9x19 171x70"},
        ],
        "alert_rule_test": [
            {"eval_time": "40m", "alertname": "MoorageSessionsOutliveClients", "exp_alerts": []},
            {
                "eval_time": "60m",
                "alertname": "MoorageSessionsOutliveClients",
                "exp_alerts": [{"exp_labels": {"job": "moorage", "instance": "a", "severity": "warning"}}],
            },
        ],
    },
    {  # clients come and go between scrapes: frames flow, so the idle timer is doing its job
        "interval": "1m",
        "input_series": [
            {"series": f'moorage_sessions_active{{{MOORAGE}, backend="local"}}', "values": "1x90"},
            {"series": f"moorage_ws_connections_active{{{MOORAGE}}}", "values": "0x90"},
            {"series": f'moorage_ws_frames_total{{{MOORAGE}, direction="out"}}', "values": "0+2x90"},
        ],
        "alert_rule_test": [{"eval_time": "80m", "alertname": "MoorageSessionsOutliveClients", "exp_alerts": []}],
    },
    {  # 7 sandboxes for 3 sessions: the pool explains 2, 2 are unaccounted
        "interval": "1m",
        "input_series": [
            {"series": f'moorage_sandbox_seconds_total{{{MOORAGE}, backend="local"}}', "values": "0+420x90"},
            {"series": f'moorage_sessions_active{{{MOORAGE}, backend="local"}}', "values": "3x90"},
        ],
        "alert_rule_test": [
            {"eval_time": "20m", "alertname": "MoorageSandboxesUnaccounted", "exp_alerts": []},
            {
                "eval_time": "60m",
                "alertname": "MoorageSandboxesUnaccounted",
                "exp_alerts": [{"exp_labels": {"job": "moorage", "instance": "a", "severity": "warning"}}],
            },
        ],
    },
    {  # sandbox time with no session at all is the warm pool: no alert
        "interval": "1m",
        "input_series": [
            {"series": f'moorage_sandbox_seconds_total{{{MOORAGE}, backend="local"}}', "values": "0+120x90"},
            {"series": f'moorage_sessions_active{{{MOORAGE}, backend="local"}}', "values": "0x90"},
        ],
        "alert_rule_test": [{"eval_time": "80m", "alertname": "MoorageSandboxesUnaccounted", "exp_alerts": []}],
    },
    {  # cold starts take 3-5 s, warm ones under a second
        "interval": "1m",
        "input_series": [
            *start_buckets("cold", {"1": "0x30", "3": "0+1x30", "5": "0+20x30", "+Inf": "0+20x30"}),
            *start_buckets("warm", dict.fromkeys(("1", "3", "5", "+Inf"), "0+20x30")),
        ],
        "alert_rule_test": [
            {"eval_time": "5m", "alertname": "MoorageSandboxStartSlow", "exp_alerts": []},
            {
                "eval_time": "20m",
                "alertname": "MoorageSandboxStartSlow",
                "exp_alerts": [
                    {"exp_labels": {"job": "moorage", "backend": "local", "pool": "cold", "severity": "warning"}}
                ],
            },
        ],
    },
    {  # one sandbox crash a minute; start failures stay at zero
        "interval": "1m",
        "input_series": [
            {"series": f'moorage_errors_total{{{MOORAGE}, code="sandbox_crashed"}}', "values": "0+1x30"},
            {"series": f'moorage_errors_total{{{MOORAGE}, code="sandbox_start_failed"}}', "values": "0x30"},
            {"series": f'moorage_errors_total{{{MOORAGE}, code="queue_full"}}', "values": "0+10x30"},
        ],
        "alert_rule_test": [
            {
                "eval_time": "20m",
                "alertname": "MoorageSandboxFailures",
                "exp_alerts": [
                    {
                        "exp_labels": {
                            "job": "moorage",
                            "instance": "a",
                            "code": "sandbox_crashed",
                            "severity": "warning",
                        }
                    }
                ],
            },
        ],
    },
    {  # the database goes away at minute 10
        "interval": "1m",
        "input_series": [
            {"series": f"moorage_transcript_store_errors_total{{{MOORAGE}}}", "values": "0x10 0+3x20"},
            {"series": f'moorage_errors_total{{{MOORAGE}, code="store_unavailable"}}', "values": "0x10 0+1x20"},
            {"series": f"up{{{MOORAGE}}}", "values": "1x30"},
        ],
        "alert_rule_test": [
            {"eval_time": "9m", "alertname": "MoorageTranscriptStoreErrors", "exp_alerts": []},
            {"eval_time": "9m", "alertname": "MoorageStoreUnavailable", "exp_alerts": []},
            {
                "eval_time": "25m",
                "alertname": "MoorageTranscriptStoreErrors",
                "exp_alerts": [{"exp_labels": {"job": "moorage", "instance": "a", "severity": "critical"}}],
            },
            {
                "eval_time": "25m",
                "alertname": "MoorageStoreUnavailable",
                "exp_alerts": [{"exp_labels": {"job": "moorage", "instance": "a", "severity": "critical"}}],
            },
            {"eval_time": "25m", "alertname": "MoorageDown", "exp_alerts": []},
        ],
    },
    {  # the process stops answering scrapes at minute 5
        "interval": "1m",
        "input_series": [{"series": f"up{{{MOORAGE}}}", "values": "1x5 0x10"}],
        "alert_rule_test": [
            {
                "eval_time": "10m",
                "alertname": "MoorageDown",
                "exp_alerts": [{"exp_labels": {"job": "moorage", "instance": "a", "severity": "critical"}}],
            },
            {"eval_time": "10m", "alertname": "MoorageTargetMissing", "exp_alerts": []},
        ],
    },
    {  # no target at all
        "interval": "1m",
        "input_series": [{"series": f"up{{{MOORAGE.replace('moorage', 'other')}}}", "values": "1x20"}],
        "alert_rule_test": [
            {
                "eval_time": "15m",
                "alertname": "MoorageTargetMissing",
                "exp_alerts": [{"exp_labels": {"job": "moorage", "severity": "warning"}}],
            },
        ],
    },
    {  # 60 USD/hour metered by the proxy (the SDK's own figure is not added)
        "interval": "1m",
        "input_series": [
            {"series": f'moorage_cost_usd_total{{{MOORAGE}, model="claude-opus", source="proxy"}}', "values": "0+1x40"},
            {"series": f'moorage_cost_usd_total{{{MOORAGE}, model="claude-opus", source="sdk"}}', "values": "0+1x40"},
        ],
        "alert_rule_test": [
            {"eval_time": "10m", "alertname": "MoorageCostBurnHigh", "exp_alerts": []},
            {
                "eval_time": "35m",
                "alertname": "MoorageCostBurnHigh",
                "exp_alerts": [{"exp_labels": {"job": "moorage", "severity": "warning"}}],
            },
        ],
    },
    {  # 30 USD/hour: under the threshold
        "interval": "1m",
        "input_series": [
            {"series": f'moorage_cost_usd_total{{{MOORAGE}, model="other", source="proxy"}}', "values": "0+0.5x40"},
        ],
        "alert_rule_test": [{"eval_time": "35m", "alertname": "MoorageCostBurnHigh", "exp_alerts": []}],
    },
]


def test_every_alert_has_a_firing_scenario() -> None:
    """Each alert in alerts.yaml is shown firing by at least one promtool scenario here."""
    fired = {case["alertname"] for scenario in SCENARIOS for case in scenario["alert_rule_test"] if case["exp_alerts"]}
    assert fired == {rule["alert"] for rule in alert_rules()}


@needs_promtool
def test_alerts_fire_in_their_scenarios_and_stay_quiet_otherwise(tmp_path: Path) -> None:
    """promtool test rules: each alert fires on the leak, outage or spike it describes and not on normal traffic."""
    groups = rule_groups()
    for group in groups:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    tests = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": SCENARIOS}
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))
    run_promtool("test", "rules", tmp_path / "tests.yaml")
