"""Customer: look up `tenant / customer`; the published quota beside what every node of the
tenant's regions holds, the `quota explain` timeline and the usage over the period."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from quotaflow.commands.console.charts import usage_chart, usage_points
from quotaflow.commands.console.context import CONTEXT
from quotaflow.commands.console.edges import announced_nodes, edge_quotas
from quotaflow.commands.console.render import page
from quotaflow.commands.ops.exceptions import OpsError
from quotaflow.commands.ops.explain import COMPARED, explain

__all__ = ["routes"]

routes = web.RouteTableDef()
EXPLAIN_TIMEOUT = 60.0


@routes.get("/customers")
async def customer(request: web.Request) -> web.StreamResponse:
    """The lookup form; with `tenant` and `customer`, everything known about the quota."""
    console = request.app[CONTEXT]
    tenant_id = request.query.get("tenant", "").strip()
    customer_id = request.query.get("customer", "").strip()
    context: dict[str, Any] = {
        "tenant_id": tenant_id,
        "customer_id": customer_id,
        "error": None,
        "result": None,
    }
    if not tenant_id or not customer_id:
        return page(request, "customer.html", **context)
    tenant = console.registry.get(tenant_id)
    if tenant is None:
        context["error"] = f"no tenant {tenant_id!r}"
        return page(request, "customer.html", status=404, **context)
    try:
        async with asyncio.timeout(EXPLAIN_TIMEOUT):
            explanation, announced = await asyncio.gather(
                explain(console.settings, tenant, customer_id),
                announced_nodes(console.settings),
            )
            # The edge holds the quota under the id it was published with (an alias, say).
            published_id = (
                explanation.published.customer_id
                if explanation.published is not None
                else customer_id
            )
            edges = await edge_quotas(
                console.settings,
                console.client(),
                tenant.id,
                published_id,
                list(tenant.regions),
                announced,
            )
    except (OpsError, TimeoutError) as exc:
        context["error"] = f"could not read the topics: {exc or type(exc).__name__}"
        return page(request, "customer.html", status=503, **context)
    points = usage_points(explanation)
    chart = usage_chart(points, f"{tenant.id} / {customer_id}: used this period")
    context["result"] = {
        "explanation": explanation,
        "edges": edges,
        "chart": chart,
        "points": points,
        "fields": COMPARED,
    }
    return page(request, "customer.html", **context)
