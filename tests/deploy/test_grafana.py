"""The Grafana dashboard: well-formed, every query valid PromQL (checked by promtool), the
panels issue 6 asks for present, and the same JSON in the chart's ConfigMap."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.support import CHART, DEPLOY, run

DASHBOARD = DEPLOY / "grafana" / "quotaflow.json"

# Issue 6's list, each by a metric its panel must query.
REQUIRED = {
    "webhook latency": "quotaflow_ingress_webhook_seconds_bucket",
    "outcomes by reason": "quotaflow_ingress_webhooks_total",
    "produce latency": "quotaflow_ingress_publish_seconds_bucket",
    "consumer lag": "quotaflow_consumer_lag",
    "events processed": "quotaflow_worker_events_total",
    "dead letters": "quotaflow_deadletters_total",
    "stripe calls and 429s": "quotaflow_stripe_requests_total",
    "quota consumption": "edge_consume_decisions_total",
    "push latency per region": "quotaflow_push_latency_seconds_bucket",
    "edge state age": "quota_state_age_seconds",
    "cpu": "process_cpu_seconds_total",
    "memory": "process_resident_memory_bytes",
}

# Grafana variables, replaced by values Prometheus accepts.
_VARIABLES = {"$__rate_interval": "5m", "$__range": "1h", "$region": ".*"}


def _board() -> dict[str, Any]:
    board: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return board


def _panels() -> list[dict[str, Any]]:
    return [p for p in _board()["panels"] if p["type"] != "row"]


def test_panels_have_unique_ids_positions_and_queries() -> None:
    board = _board()
    assert board["uid"] == "quotaflow"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in _panels():
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys(), panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["description"], panel["title"]


def test_every_query_is_valid_promql(promtool: Path, tmp_path: Path) -> None:
    rules = []
    exprs = [(p["title"], t["expr"]) for p in _panels() for t in p["targets"]]
    exprs += [("annotation", a["expr"]) for a in _board()["annotations"]["list"]]
    for i, (_title, expr) in enumerate(exprs):
        for variable, value in _VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:query_{i}:check", "expr": expr})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run(promtool, "check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_panels_issue_6_asks_for_are_there() -> None:
    queries = " ".join(t["expr"] for p in _panels() for t in p["targets"])
    missing = [what for what, metric in REQUIRED.items() if metric not in queries]
    assert not missing


def test_push_latency_is_shown_per_region() -> None:
    panel = next(p for p in _panels() if p["title"].startswith("Push latency"))
    assert all("by (le, region)" in t["expr"] for t in panel["targets"])


def test_chart_ships_the_same_dashboard() -> None:
    assert (CHART / "files" / "quotaflow.json").read_bytes() == DASHBOARD.read_bytes()


def test_compose_grafana_provisioning_points_at_the_dashboard() -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    provider = yaml.safe_load((provisioning / "dashboards" / "quotaflow.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
