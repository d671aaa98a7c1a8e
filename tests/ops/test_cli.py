"""The operator verbs through click: --help on each, tables and JSON on the real broker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import click
import orjson
import pytest
from click.testing import CliRunner

from quotaflow.commands.ops.cli import COMMANDS
from quotaflow.commands.ops.exceptions import BadSpec
from quotaflow.commands.ops.timespec import parse_duration, parse_position, parse_time
from quotaflow.settings import Settings
from quotaflow.topics import ensure_topics
from tests.kafkautil import produce
from tests.pipeline import PERIOD, stripe_record
from tests.tables.factories import BASIC, event, subscription

pytestmark = [pytest.mark.timeout(120)]


@click.group()
def ops() -> None:
    """The verbs as quotaflow/commands/cli.py registers them."""


for command in COMMANDS:
    ops.add_command(command)


def _env(settings: Settings) -> dict[str, str]:
    return {
        "QUOTAFLOW_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "QUOTAFLOW_TOPIC_PREFIX": settings.topic_prefix,
        "QUOTAFLOW_PARTITIONS": str(settings.partitions),
    }


@pytest.mark.parametrize(
    "args",
    [
        ["replay"],
        ["deadletter"],
        ["deadletter", "list"],
        ["deadletter", "show"],
        ["deadletter", "redrive"],
        ["quota"],
        ["quota", "show"],
        ["quota", "explain"],
        ["reconcile"],
        ["lag"],
    ],
)
def test_every_verb_has_help(args: list[str]) -> None:
    result = CliRunner().invoke(ops, [*args, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_positions_and_durations_parse_as_documented() -> None:
    assert parse_position("42").offset == 42
    assert parse_position("beginning").edge == "beginning"
    assert parse_position("@1767225600").at == 1_767_225_600
    assert parse_position("2026-01-01T00:00:00Z").at == 1_767_225_600
    assert parse_time("3d", now=1_000_000) == 1_000_000 - 3 * 86400
    assert parse_duration("15m") == 900
    with pytest.raises(BadSpec):
        parse_position("yesterday-ish")


@pytest.mark.kafka
def test_replay_dry_run_quota_show_and_lag_print_json(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory()
    asyncio.run(ensure_topics(settings))
    body = event(
        "customer.subscription.created",
        subscription("sub_1", "cus_1", "active", [(BASIC, 1)], period=PERIOD),
    )
    asyncio.run(
        produce(
            settings.kafka_bootstrap, settings.topics.stripe_events, [stripe_record("acme", body)]
        )
    )
    runner = CliRunner()
    env = _env(settings)
    replayed = runner.invoke(
        ops,
        [
            "replay",
            "--topic",
            "stripe.events",
            "--from",
            "1h",
            "--tenant",
            "acme",
            "--dry-run",
            "--json",
        ],
        env=env,
    )
    assert replayed.exit_code == 0, replayed.output
    assert orjson.loads(replayed.stdout)["selected"] == 1
    table = runner.invoke(
        ops, ["replay", "--topic", "stripe.events", "--from", "0", "--dry-run"], env=env
    )
    assert table.exit_code == 0
    assert "customer.subscription.created" in table.output

    missing = runner.invoke(ops, ["quota", "show", "acme", "cus_1"], env=env)
    assert missing.exit_code == 1
    assert "no quota for acme/cus_1" in missing.output
    assert runner.invoke(ops, ["lag", "--json"], env=env).exit_code == 0
    letters = runner.invoke(ops, ["deadletter", "list", "--json"], env=env)
    assert letters.exit_code == 0
    assert orjson.loads(letters.stdout) == []
    bad = runner.invoke(ops, ["replay", "--topic", "stripe.events", "--from", "soon"], env=env)
    assert bad.exit_code == 1
    assert "cannot read time" in bad.output
