"""`quotaflow tenants …` and `quotaflow keys …`: onboarding and key management.

Each command connects, does its one change (encrypted, audited, in effect everywhere
within 1 s) and exits. Output never shows a secret: `show` and `list` mask them. Secrets
given as flags can come from environment variables instead, so they stay out of shell
history and `ps`.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson

from quotaflow.commands.tenants.audit import cli_actor
from quotaflow.commands.tenants.documents import load_document, masked
from quotaflow.commands.tenants.onboarding import (
    onboard,
    onboarding_document,
    plan_entry,
)
from quotaflow.commands.tenants.onboarding import (
    register_webhook as register_endpoint,
)
from quotaflow.commands.tenants.writer import DEFAULT_OVERLAP, TenantWriter, open_writer
from quotaflow.exceptions import ConfigurationError
from quotaflow.settings import Settings
from quotaflow.tenants.exceptions import InvalidTenant, TenantNotFound, TenantsError
from quotaflow.tenants.keyring import generate_kek
from quotaflow.tenants.running import keyring_from_settings
from tables.tenant import Tenant
from wire import generate_keypair, public_key_id

__all__ = ["keys", "tenants"]

T = TypeVar("T")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """`90`, `90s`, `30m`, `24h`, `1d` -> seconds."""
    match = _DURATION.match(text)
    if match is None:
        raise click.BadParameter(f"{text!r} is not a duration like 30m, 24h or 1d")
    return float(match.group(1)) * _UNITS[match.group(2)]


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except (TenantsError, ConfigurationError) as exc:
        raise click.ClickException(str(exc)) from None


def _run(work: Callable[[TenantWriter], Awaitable[T]]) -> T:
    """Runs `work` with a started writer; tenants errors become clean CLI errors."""

    async def main() -> T:
        async with open_writer(Settings()) as writer:
            return await work(writer)

    with _errors():
        return asyncio.run(main())


def _echo_json(doc: Any) -> None:
    click.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())


def _parse_plan(text: str) -> tuple[str, dict[str, Any]]:
    try:
        return plan_entry(text)
    except InvalidTenant as exc:
        raise click.BadParameter(str(exc)) from None


@click.group()
def tenants() -> None:
    """Onboard and manage tenants (the registry on the compacted tenants topic)."""


@tenants.command("add")
@click.option(
    "--file",
    "file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A tenant document, JSON or YAML. Flags below override its fields.",
)
@click.option("--id", "tenant_id", help="Tenant id: lower-case letters, digits, - and _.")
@click.option("--name")
@click.option("--mode", type=click.Choice(["live", "test"]))
@click.option("--stripe-account", help="Stripe Connect account id (acct_…).")
@click.option(
    "--stripe-api-key",
    envvar="QUOTAFLOW_TENANT_STRIPE_API_KEY",
    help="Restricted key (rk_…) expected. Env: QUOTAFLOW_TENANT_STRIPE_API_KEY.",
)
@click.option(
    "--webhook-secret",
    envvar="QUOTAFLOW_TENANT_WEBHOOK_SECRET",
    help="Signing secret (whsec_…). Env: QUOTAFLOW_TENANT_WEBHOOK_SECRET.",
)
@click.option("--region", "regions", multiple=True, help="A region it is served in (repeat).")
@click.option("--plan", "plans", multiple=True, help="LOOKUP_KEY=QUOTA (repeat).")
@click.option("--event-type", "event_types", multiple=True, help="Allow-list entry (repeat).")
@click.option("--webhook-url", help="Also register the Stripe webhook endpoint at this URL.")
def add(
    file: Path | None,
    tenant_id: str | None,
    name: str | None,
    mode: str | None,
    stripe_account: str | None,
    stripe_api_key: str | None,
    webhook_secret: str | None,
    regions: tuple[str, ...],
    plans: tuple[str, ...],
    event_types: tuple[str, ...],
    webhook_url: str | None,
) -> None:
    """Add a tenant from flags or a JSON/YAML file; prints it with secrets masked."""
    with _errors():
        base: dict[str, Any] = load_document(file) if file is not None else {}
    for plan in plans:
        _parse_plan(plan)  # a usage error (exit 2) before anything connects
    with _errors():
        doc = onboarding_document(
            base,
            tenant_id=tenant_id,
            name=name,
            mode=mode,
            stripe_account=stripe_account,
            stripe_api_key=stripe_api_key,
            webhook_secret=webhook_secret,
            regions=regions,
            plans=plans,
            event_types=event_types,
        )
    actor = cli_actor()
    _echo_json(masked(_run(lambda w: onboard(w, doc, actor, webhook_url))))


@tenants.command("list")
@click.option("--json", "as_json", is_flag=True, help="Masked documents as JSON.")
def list_(as_json: bool) -> None:
    """List tenants: id, status, mode, regions, plans, secrets (count)."""

    async def work(writer: TenantWriter) -> list[Tenant]:
        return sorted(writer.registry, key=lambda t: t.id)

    found = _run(work)
    if as_json:
        _echo_json([masked(t) for t in found])
        return
    for t in found:
        click.echo(
            f"{t.id}\t{t.status}\t{t.mode}\t{','.join(t.regions)}\t"
            f"plans={len(t.plans)}\tsecrets={len(t.webhook_secrets)}"
        )


@tenants.command("show")
@click.argument("tenant_id")
def show(tenant_id: str) -> None:
    """Show one tenant as JSON, secrets masked."""

    async def work(writer: TenantWriter) -> Tenant:
        tenant = writer.registry.get(tenant_id)
        if tenant is None:
            raise TenantNotFound(tenant_id)
        return tenant

    _echo_json(masked(_run(work)))


@tenants.command("update")
@click.argument("tenant_id")
@click.option("--patch", "patch_text", help='A JSON merge patch, e.g. \'{"regions": ["eu"]}\'.')
@click.option(
    "--file",
    "file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A JSON/YAML merge patch file.",
)
@click.option(
    "--stripe-api-key",
    envvar="QUOTAFLOW_TENANT_STRIPE_API_KEY",
    help="Replace the Stripe API key. Env: QUOTAFLOW_TENANT_STRIPE_API_KEY.",
)
@click.option("--plan", "plans", multiple=True, help="LOOKUP_KEY=QUOTA to set (repeat).")
def update(
    tenant_id: str,
    patch_text: str | None,
    file: Path | None,
    stripe_api_key: str | None,
    plans: tuple[str, ...],
) -> None:
    """Change a tenant with a JSON merge patch (null removes a field or plan)."""
    patch: dict[str, Any] = {}
    with _errors():
        if file is not None:
            patch.update(load_document(file))
        if patch_text is not None:
            try:
                loaded = orjson.loads(patch_text)
            except orjson.JSONDecodeError:
                raise InvalidTenant("", "--patch is not JSON") from None
            if not isinstance(loaded, dict):
                raise InvalidTenant("", "--patch must be a JSON object")
            patch.update(loaded)
    if stripe_api_key is not None:
        patch["stripe_api_key"] = stripe_api_key
    if plans:
        patch["plans"] = {**patch.get("plans", {}), **dict(_parse_plan(p) for p in plans)}
    if not patch:
        raise click.UsageError("nothing to change: give --patch, --file, --plan or a key")
    actor = cli_actor()
    _echo_json(masked(_run(lambda w: w.update(tenant_id, patch, actor))))


@tenants.command("suspend")
@click.argument("tenant_id")
def suspend(tenant_id: str) -> None:
    """Suspend a tenant: its webhooks are refused (403) and every edge of its regions denies
    its customers (tenant_suspended) within 2 s, until `resume`. Its usage still counts."""
    actor = cli_actor()
    _run(lambda w: w.suspend(tenant_id, actor))
    click.echo(f"suspended {tenant_id}")


@tenants.command("resume")
@click.argument("tenant_id")
def resume(tenant_id: str) -> None:
    """Make a suspended tenant active again: served at every edge within 2 s; the worker
    then reconciles the suspended window with Stripe."""
    actor = cli_actor()
    _run(lambda w: w.resume(tenant_id, actor))
    click.echo(f"resumed {tenant_id}")


@tenants.command("delete")
@click.argument("tenant_id")
@click.confirmation_option(prompt="Delete the tenant? Its webhooks will answer 404.")
def delete(tenant_id: str) -> None:
    """Delete a tenant: webhooks answer 404 and pushes stop; state stays until `purge`."""
    actor = cli_actor()
    _run(lambda w: w.delete(tenant_id, actor))
    click.echo(f"deleted {tenant_id}")


@tenants.command("purge")
@click.argument("tenant_id")
@click.confirmation_option(prompt="Purge the deleted tenant's quotas? This cannot be undone.")
def purge(tenant_id: str) -> None:
    """Remove a deleted tenant's quotas from quota.updates (refused while it exists)."""
    actor = cli_actor()
    count = _run(lambda w: w.purge(tenant_id, actor))
    click.echo(f"purged {tenant_id}: {count} quota keys")


