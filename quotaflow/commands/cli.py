"""`quotaflow`: one command, a verb per component and per operator task.

Every verb reads its configuration from `QUOTAFLOW_*` environment variables (see the
README's table); flags override the few values that differ between processes.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from edge import cli as edge_cli
from edge.settings import EdgeSettings
from quotaflow.commands.ops import cli as ops_cli
from quotaflow.commands.ops import notifications as notifications_cli
from quotaflow.commands.tenants import cli as tenants_cli
from quotaflow.exceptions import ConfigurationError
from quotaflow.logs import logging_config, setup_logging
from quotaflow.registry import TenantRegistry
from quotaflow.runner import run_until_signalled
from quotaflow.settings import (
    AdminSettings,
    CommonSettings,
    IngressSettings,
    KafkaGroup,
    NotifierSettings,
    PusherSettings,
    TenantsGroup,
    WorkerSettings,
)
from quotaflow.topics import ensure_topics

# The settings type each component's verb builds: the groups that process reads and no
# other (README, Configuration: the "read by" column is derived from these). The operator
# commands read `quotaflow.settings.Settings`, every group but the edge node's own.
COMPONENT_SETTINGS: dict[str, type[CommonSettings]] = {
    "ingress": IngressSettings,
    "worker": WorkerSettings,
    "push": PusherSettings,
    "edge": EdgeSettings,
    "notifier": NotifierSettings,
    "admin": AdminSettings,
}

S = TypeVar("S", bound=CommonSettings)
T = TypeVar("T", bound=TenantsGroup)


def _settings(kind: type[S], **overrides: Any) -> S:
    """The verb's own settings type (each process reads only its groups), flags first."""
    values = {k: v for k, v in overrides.items() if v is not None}
    return kind(**values)


async def _with_registry(
    settings: T,
    stop: asyncio.Event,
    main: Callable[[T, TenantRegistry, asyncio.Event], Awaitable[None]],
    *,
    routing: bool = False,
) -> None:
    """Runs `main` with the tenant registry (file or topic), stopping it afterwards;
    `routing`: without the keyring (tenants without their secrets)."""
    from quotaflow.tenants.running import open_registry

    await ensure_topics(settings)
    registry = await open_registry(settings, routing=routing)
    try:
        await main(settings, registry, stop)
    finally:
        await registry.stop()


