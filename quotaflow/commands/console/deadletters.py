"""Dead letters: list and filter, show one, re-drive with a dry run first.

A re-drive is two requests: the dry run (`ops.deadletter.redrive(dry_run=True)`, as
`quotaflow deadletter redrive --dry-run`) shows what would go and hands back a token bound to
the session and to that exact selection; only a request carrying it re-drives for real
(`redrive(actor=…)`, the CLI's call, which records the operator on each re-drive marker and
writes the audit record)."""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web

from quotaflow.commands.console.context import CONTEXT, SESSION
from quotaflow.commands.console.render import page
from quotaflow.commands.ops import deadletter as dl
from quotaflow.commands.ops.exceptions import OpsError

__all__ = ["routes"]

routes = web.RouteTableDef()
SHOWN = 500  # newest first; the filter narrows


def _text(value: object) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    return value.strip()[:200]


def _refs(values: Sequence[object]) -> frozenset[str] | None:
    refs = set()
    for value in values:
        if isinstance(value, str) and value:
            part, _, off = value.partition(":")
            if not (part.isdigit() and off.isdigit()):
                raise web.HTTPBadRequest(text=f"a dead letter is PARTITION:OFFSET, not {value!r}")
            refs.add(value)
    return frozenset(refs) if refs else None


def _purpose(selection: dl.Selection, force: bool) -> str:
    refs = ",".join(sorted(selection.refs or ()))
    return f"redrive|{selection.tenant or ''}|{selection.reason or ''}|{refs}|{force}"


@routes.get("/deadletters")
async def letter_list(request: web.Request) -> web.StreamResponse:
    """Dead letters, filtered by `tenant` and `reason`, newest first."""
    console = request.app[CONTEXT]
    tenant, reason = _text(request.query.get("tenant")), _text(request.query.get("reason"))
    try:
        letters = await dl.read_letters(console.settings, dl.Selection(tenant, reason))
        done = await dl.redriven_refs(console.settings)
    except OpsError as exc:
        return page(
            request,
            "deadletters.html",
            status=503,
            letters=[],
            total=0,
            tenant=tenant or "",
            reason=reason or "",
            error=str(exc),
            reasons=[],
        )
    letters.sort(key=lambda letter: letter.summary()["failed_at"] or 0.0, reverse=True)
    rows = [{**letter.summary(), "redriven": letter.ref in done} for letter in letters[:SHOWN]]
    return page(
        request,
        "deadletters.html",
        letters=rows,
        total=len(letters),
        tenant=tenant or "",
        reason=reason or "",
        reasons=sorted({letter.reason for letter in letters}),
        error=None,
    )


@routes.get("/deadletters/{partition:\\d+}/{offset:\\d+}")
async def letter(request: web.Request) -> web.StreamResponse:
    """One dead letter in full: why it failed, its headers and its body."""
    console = request.app[CONTEXT]
    ref = f"{request.match_info['partition']}:{request.match_info['offset']}"
    found = await dl.read_letters(console.settings, dl.Selection(refs=frozenset({ref})))
    if not found:
        raise web.HTTPNotFound(text=f"no dead letter at {ref}")
    done = await dl.redriven_refs(console.settings)
    return page(request, "deadletter.html", letter=found[0].full(), redriven=ref in done)


@routes.post("/deadletters/redrive")
async def redrive(request: web.Request) -> web.StreamResponse:
    """`mode=dry-run`: what would be re-driven, and the token to do it; `mode=run` with that
    token: re-drives exactly that selection."""
    console = request.app[CONTEXT]
    session = request[SESSION]
    form = await request.post()
    selection = dl.Selection(
        _text(form.get("tenant")), _text(form.get("reason")), _refs(form.getall("ref", []))
    )
    force = form.get("force") == "yes"
    run = form.get("mode") == "run"
    purpose = _purpose(selection, force)
    if run and not console.keys.check_bound(session, purpose, _text(form.get("preview"))):
        return page(
            request,
            "redrive.html",
            status=409,
            report=None,
            selection=selection,
            force=force,
            preview=None,
            error="Run the dry run first: a re-drive needs the token its dry run gives.",
        )
    letters = await dl.read_letters(console.settings, selection)
    report = await dl.redrive(
        console.settings, letters, dry_run=not run, force=force, actor=session.actor
    )
    return page(
        request,
        "redrive.html",
        report=report,
        selection=selection,
        force=force,
        preview=None if run else console.keys.bind(session, purpose),
        error=None,
    )
