"""Push latency and delivery per edge node, from the pushers' own `/metrics`.

A pusher exposes `quotaflow_push_latency_seconds` (a histogram of successful push requests,
labelled by region: one pusher pushes to one region's nodes, so that is its latency over
all of them), `quotaflow_push_batches_total` (by region, node and outcome) and
`quotaflow_push_node_up` (by region and node). The console reads the pages in
`QUOTAFLOW_CONSOLE_PUSHER_METRICS` when the Pipeline page is asked for (concurrently, each
within `TIMEOUT`), sums them by label, and estimates p50/p99 from the cumulative buckets
as Prometheus's `histogram_quantile` does (linear within the bucket). The figures are since
each pusher started; Prometheus and Grafana hold the windowed ones.

Nodes are matched by the pusher's label, `host:port` of the node's URL
(`streams.push_node.node_label`).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["NodePush", "PushView", "pushers_view", "quantile"]

TIMEOUT = 5.0
MAX_BODY = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Latency:
    """A region's push latency since its pushers started: quantiles in seconds, or None."""

    count: int
    p50: float | None
    p99: float | None


@dataclass(frozen=True, slots=True)
class NodePush:
    """What the pushers say about one node: up (None = not known) and batches by outcome."""

    up: bool | None
    batches: dict[str, int]


@dataclass(frozen=True, slots=True)
class PushView:
    configured: bool
    latency: dict[str, Latency] = field(default_factory=dict)  # region -> latency
    nodes: dict[tuple[str, str], NodePush] = field(default_factory=dict)  # (region, node)
    errors: list[str] = field(default_factory=list)


def quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """`histogram_quantile(q, …)` over cumulative (upper bound, count) buckets, sorted by
    bound and ending with +Inf; None without observations. A quantile in the +Inf bucket
    answers the highest finite bound (as Prometheus does)."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound


@dataclass
class _Sums:
    buckets: dict[str, dict[float, float]] = field(default_factory=dict)
    batches: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    up: dict[tuple[str, str], bool] = field(default_factory=dict)

    def add(self, text: str) -> None:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                region = s.labels.get("region", "")
                if s.name == "quotaflow_push_latency_seconds_bucket":
                    bound = float(s.labels["le"])
                    into = self.buckets.setdefault(region, {})
                    into[bound] = into.get(bound, 0.0) + s.value
                elif s.name == "quotaflow_push_batches_total":
                    key = (region, s.labels.get("node", ""))
                    outcome = s.labels.get("outcome", "")
                    by = self.batches.setdefault(key, {})
                    by[outcome] = by.get(outcome, 0.0) + s.value
                elif s.name == "quotaflow_push_node_up":
                    key = (region, s.labels.get("node", ""))
                    self.up[key] = self.up.get(key, False) or s.value >= 1

    def view(self, errors: list[str]) -> PushView:
        latency = {}
        for region, by_bound in self.buckets.items():
            buckets = sorted(by_bound.items())
            latency[region] = Latency(
                int(buckets[-1][1]) if buckets else 0,
                quantile(0.5, buckets),
                quantile(0.99, buckets),
            )
        keys = set(self.batches) | set(self.up)
        nodes = {
            k: NodePush(
                self.up.get(k), {o: int(v) for o, v in sorted(self.batches.get(k, {}).items())}
            )
            for k in keys
        }
        return PushView(True, latency, nodes, errors)


async def _fetch(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url, timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as response:
        response.raise_for_status()
        return (await response.content.read(MAX_BODY)).decode(errors="replace")


async def pushers_view(http: aiohttp.ClientSession, urls: Sequence[str]) -> PushView:
    """Every configured pusher page, read now and summed; an unreachable one is named."""
    if not urls:
        return PushView(False)
    pages = await asyncio.gather(*(_fetch(http, u) for u in urls), return_exceptions=True)
    sums, errors = _Sums(), []
    for url, page in zip(urls, pages, strict=True):
        if isinstance(page, asyncio.CancelledError):
            raise page
        if isinstance(page, BaseException):
            errors.append(f"{url}: {type(page).__name__}")
            continue
        try:
            sums.add(page)
        except (ValueError, KeyError):
            errors.append(f"{url}: not a Prometheus metrics page")
    return sums.view(errors)
