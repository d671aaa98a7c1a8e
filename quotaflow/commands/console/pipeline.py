"""Pipeline: consumer lag per group and partition (`quotaflow lag`), the edge nodes of every
region with their last announcement and what their pushers say of them (`push_watch`: push
latency per region, up state and batches per node), and the ingress outcomes of the last
hour."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from quotaflow.commands.console.context import CONTEXT
from quotaflow.commands.console.edges import announced_nodes
from quotaflow.commands.console.push_watch import pushers_view
from quotaflow.commands.console.render import page
from quotaflow.commands.ops.exceptions import OpsError
from quotaflow.commands.ops.lag import consumer_lag
from streams.push_node import node_label

__all__ = ["routes"]

routes = web.RouteTableDef()
LAG_TIMEOUT = 15.0


@routes.get("/pipeline")
async def pipeline(request: web.Request) -> web.StreamResponse:
    """Lag, edge nodes and ingress outcomes; each part says when it could not be read."""
    console = request.app[CONTEXT]
    settings = console.settings
    problems: list[str] = []
    try:
        lag = await consumer_lag(settings, timeout=LAG_TIMEOUT)
    except (OpsError, TimeoutError, OSError) as exc:
        lag = []
        problems.append(f"consumer lag: {type(exc).__name__}")
    totals: dict[str, int] = {}
    for row in lag:
        totals[row.group] = totals.get(row.group, 0) + row.lag
    try:
        async with asyncio.timeout(LAG_TIMEOUT):
            nodes = await announced_nodes(settings)
    except (OpsError, TimeoutError) as exc:
        nodes = []
        problems.append(f"edge.nodes: {type(exc).__name__}")
    now = time.time()
    regions = sorted(
        {n.region for n in nodes} | set(settings.edge_nodes) | set(settings.edge_verify_keys)
    )
    window = await console.watch.window()
    push = await pushers_view(console.client(), settings.console_pusher_metrics)
    labels = {url: node_label(url) for urls in settings.edge_nodes.values() for url in urls}
    labels |= {n.url: node_label(n.url) for n in nodes if n.url}
    return page(
        request,
        "pipeline.html",
        lag=lag,
        totals=sorted(totals.items()),
        regions=regions,
        nodes=nodes,
        configured=settings.edge_nodes,
        live={f"{n.region}/{n.node_id}": n.live(settings, now) for n in nodes},
        window=window,
        push=push,
        labels=labels,
        problems=problems,
    )
