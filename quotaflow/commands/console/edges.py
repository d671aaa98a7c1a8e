"""Edge nodes as the console sees them: who announced itself on `edge.nodes`, and what each
node of a tenant's regions holds for one customer.

Announcements are read from the compacted topic and checked as the pushers check them
(`streams.node_directory`: the region's public edge keys, the region's URL allow-list). Only
configured nodes (`QUOTAFLOW_EDGE_NODES`) and announced nodes that pass both checks and are
live are ever contacted: a record written by anything else cannot make the console send its
edge credential somewhere. Quotas are read with `GET /v1/quotas/{tenant}/{customer}` and the
application token in `QUOTAFLOW_CONSOLE_EDGE_TOKEN`; without one, the page says so.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from pydantic import ValidationError

from quotaflow.commands.ops.exceptions import OpsError
from quotaflow.settings import AdminSettings
from quotaflow.topicread import Position, TopicReader
from streams.node_directory import UrlAllowList, verified
from tables.edge_node import SIGNATURE_RECORD_HEADER, NodeAnnouncement
from wire import Kind, Verifier

__all__ = ["AnnouncedNode", "EdgeView", "announced_nodes", "edge_quotas"]

EDGE_TIMEOUT = 2.0
MAX_BODY = 64 * 1024


@dataclass(frozen=True, slots=True)
class AnnouncedNode:
    region: str
    node_id: str
    url: str | None
    at: float | None
    boot_id: str | None
    verified: bool
    allowed: bool
    departed: bool = False

    def live(self, settings: AdminSettings, now: float) -> bool:
        """Heard from within three announcement intervals, as a pusher counts it."""
        ttl = 3 * settings.edge_announce_interval
        return not self.departed and self.at is not None and self.at >= now - ttl

    def contactable(self, settings: AdminSettings, now: float) -> bool:
        return self.verified and self.allowed and self.live(settings, now)


async def announced_nodes(settings: AdminSettings) -> list[AnnouncedNode]:
    """The newest record of every node on `edge.nodes` (departed ones included)."""
    latest: dict[bytes, Any] = {}
    async with TopicReader(settings, settings.topics.edge_nodes) as reader:
        try:
            partitions = await reader.partitions()
        except OpsError:
            return []
        spans = await reader.spans(partitions, Position(edge="beginning"))
        async for record in reader.records(spans):
            if record.key is not None:
                latest[record.key] = record
    verifiers: dict[str, Verifier] = {}
    nodes = []
    for key, record in sorted(latest.items()):
        region, _, node_id = key.decode(errors="replace").partition("/")
        if record.value is None:
            nodes.append(AnnouncedNode(region, node_id, None, None, None, False, False, True))
            continue
        if region not in verifiers:
            verifiers[region] = Verifier(
                Kind.ANNOUNCEMENT, settings.edge_verify_keys.get(region, [])
            )
        signature = dict(record.headers or ()).get(SIGNATURE_RECORD_HEADER)
        good = verified(verifiers[region], signature, record.value)
        try:
            doc = NodeAnnouncement.model_validate(orjson.loads(record.value))
        except (orjson.JSONDecodeError, ValidationError):
            nodes.append(AnnouncedNode(region, node_id, None, None, None, False, False))
            continue
        allow = UrlAllowList.of(settings.edge_url_allow.get(region, []))
        nodes.append(
            AnnouncedNode(
                region,
                node_id,
                doc.url,
                doc.at,
                doc.boot_id,
                good and doc.key == key.decode(errors="replace"),
                allow.allows(doc.url),
            )
        )
    return nodes


@dataclass(frozen=True, slots=True)
class EdgeView:
    """What one node answered for the customer: `quota` or why there is none."""

    region: str
    url: str
    source: str  # "configured" | "announced"
    quota: dict[str, Any] | None
    problem: str | None


def region_nodes(
    settings: AdminSettings, region: str, announced: list[AnnouncedNode]
) -> list[tuple[str, str]]:
    """(url, source) of the nodes of `region` the console may contact."""
    now = time.time()
    found = {url.rstrip("/"): "configured" for url in settings.edge_nodes.get(region, [])}
    for node in announced:
        if node.region == region and node.url and node.contactable(settings, now):
            found.setdefault(node.url.rstrip("/"), "announced")
    return sorted(found.items())


async def _one(
    http: aiohttp.ClientSession, token: str, region: str, url: str, source: str, path: str
) -> EdgeView:
    headers = {"Authorization": f"Bearer {token}"}
    try:
        timeout = aiohttp.ClientTimeout(total=EDGE_TIMEOUT)
        async with http.get(url + path, headers=headers, timeout=timeout) as response:
            body = await response.content.read(MAX_BODY)
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        return EdgeView(region, url, source, None, f"unreachable ({type(exc).__name__})")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = None
    if status == 200 and isinstance(doc, dict):
        return EdgeView(region, url, source, doc, None)
    reason = doc.get("error", {}).get("reason") if isinstance(doc, dict) else None
    if not isinstance(reason, str):
        reason = doc.get("reason") if isinstance(doc, dict) else None
    return EdgeView(region, url, source, None, f"{status} {reason or 'error'}")


async def edge_quotas(
    settings: AdminSettings,
    http: aiohttp.ClientSession,
    tenant_id: str,
    customer_id: str,
    regions: list[str],
    announced: list[AnnouncedNode],
) -> list[EdgeView]:
    """Each reachable node's view of the customer, region by region (concurrently)."""
    token = settings.console_edge_token
    targets = [
        (r, url, source) for r in regions for url, source in region_nodes(settings, r, announced)
    ]
    if token is None:
        return [
            EdgeView(r, url, source, None, "not read: set QUOTAFLOW_CONSOLE_EDGE_TOKEN")
            for r, url, source in targets
        ]
    path = f"/v1/quotas/{quote(tenant_id, safe='')}/{quote(customer_id, safe='')}"
    secret = token.get_secret_value()
    return list(
        await asyncio.gather(
            *(_one(http, secret, r, url, source, path) for r, url, source in targets)
        )
    )