@tenants.command("register-webhook")
@click.argument("tenant_id")
@click.option(
    "--url",
    required=True,
    help="The tenant's ingress route: https://…/v1/webhooks/stripe/TENANT_ID.",
)
@click.option(
    "--overlap",
    default="24h",
    show_default=True,
    help="How long a previous signing secret keeps verifying.",
)
def register_webhook(tenant_id: str, url: str, overlap: str) -> None:
    """Create the tenant's Stripe webhook endpoint and store its signing secret."""
    seconds, actor = parse_duration(overlap), cli_actor()

    async def work(writer: TenantWriter) -> Tenant:
        tenant = writer.registry.get(tenant_id)
        if tenant is None:
            raise TenantNotFound(tenant_id)
        return await register_endpoint(writer, tenant, url, seconds, actor)

    tenant = _run(work)
    click.echo(f"registered {tenant.webhook_endpoint_id} for {tenant_id}")


@tenants.command("roll-webhook-secret")
@click.argument("tenant_id")
@click.option(
    "--new",
    "new_secret",
    required=True,
    envvar="QUOTAFLOW_TENANT_WEBHOOK_SECRET",
    help="The new signing secret (whsec_…). Env: QUOTAFLOW_TENANT_WEBHOOK_SECRET.",
)
@click.option(
    "--overlap",
    default=f"{int(DEFAULT_OVERLAP // 3600)}h",
    show_default=True,
    help="How long the old secret keeps verifying.",
)
def roll_webhook_secret(tenant_id: str, new_secret: str, overlap: str) -> None:
    """Roll the webhook signing secret: both verify during the overlap, then only the new."""
    seconds, actor = parse_duration(overlap), cli_actor()
    _run(lambda w: w.roll_webhook_secret(tenant_id, new_secret, actor, overlap=seconds))
    click.echo(f"rolled {tenant_id}: old secret verifies for {overlap}")