class _Main(click.Group):
    """Turns a deployment mistake (`ConfigurationError`) into its one-line reason, exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigurationError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="quotaflow")
def main() -> None:
    """quotaflow: Stripe billing turned into live API quotas at the edge.

    Configuration comes from QUOTAFLOW_* environment variables; see the README.
    """


def _ingress_worker(port: int | None, reuse_port: bool, index: int = 0) -> None:
    """One ingress process (a child of `run_workers`, or the only one)."""
    from functools import partial

    from ingress.server import serve

    settings = _settings(IngressSettings, ingress_port=port)
    setup_logging(settings.log_level)
    main = partial(serve, reuse_port=reuse_port)
    run_until_signalled(lambda stop: _with_registry(settings, stop, main))


@main.command()
@click.option("--port", type=int, help="Listen port (QUOTAFLOW_INGRESS_PORT).")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Processes serving the port together through SO_REUSEPORT (default: one per "
    "core this process may use). Budgets are held per process; /metrics sums all of them.",
)
def ingress(port: int | None, workers: int | None) -> None:
    """Run the webhook ingress: verify Stripe webhooks, publish them durably to Kafka.

    With several workers a SIGTERM or SIGINT stops them all gracefully; if one dies,
    the others are stopped and the command exits non-zero.
    """
    from functools import partial

    from quotaflow.commands.workers import default_workers, run_workers

    count = workers or default_workers()
    if count == 1:
        _ingress_worker(port, False)
        return
    from ingress.shared_trust import TRUST_TABLE_ENV, SharedTrust

    settings = _settings(IngressSettings, ingress_port=port)
    setup_logging(settings.log_level)
    # Once here, so a topic mismatch is one line from the command, not one per worker.
    asyncio.run(ensure_topics(settings))
    trust = SharedTrust.create()  # the workers share which senders verified (admission)
    os.environ[TRUST_TABLE_ENV] = str(trust.path)
    try:
        code = run_workers(
            partial(_ingress_worker, port, True),
            count,
            stop_timeout=settings.publish_timeout + 15.0,
        )
    finally:
        os.environ.pop(TRUST_TABLE_ENV, None)
        trust.close()
    sys.exit(code)


@main.command()
@click.option(
    "--web-port",
    type=int,
    default=None,
    help="Serve /healthz, /readyz (after table recovery) and /metrics on this port.",
)
def worker(web_port: int | None) -> None:
    """Run a stream worker: Stripe events into customer state and quota updates."""
    import faust

    from streams.app import create_app
    from streams.worker_web import WorkerMetrics, attach_worker_web

    settings = _settings(WorkerSettings)
    setup_logging(settings.log_level)
    asyncio.run(ensure_topics(settings))
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    metrics = WorkerMetrics()
    app = create_app(
        settings,
        stripe_reader=metrics.stripe_reader(settings),
        observe=metrics.observe,
        on_resume_reconcile=metrics.resume_reconciled,
    )
    if web_port is not None:
        attach_worker_web(app, settings, web_port, metrics=metrics)
    runner = faust.Worker(
        app,
        loglevel=settings.log_level,
        quiet=True,
        logging_config=logging_config(settings.log_level),
    )
    # The terminal spinner turns the root logger to DEBUG at WARNING and above: every
    # debug call in aiokafka and Faust then builds a record (~10% of the worker's CPU).
    runner.spinner = None
    runner.execute_from_commandline()


@main.command()
@click.option("--region", help="Region whose edge nodes this pusher serves (QUOTAFLOW_REGION).")
def push(region: str | None) -> None:
    """Run a regional pusher: quota updates to the edge nodes of one region."""
    from streams.pusher import run_pusher

    settings = _settings(PusherSettings, region=region)
    setup_logging(settings.log_level)
    # The pusher routes by id, status, mode and regions: it never holds the keyring.
    run_until_signalled(lambda stop: _with_registry(settings, stop, run_pusher, routing=True))


@main.command()
def notifier() -> None:
    """Run the notifier: tenant notifications to their endpoints (Standard Webhooks)."""
    from streams.notifier.service import run_notifier

    settings = _settings(NotifierSettings)
    setup_logging(settings.log_level)
    # It signs with the endpoints' secrets: it opens the registry with the keyring.
    run_until_signalled(lambda stop: _with_registry(settings, stop, run_notifier))


@main.command()
def admin() -> None:
    """Run the tenant admin HTTP API (bearer tokens from QUOTAFLOW_ADMIN_TOKENS) and the
    operator console under /console (sign in with one of those tokens)."""
    from quotaflow.commands.console.server import serve_admin

    settings = _settings(AdminSettings)
    setup_logging(settings.log_level)
    asyncio.run(ensure_topics(settings))
    run_until_signalled(lambda stop: serve_admin(settings, stop))


# The edge sidecar's command is the slim distribution's `quotaflow-edge` (edge/cli.py):
# one definition, so both take the same options.
main.add_command(edge_cli.edge)
main.add_command(tenants_cli.tenants)
main.add_command(tenants_cli.keys)
main.add_command(notifications_cli.notifications)
for _command in ops_cli.COMMANDS:  # replay, deadletter, quota, reconcile, lag
    main.add_command(_command)


@main.group()
def kafka() -> None:
    """A local single-node Apache Kafka broker from Maven jars (for dev and tests)."""


def _local_kafka(directory: Path, port: int) -> Any:
    from quotaflow.commands.localkafka import LocalKafka

    return LocalKafka(directory, port=port)


_KAFKA_DIR = click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path),
    default=Path(".quotaflow/kafka"),
    show_default=True,
    help="Broker state directory.",
)
_KAFKA_PORT = click.option("--port", type=int, default=9092, show_default=True)


@kafka.command("fetch")
def kafka_fetch() -> None:
    """Resolve the broker jars from Maven Central into the cache (once)."""
    from quotaflow.commands.localkafka import fetch

    click.echo(fetch())


@kafka.command("start")
@_KAFKA_DIR
@_KAFKA_PORT
def kafka_start(directory: Path, port: int) -> None:
    """Start the broker in the background; prints the bootstrap address once it answers."""
    broker = _local_kafka(directory, port)
    if broker.running_pid() is not None:
        click.echo(broker.bootstrap)
        return
    broker.start()
    click.echo(broker.bootstrap)


@kafka.command("stop")
@_KAFKA_DIR
@_KAFKA_PORT
def kafka_stop(directory: Path, port: int) -> None:
    """Stop the broker that `kafka start` started (and nothing else)."""
    stopped = _local_kafka(directory, port).stop()
    click.echo("stopped" if stopped else "not running")


@kafka.command("status")
@_KAFKA_DIR
@_KAFKA_PORT
def kafka_status(directory: Path, port: int) -> None:
    """Say whether the local broker runs; exit 1 if not."""
    pid = _local_kafka(directory, port).running_pid()
    if pid is None:
        click.echo("not running")
        sys.exit(1)
    click.echo(f"running (pid {pid}) on 127.0.0.1:{port}")


@main.command("topics")
def topics_cmd() -> None:
    """Create every topic quotaflow owns and check the existing ones (partitions from
    QUOTAFLOW_PARTITIONS); exit 1 naming each topic that differs from the design."""
    created = asyncio.run(ensure_topics(_settings(KafkaGroup)))
    click.echo("\n".join(created) if created else "all topics exist")


@main.command()
@click.option("--regions", default="eu,us", show_default=True, help="Comma-separated regions.")
@click.option("--kafka-port", type=int, default=9092, show_default=True)
def dev(regions: str, kafka_port: int) -> None:
    """Run the whole pipeline locally: Kafka, ingress, worker, pushers and edge nodes."""
    from quotaflow.commands.dev import run_dev

    run_dev([r.strip() for r in regions.split(",") if r.strip()], kafka_port=kafka_port)


if __name__ == "__main__":
    main()
