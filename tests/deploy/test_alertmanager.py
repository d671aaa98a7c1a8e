"""The Alertmanager example: valid for amtool, and routing by severity to Slack and Telegram."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy.support import DEPLOY, run

CONFIG = DEPLOY / "alertmanager" / "alertmanager.yml"


def test_config_is_valid(amtool: Path) -> None:
    result = run(amtool, "check-config", CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("labels", "receivers"),
    [
        (
            ["severity=critical", "alertname=QuotaflowIngressUnavailable"],
            "telegram-oncall,slack-incidents",
        ),
        (["severity=warning", "alertname=QuotaflowDeadLettersGrowing"], "slack-alerts"),
        (["alertname=SomethingUnlabelled"], "slack-alerts"),
    ],
)
def test_alerts_route_by_severity(amtool: Path, labels: list[str], receivers: str) -> None:
    result = run(
        amtool,
        "config",
        "routes",
        "test",
        f"--config.file={CONFIG}",
        f"--verify.receivers={receivers}",
        *labels,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_secrets_are_read_from_files_not_written_inline() -> None:
    text = CONFIG.read_text()
    assert "slack_api_url_file:" in text
    assert "hooks.slack.com" not in text
