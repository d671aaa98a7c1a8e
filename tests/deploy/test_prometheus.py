"""The alert rules and the compose Prometheus config, checked and unit-tested by promtool."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.deploy.support import CHART, DEPLOY, run

RULES = DEPLOY / "prometheus" / "rules.yml"

# What issue 6 asks the rules to watch, by the metric each alert must read.
REQUIRED_ALERTS = {
    "QuotaflowConsumerLagHigh": "quotaflow_consumer_lag",
    "QuotaflowDeadLettersGrowing": "quotaflow_deadletters_total",
    # Issue 20: a node whose usage spool started over empty.
    "QuotaflowEdgeSpoolReset": "quotaflow_usage_spool_resets_total",
    "QuotaflowSignatureFailuresSpiking": "bad_signature",
    "QuotaflowTenantSignatureFailures": "tenant_id",
    "QuotaflowEdgeStateStale": "quota_state_age_seconds",
    "QuotaflowStripeRateLimitStorm": 'outcome="rate_limited"',
    "QuotaflowIngressUnavailable": 'outcome="unavailable"',
}


def _alerts() -> dict[str, dict[str, object]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def test_rules_pass_promtool_check(promtool: Path) -> None:
    result = run(promtool, "check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_unit_tests_pass(promtool: Path) -> None:
    result = run(promtool, "test", "rules", "rules_test.yml", cwd=DEPLOY / "prometheus")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_unit_test_that_fires_it() -> None:
    tests = yaml.safe_load((DEPLOY / "prometheus" / "rules_test.yml").read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert fired == set(_alerts())


def test_the_alerts_the_issue_asks_for_exist_and_read_the_right_metric() -> None:
    alerts = _alerts()
    for name, needle in REQUIRED_ALERTS.items():
        assert needle in str(alerts[name]["expr"]), name


def test_every_alert_has_severity_component_summary_and_description() -> None:
    for name, rule in _alerts().items():
        labels, annotations = rule["labels"], rule["annotations"]
        assert isinstance(labels, dict)
        assert isinstance(annotations, dict)
        assert labels["severity"] in {"warning", "critical"}, name
        assert labels["component"], name
        assert annotations["summary"], name
        assert annotations["description"], name


def test_chart_ships_the_same_rules() -> None:
    assert (CHART / "files" / "rules.yml").read_bytes() == RULES.read_bytes()


def test_compose_prometheus_config_is_valid_and_loads_the_rules(promtool: Path) -> None:
    config = DEPLOY / "prometheus" / "prometheus.yml"
    result = run(promtool, "check", "config", config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rules found" in result.stdout + result.stderr
    assert yaml.safe_load(config.read_text())["rule_files"] == ["rules.yml"]