@tenants.command("reseal")
@click.option(
    "--all",
    "every",
    is_flag=True,
    help="Also re-sign every readable tenant (after a tenants signing key rotation).",
)
def reseal(every: bool) -> None:
    """Rewrite, signed and versioned, every tenant whose latest record is not accepted.

    The migration to signed records (format 1 records are refused by every component,
    reason `unsigned_format`), and the repair after a refused record (tampered, replayed,
    unknown key, bare tombstone): the version held is re-signed one version up, so every
    reader is ready again. Needs QUOTAFLOW_KEYRING and QUOTAFLOW_TENANT_SIGNING_KEYS.
    """
    actor = cli_actor()

    async def work(writer: TenantWriter) -> dict[str, int]:
        return await writer.reseal(actor, every=every)

    done = _run(work)
    click.echo(" ".join(f"{what}={count}" for what, count in done.items()))
    if done["unrecoverable"]:
        raise click.ClickException(
            f"{done['unrecoverable']} tenant records could not be rewritten (no readable "
            "version: a format 1 record under a key missing from QUOTAFLOW_KEYRING, or a "
            "refused record with no genuine one before it): re-add those tenants"
        )


@click.group()
def keys() -> None:
    """Key-encryption keys (QUOTAFLOW_KEYRING), Ed25519 push/edge signing keys and the
    edge's application tokens."""


@keys.command("generate")
@click.option("--id", "key_id", default="k1", show_default=True)
def generate(key_id: str) -> None:
    """Print a new key as a QUOTAFLOW_KEYRING entry; put it first to make it active."""
    click.echo(orjson.dumps({key_id: generate_kek()}).decode())


