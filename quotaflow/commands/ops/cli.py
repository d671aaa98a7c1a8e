"""Operator verbs: `replay`, `deadletter`, `quota`, `reconcile`, `lag`.

Registered on the `quotaflow` command (quotaflow/commands/cli.py) with `main.add_command(...)`.
Each reads `QUOTAFLOW_*` settings like every component, prints a table (or `--json`)
on stdout, a progress bar with an ETA on stderr during long reads, and exits non-zero
with a one-line message when it cannot do what it was asked.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import time
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

import click
import orjson

from quotaflow.commands.ops import deadletter as dl
from quotaflow.commands.ops.exceptions import OpsError, UnknownTenant
from quotaflow.commands.ops.progress import Progress
from quotaflow.commands.ops.timespec import parse_duration, parse_position, parse_time
from quotaflow.commands.tenants.audit import cli_actor
from quotaflow.settings import Settings
from quotaflow.tenants.exceptions import TenantsError
from tables.tenant import Tenant

P = ParamSpec("P")
T = TypeVar("T")

_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def _ops_errors(fn: Callable[P, T]) -> Callable[P, T]:
    """Operator mistakes and refusals end as one line on stderr and exit 1, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except (OpsError, TenantsError, TimeoutError) as exc:
            raise click.ClickException(str(exc) or type(exc).__name__) from None

    return wrapper


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _echo_json(doc: Any) -> None:
    click.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode())


