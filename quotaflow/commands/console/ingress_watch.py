"""Ingress outcomes over the last hour, from the ingresses' own `/metrics`.

The ingress counts every webhook by route, outcome and reason
(`quotaflow_ingress_webhooks_total`) and signature failures of its most-failing tenants
(`quotaflow_ingress_tenant_signature_failures_total`). Those are counters since each
process started, so the console samples them (every `INTERVAL` seconds, and when a page
asks for a sample older than `FRESH`) and shows the difference between the newest sample and
the oldest one within the hour: outcomes over the last hour, or since the console started
when that is less. A counter that went down (an ingress restarted) counts from zero.

Only the URLs in `QUOTAFLOW_CONSOLE_INGRESS_METRICS` are read; with none, the pages say that
the figures are not available. A Prometheus server holds the same series for longer (the
Grafana dashboard); this is the console's own short view.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["IngressWatch", "Window"]

log = logging.getLogger("quotaflow.console.ingress")

INTERVAL = 60.0
FRESH = 5.0
HOUR = 3600.0
TIMEOUT = 5.0
MAX_BODY = 4 * 1024 * 1024

Series = dict[tuple[str, ...], float]


@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    outcomes: Series  # (route, outcome, reason) -> count
    signature_failures: Series  # (tenant_id,) -> count (reasons summed)


@dataclass(frozen=True, slots=True)
class Window:
    """What the last hour (or less: `since`) added up to; `errors` names unreachable URLs."""

    since: float | None
    until: float | None
    outcomes: list[tuple[str, str, str, int]] = field(default_factory=list)
    signature_failures: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    configured: bool = True


def parse_metrics(text: str) -> tuple[Series, Series]:
    """The two series the console shows, from one Prometheus text page."""
    outcomes: Series = {}
    failures: Series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "quotaflow_ingress_webhooks_total":
                key = tuple(sample.labels.get(k, "") for k in ("route", "outcome", "reason"))
                outcomes[key] = outcomes.get(key, 0.0) + sample.value
            elif sample.name == "quotaflow_ingress_tenant_signature_failures_total":
                tenant = (sample.labels.get("tenant_id", ""),)
                failures[tenant] = failures.get(tenant, 0.0) + sample.value
    return outcomes, failures


def _delta(new: Series, old: Series) -> dict[tuple[str, ...], int]:
    out = {}
    for key, value in new.items():
        before = old.get(key, 0.0)
        grown = value - before if value >= before else value  # a restart counts from zero
        if grown > 0:
            out[key] = int(grown)
    return out


class IngressWatch:
    """Samples the configured ingress metrics pages; `start()`/`stop()` own its task."""

    def __init__(self, urls: Sequence[str]) -> None:
        self.urls = list(urls)
        self._samples: deque[Sample] = deque(maxlen=int(HOUR / INTERVAL) + 2)
        self._errors: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._http: aiohttp.ClientSession | None = None

    async def start(self, http: aiohttp.ClientSession) -> None:
        self._http = http
        if self.urls:
            self._task = asyncio.create_task(self._run(), name="console-ingress-watch")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                if not task.cancelled():
                    raise

    async def _run(self) -> None:
        while True:
            try:
                await self.sample()
            except Exception:  # the next round tries again; a page still shows what it has
                log.exception("ingress metrics sample failed")
            await asyncio.sleep(INTERVAL)

    async def _fetch(self, http: aiohttp.ClientSession, url: str) -> str:
        timeout = aiohttp.ClientTimeout(total=TIMEOUT)
        async with http.get(url, timeout=timeout) as response:
            response.raise_for_status()
            body = await response.content.read(MAX_BODY)
            return body.decode(errors="replace")

    async def sample(self) -> None:
        """One sample over every URL (summed); an unreachable URL is named in `errors`."""
        if self._http is None or not self.urls:
            return
        async with self._lock:
            pages = await asyncio.gather(
                *(self._fetch(self._http, url) for url in self.urls), return_exceptions=True
            )
            outcomes: Series = {}
            failures: Series = {}
            errors = []
            for url, page in zip(self.urls, pages, strict=True):
                if isinstance(page, BaseException):
                    if isinstance(page, asyncio.CancelledError):
                        raise page
                    errors.append(f"{url}: {type(page).__name__}")
                    continue
                try:
                    got_outcomes, got_failures = parse_metrics(page)
                except ValueError:
                    errors.append(f"{url}: not a Prometheus metrics page")
                    continue
                for key, value in got_outcomes.items():
                    outcomes[key] = outcomes.get(key, 0.0) + value
                for key, value in got_failures.items():
                    failures[key] = failures.get(key, 0.0) + value
            self._errors = errors
            if len(errors) < len(self.urls):
                self._samples.append(Sample(time.time(), outcomes, failures))

    async def window(self) -> Window:
        """The last hour, sampling first if the newest sample is older than `FRESH`."""
        if not self.urls:
            return Window(None, None, configured=False)
        if not self._samples or time.time() - self._samples[-1].at > FRESH:
            await self.sample()
        if not self._samples:
            return Window(None, None, errors=list(self._errors))
        newest = self._samples[-1]
        oldest = next(s for s in self._samples if s.at >= newest.at - HOUR)
        if oldest is newest:
            # One sample: everything counted since the ingresses started (up to now).
            base = Sample(newest.at, {}, {})
            since = None
        else:
            base, since = oldest, oldest.at
        outcomes = _delta(newest.outcomes, base.outcomes)
        failures = _delta(newest.signature_failures, base.signature_failures)
        return Window(
            since=since,
            until=newest.at,
            outcomes=sorted(
                ((k[0], k[1], k[2], v) for k, v in outcomes.items()), key=lambda r: (-r[3], r)
            ),
            signature_failures={k[0]: v for k, v in failures.items()},
            errors=list(self._errors),
        )

    def signature_failures(self) -> dict[str, int] | None:
        """Per tenant, over the window of the newest samples; None if not configured."""
        if not self.urls or not self._samples:
            return None if not self.urls else {}
        newest = self._samples[-1]
        oldest = next(s for s in self._samples if s.at >= newest.at - HOUR)
        base = oldest if oldest is not newest else Sample(newest.at, {}, {})
        return {
            k[0]: v for k, v in _delta(newest.signature_failures, base.signature_failures).items()
        }