@keys.command("generate-signing")
@click.option(
    "--kind",
    type=click.Choice(["push", "edge", "tenants"]),
    required=True,
    help="push: a pusher's key (signs quota pushes); edge: an edge node's key (signs its "
    "usage reports and announcements, never pushes); tenants: the admin tools' key (signs "
    "every tenant record; --region is ignored).",
)
@click.option("--region", default="local", show_default=True, help="Region the key serves.")
def generate_signing(kind: str, region: str) -> None:
    """Print a new Ed25519 signing key pair as JSON, with the settings it goes into.

    The private key goes to signers only (push: QUOTAFLOW_PUSH_SIGNING_KEYS of the region's
    pushers; edge: QUOTAFLOW_EDGE_SIGNING_KEYS of the region's edge nodes), first in their
    list; the public key goes to verifiers (push: QUOTAFLOW_PUSH_VERIFY_KEYS of the edge
    nodes; edge: QUOTAFLOW_EDGE_VERIFY_KEYS of the ingress and pushers), next to the old
    one until every signer moved. tenants: the private key goes to the admin tools only
    (QUOTAFLOW_TENANT_SIGNING_KEYS of the CLI and the admin API), the public key to every
    component that reads tenants (QUOTAFLOW_TENANT_VERIFY_KEYS). The output holds a secret:
    keep it out of logs.
    """
    private, public = generate_keypair()
    signer_env: dict[str, object]
    verifier_env: dict[str, object]
    if kind == "push":
        signer_env = {"QUOTAFLOW_PUSH_SIGNING_KEYS": {region: [private]}}
        verifier_env = {"QUOTAFLOW_PUSH_VERIFY_KEYS": {region: [public]}}
    elif kind == "tenants":
        signer_env = {"QUOTAFLOW_TENANT_SIGNING_KEYS": [private]}
        verifier_env = {"QUOTAFLOW_TENANT_VERIFY_KEYS": [public]}
    else:
        signer_env = {"QUOTAFLOW_EDGE_SIGNING_KEYS": [private]}
        verifier_env = {"QUOTAFLOW_EDGE_VERIFY_KEYS": {region: [public]}}
    doc = {
        "kind": kind,
        "region": region,
        "key_id": public_key_id(public),
        "private": private,
        "public": public,
        "signers": signer_env,
        "verifiers": verifier_env,
    }
    click.echo(orjson.dumps(doc).decode())


@keys.command("generate-app-token")
@click.argument("name")
def generate_app_token_cmd(name: str) -> None:
    """Print a new bearer token for the calling application NAME, with its edge setting.

    The token is shown once, here: give it to the application (it sends `Authorization:
    Bearer <token>` to the edge's consume, check and quota routes). The edge nodes get
    only its SHA-256 digest, in QUOTAFLOW_EDGE_APP_TOKENS (merge the printed entry into
    theirs; during a rotation list the new and the old digest: {"NAME": ["new", "old"]}).
    The output holds a secret: keep it out of logs.
    """
    from edge.auth import generate_app_token, normalise_digests, token_digest

    try:
        normalise_digests({name: "0" * 64})  # the name rules, before a token is made
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="NAME") from None
    token = generate_app_token()
    digest = token_digest(token)
    doc = {
        "app": name,
        "token": token,
        "sha256": digest,
        "edge": {"QUOTAFLOW_EDGE_APP_TOKENS": {name: digest}},
    }
    click.echo(orjson.dumps(doc).decode())


@keys.command("status")
def status() -> None:
    """How many tenants each key wraps; a key wrapping none can be removed."""

    async def work(writer: TenantWriter) -> tuple[dict[str, int], list[str]]:
        counts: dict[str, int] = {}
        for record in writer.registry.sealed_records().values():
            if record.data_key is not None:
                kek_id = record.data_key.kek_id
                counts[kek_id] = counts.get(kek_id, 0) + 1
        return counts, sorted(writer.registry.unreadable())

    with _errors():
        ring = keyring_from_settings(Settings())
    counts, unreadable = _run(work)
    for key_id in ring.key_ids:
        active = " (active)" if key_id == ring.active_key_id else ""
        click.echo(f"{key_id}{active}\t{counts.pop(key_id, 0)} tenants")
    for key_id, count in counts.items():
        click.echo(f"{key_id} (NOT IN KEYRING)\t{count} tenants")
    if unreadable:
        # Records wrapped under a key this keyring lacks: a component started with it
        # answers these tenants 503 and is not ready (README, Unreadable tenant records).
        shown = ", ".join(unreadable[:20]) + (", ..." if len(unreadable) > 20 else "")
        click.echo(f"(UNREADABLE)\t{len(unreadable)} tenants: {shown}")


@keys.command("rotate")
def rotate() -> None:
    """Re-wrap every tenant's data key under the active (first) key, while all runs."""
    actor = cli_actor()

    async def work(writer: TenantWriter) -> int:
        total = len(writer.registry.sealed_records())
        with click.progressbar(length=total, label="re-wrapping", file=sys.stderr) as bar:
            return await writer.rotate_keys(actor, on_progress=bar.update)

    count = _run(work)
    click.echo(f"re-wrapped {count} data keys; keys other than the active one can now go")