def _table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    cells = [[str(h) for h in headers], *[["-" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def _tenant(settings: Settings, tenant_id: str) -> Tenant:
    from quotaflow.tenants.running import open_registry

    registry = await open_registry(settings)
    try:
        tenant = registry.get(tenant_id)
    finally:
        await registry.stop()
    if tenant is None:
        raise UnknownTenant(tenant_id)
    return tenant


# -- replay ---------------------------------------------------------------------------


@click.command()
@click.option(
    "--topic",
    "logical_topic",
    type=click.Choice(["stripe.events", "usage.events"]),
    required=True,
    help="Which input topic to re-feed.",
)
@click.option(
    "--from",
    "start",
    required=True,
    help="Offset (integer, every partition), time (ISO 8601, @UNIX, or 3d/2h/90m ago) "
    "or 'beginning'.",
)
@click.option("--to", "stop", help="Last offset (inclusive) or time (exclusive); default: now.")
@click.option("--tenant", help="Only this tenant (reads only its partition).")
@click.option("--type", "event_type", help="Only this Stripe event type (stripe.events).")
@click.option("--dry-run", is_flag=True, help="Count what would be replayed; send nothing.")
@click.option("--rate", type=click.FloatRange(min=0.1), help="At most N records per second.")
@_JSON
@_ops_errors
def replay(
    logical_topic: str,
    start: str,
    stop: str | None,
    tenant: str | None,
    event_type: str | None,
    dry_run: bool,
    rate: float | None,
    as_json: bool,
) -> None:
    """Re-feed the live pipeline with a slice of stripe.events or usage.events.

    Each record goes back to its own topic and partition with the same key, value and
    headers, plus qf-replay (this replay's id) and qf-replay-of. Harmless by design: the
    worker's state remembers applied event and batch ids, so only what was never
    applied (a fix since, a skipped record) changes anything.
    """
    from quotaflow.commands.ops.replay import replay as run_replay

    settings = Settings()
    begin, end = parse_position(start), None if stop is None else parse_position(stop)
    with Progress("dry run" if dry_run else "replaying") as progress:
        report = _run(
            run_replay(
                settings,
                logical_topic,
                begin,
                end,
                tenant=tenant,
                event_type=event_type,
                dry_run=dry_run,
                rate=rate,
                progress=progress,
            )
        )
    if as_json:
        _echo_json(report.to_dict())
        return
    verb = "would replay" if dry_run else "replayed"
    click.echo(
        f"{report.replay_id}: {verb} {report.selected if dry_run else report.sent} of "
        f"{report.scanned} records read from {report.topic}"
        f" ({report.skipped_replays} earlier replays skipped)"
    )
    _table(sorted(report.by_type.items()), ["type", "records"])


# -- deadletter -----------------------------------------------------------------------


@click.group()
def deadletter() -> None:
    """Inspect dead letters and re-drive them to their source topic after a fix."""


_TENANT = click.option("--tenant", help="Only this tenant's dead letters.")
_REASON = click.option("--reason", help="Only this reason (unknown_price, processing_error, …).")
_FROM = click.option(
    "--from", "start", default="beginning", show_default=True, help="Offset or time to read from."
)


def _selection(tenant: str | None, reason: str | None, refs: Sequence[str] = ()) -> dl.Selection:
    for ref in refs:
        part, _, off = ref.partition(":")
        if not (part.isdigit() and off.isdigit()):
            raise OpsError(f"a dead letter is PARTITION:OFFSET, not {ref!r}")
    return dl.Selection(tenant, reason, frozenset(refs) if refs else None)


@deadletter.command("list")
@_TENANT
@_REASON
@_FROM
@_JSON
@_ops_errors
def deadletter_list(tenant: str | None, reason: str | None, start: str, as_json: bool) -> None:
    """List dead letters: where, why, which event, and whether already re-driven."""
    settings = Settings()

    async def main() -> tuple[list[dl.DeadLetter], set[str]]:
        with Progress("reading dead letters") as progress:
            letters = await dl.read_letters(
                settings, _selection(tenant, reason), start=parse_position(start), progress=progress
            )
        return letters, await dl.redriven_refs(settings)

    letters, done = _run(main())
    docs = [{**letter.summary(), "redriven": letter.ref in done} for letter in letters]
    if as_json:
        _echo_json(docs)
        return
    _table(
        [
            [
                d["ref"],
                d["tenant"],
                d["reason"],
                d["event_type"],
                d["event_id"],
                d["source"],
                _when(d["failed_at"]),
                "yes" if d["redriven"] else "no",
                d["detail"][:60],
            ]
            for d in docs
        ],
        ["ref", "tenant", "reason", "type", "event", "source", "failed", "redriven", "detail"],
    )
    click.echo(f"{len(docs)} dead letters")


@deadletter.command("show")
@click.argument("refs", nargs=-1, required=True)
@_ops_errors
def deadletter_show(refs: tuple[str, ...]) -> None:
    """Show dead letters in full (headers and body) as JSON. REFS: PARTITION:OFFSET."""
    settings = Settings()
    letters = _run(dl.read_letters(settings, _selection(None, None, refs)))
    if not letters:
        raise OpsError("no dead letter at " + ", ".join(refs))
    _echo_json([letter.full() for letter in letters])


@deadletter.command("redrive")
@_TENANT
@_REASON
@click.option("--ref", "refs", multiple=True, help="Only PARTITION:OFFSET (repeatable).")
@_FROM
@click.option("--dry-run", is_flag=True, help="Say what would be re-driven; send nothing.")
@click.option("--force", is_flag=True, help="Re-drive even those already re-driven.")
@click.option("--rate", type=click.FloatRange(min=0.1), help="At most N records per second.")
@_JSON
@_ops_errors
def deadletter_redrive(
    tenant: str | None,
    reason: str | None,
    refs: tuple[str, ...],
    start: str,
    dry_run: bool,
    force: bool,
    rate: float | None,
    as_json: bool,
) -> None:
    """Send dead letters' original records back to their source topic, once each.

    The original key, value and headers (without qf-dl-*), plus qf-redrive, to the
    partition they came from. Re-driven ones are recorded in <prefix>deadletter.redriven
    and skipped next time (--force overrides); a duplicate is harmless anyway.
    """
    settings = Settings()

    async def main() -> dl.RedriveReport:
        selection = _selection(tenant, reason, refs)
        with Progress("reading dead letters") as progress:
            letters = await dl.read_letters(
                settings, selection, start=parse_position(start), progress=progress
            )
        with Progress("re-driving") as progress:
            return await dl.redrive(
                settings,
                letters,
                dry_run=dry_run,
                force=force,
                rate=rate,
                progress=progress,
                actor=cli_actor(),
            )

    report = _run(main())
    if as_json:
        _echo_json(report.to_dict())
        return
    verb = "would re-drive" if dry_run else "re-drove"
    click.echo(
        f"{verb} {report.redriven} of {report.selected} selected "
        f"({report.already} already re-driven, {report.unroutable} without a source topic)"
    )


# -- quota ----------------------------------------------------------------------------


@click.group()
def quota() -> None:
    """A customer's current quota, and why it is what it is."""


_QUOTA_FIELDS = ["customer_id", "limit", "used", "remaining", "status", "version"]


@quota.command("show")
@click.argument("tenant")
@click.argument("customer", required=False)
@_JSON
@_ops_errors
def quota_show(tenant: str, customer: str | None, as_json: bool) -> None:
    """The latest quota of TENANT's customers (or of CUSTOMER) from quota.updates."""
    from quotaflow.commands.ops.quota_show import current_quotas

    settings = Settings()
    with Progress("reading quota.updates") as progress:
        quotas = _run(current_quotas(settings, tenant, customer, progress=progress))
    if customer is not None and not quotas:
        raise OpsError(f"no quota for {tenant}/{customer}")
    docs = [quotas[k].model_dump(mode="json") for k in sorted(quotas)]
    if as_json:
        _echo_json(docs if customer is None else docs[0])
        return
    _table(
        [[*(d[f] for f in _QUOTA_FIELDS), _when(d["period_end"]), d["reason"]["id"]] for d in docs],
        [*_QUOTA_FIELDS, "period_end", "last change"],
    )


@quota.command("explain")
@click.argument("tenant")
@click.argument("customer")
@click.option("--changes-only", is_flag=True, help="Hide steps that changed nothing.")
@_JSON
@_ops_errors
def quota_explain(tenant: str, customer: str, changes_only: bool, as_json: bool) -> None:
    """The Stripe events and usage batches that made CUSTOMER's quota, step by step.

    Replays the tenant's records of stripe.events and usage.events through the same
    pure domain functions as the worker (with the events' own snapshots, not fresh
    Stripe fetches) and compares the result with the published quota.
    """
    from quotaflow.commands.ops.explain import explain

    settings = Settings()

    async def main() -> Any:
        found = await _tenant(settings, tenant)
        with Progress("reading the tenant's records") as progress:
            return await explain(settings, found, customer, progress=progress)

    result = _run(main())
    if as_json:
        _echo_json(result.to_dict())
        return
    if result.stripe_customer_id is None:
        raise OpsError(f"no event or usage of {tenant}/{customer} in the topics")
    click.echo(f"{tenant}/{customer} (Stripe customer {result.stripe_customer_id})")
    rows = []
    for n, step in enumerate(result.steps, 1):
        if changes_only and step.outcome != "changed":
            continue
        what = ", ".join(f"{k} {a}→{b}" for k, (a, b) in step.changes.items())
        if step.error:
            what = f"error: {step.error}"
        if step.deadletters:
            what = (what + "; " if what else "") + "dead letter: " + "; ".join(step.deadletters)
        rows.append(
            [n, _when(step.at), step.kind, step.type, step.id, step.outcome, step.version, what]
        )
    _table(rows, ["#", "at", "kind", "type", "id", "outcome", "version", "changes"])
    final = result.final
    published = result.published
    click.echo(
        f"replayed: {_brief(final)}\npublished: {_brief(published)}\n"
        + ("they agree" if result.matches else "they differ (see `quota explain --help`)")
    )


def _brief(update: Any) -> str:
    if update is None:
        return "none"
    return (
        f"limit={update.limit} used={update.used} status={update.status} version={update.version}"
    )


# -- reconcile ------------------------------------------------------------------------


@click.command()
@click.option("--tenant", "tenant_ids", multiple=True, required=True, help="Tenant (repeatable).")
@click.option("--since", default="3d", show_default=True, help="Window: 3d, 12h, or a time.")
@click.option("--dry-run", is_flag=True, help="Compare and report; inject nothing.")
@click.option(
    "--every", help="Run again at this interval (e.g. 15m) until interrupted: the schedule."
)
@_JSON
@_ops_errors
def reconcile(
    tenant_ids: tuple[str, ...], since: str, dry_run: bool, every: str | None, as_json: bool
) -> None:
    """Compare Stripe's event list with stripe.events; inject what is missing.

    Lists the tenant's events from Stripe's Events API (its own key), compares them by
    id with what the tenant's partition of stripe.events holds, injects the missing ones
    (qf-secret-id: reconcile, qf-backfill: reconcile) and reports webhook endpoints
    that Stripe disabled.
    """
    from streams.reconcile import reconcile as run_reconcile

    settings = Settings()
    interval = None if every is None else parse_duration(every)

    async def once() -> list[Any]:
        reports = []
        window_start = parse_time(since)
        for tenant_id in tenant_ids:
            tenant = await _tenant(settings, tenant_id)
            with Progress(f"reading {tenant_id}'s events") as progress:
                reports.append(
                    await run_reconcile(
                        settings, tenant, window_start, dry_run=dry_run, progress=progress
                    )
                )
        return reports

    async def scheduled() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        while not stop.is_set():
            _print_reconcile(await once(), as_json)
            assert interval is not None
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except TimeoutError:
                continue

    if interval is None:
        reports = _run(once())
        _print_reconcile(reports, as_json)
        if any(r.disabled_endpoints for r in reports):
            raise SystemExit(2)
    else:
        _run(scheduled())


def _print_reconcile(reports: list[Any], as_json: bool) -> None:
    if as_json:
        _echo_json([r.to_dict() for r in reports])
        return
    for r in reports:
        verb = "missing" if r.dry_run else "injected"
        count = len(r.missing) if r.dry_run else r.injected
        click.echo(
            f"{_when(time.time())} {r.tenant}: Stripe lists {r.listed} events since "
            f"{_when(r.since)}, {r.present} in stripe.events, {verb} {count}"
            + (f", {r.filtered} outside the tenant's event types" if r.filtered else "")
        )
        if r.disabled_endpoints is None:
            click.echo("  webhook endpoints: Stripe would not list them with this key")
        for endpoint in r.disabled_endpoints or ():
            click.echo(f"  DISABLED webhook endpoint {endpoint['id']} {endpoint['url']}")


# -- lag ------------------------------------------------------------------------------


@click.command()
@click.option("--group", help="Only consumer groups whose id contains this.")
@_JSON
@_ops_errors
def lag(group: str | None, as_json: bool) -> None:
    """Consumer lag per group and partition (end offset minus committed offset)."""
    from quotaflow.commands.ops.lag import consumer_lag

    rows = _run(consumer_lag(Settings(), group=group))
    if as_json:
        _echo_json([r.to_dict() for r in rows])
        return
    _table(
        [[r.group, r.topic, r.partition, r.committed, r.end, r.lag] for r in rows],
        ["group", "topic", "partition", "committed", "end", "lag"],
    )
    totals: dict[str, int] = {}
    for r in rows:
        totals[r.group] = totals.get(r.group, 0) + r.lag
    for gid, total in sorted(totals.items()):
        click.echo(f"{gid}: {total} behind")


COMMANDS = (replay, deadletter, quota, reconcile, lag)
