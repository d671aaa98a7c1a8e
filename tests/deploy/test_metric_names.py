"""Every metric the alert rules and the dashboard read is one a component exposes, or one
listed as pending with the component that owes it: a renamed metric cannot silently
empty a panel or disarm an alert."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.deploy.metrics_catalog import BUILTIN, PENDING, exposed, metric_names
from tests.deploy.support import DEPLOY


def _rule_exprs() -> list[str]:
    groups = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def _dashboard_exprs() -> list[str]:
    board = json.loads((DEPLOY / "grafana" / "quotaflow.json").read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in board["annotations"]["list"]]
    return exprs


def test_the_name_parser_finds_metrics_not_functions_or_labels() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, region) (rate(a_bucket{x=~"$r", y="b c"}[5m])))'
        " / on (region) sum(b_total) > 0.1 and c"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}


@pytest.mark.parametrize("source", ["rules", "dashboard"])
def test_every_metric_read_is_exposed_or_listed_as_pending(source: str) -> None:
    exprs = _rule_exprs() if source == "rules" else _dashboard_exprs()
    known = exposed() | BUILTIN | set(PENDING)
    unknown = {name for expr in exprs for name in metric_names(expr)} - known
    assert not unknown, f"{source} read metrics nobody exposes: {sorted(unknown)}"


def test_the_existing_component_metrics_are_used() -> None:
    used = {name for expr in _rule_exprs() + _dashboard_exprs() for name in metric_names(expr)}
    for name in (
        "quotaflow_ingress_webhooks_total",
        "quotaflow_ingress_webhook_seconds_bucket",
        "quotaflow_ingress_publish_seconds_bucket",
        "quota_state_age_seconds",
        "edge_consume_decisions_total",
        "quotaflow_push_latency_seconds_bucket",
        "quotaflow_push_node_up",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ):
        assert name in exposed(), name
        assert name in used, name
