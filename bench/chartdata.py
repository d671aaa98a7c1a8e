"""From results files to what a chart plots: which run of each bench to draw, what a
figure's paths point at (bench/figures.py), and a distribution however a result kept it.

Pure data handling (no matplotlib), so what ends up on a chart is testable on its own.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any

from bench.figure_kinds import Path

# One unit of each dimension a distribution can be kept in, as a multiple of the first.
_TO_MS = {"us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1000.0}
_PERCENTILE_KEYS = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p999", 0.999))


@dataclass(frozen=True)
class Entry:
    """One run of one bench: its result and what the figures were taken on."""

    bench: str
    result: Mapping[str, Any]
    source: str
    started_at: str
    quick: bool
    load_start: float | None
    load_end: float | None
    machine: Mapping[str, Any] = field(default_factory=dict)

    def provenance(self) -> str:
        """A line for the caption: where the figures come from and how busy the machine was
        (it is shared: figures are comparable only within a run)."""
        load = ""
        if self.load_start is not None and self.load_end is not None:
            load = f", load avg (1 min) {self.load_start:g} → {self.load_end:g}"
        cpus = self.machine.get("cpus")
        where = f", {cpus} CPUs" if cpus else ""
        quick = " QUICK run (smoke sizes, not figures)." if self.quick else ""
        return f"{self.source}, started {self.started_at}{load}{where}.{quick}"


def _load1(value: Any) -> float | None:
    if isinstance(value, list | tuple) and value and isinstance(value[0], int | float):
        return float(value[0])
    return None


def entries(source: str, doc: Mapping[str, Any]) -> list[Entry]:
    """The runs in one results document: the report of `python -m bench` (every bench that
    exited 0 with a result) or the JSON one bench module printed on its own."""
    if "benches" in doc:
        found = []
        for name, entry in doc["benches"].items():
            if entry.get("returncode") != 0 or not isinstance(entry.get("result"), dict):
                continue
            found.append(
                Entry(
                    bench=name,
                    result=entry["result"],
                    source=source,
                    started_at=str(doc.get("started_at", "?")),
                    quick=bool(doc.get("quick")),
                    load_start=_load1(entry.get("load_start")),
                    load_end=_load1(entry.get("load_end")),
                    machine=doc.get("machine") or {},
                )
            )
        return found
    if isinstance(doc.get("bench"), str):
        started = doc.get("started_at")
        if isinstance(started, int | float):
            started = time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime(started))
        quick = doc.get("quick", (doc.get("args") or {}).get("quick", False))
        return [
            Entry(
                bench=doc["bench"],
                result=doc,
                source=source,
                started_at=str(started or "?"),
                quick=bool(quick),
                load_start=_load1(doc.get("load_start")),
                load_end=_load1(doc.get("load_end")),
                machine=doc.get("machine") or {},
            )
        ]
    raise ValueError(f"{source}: neither a `python -m bench` report nor one bench's JSON")


def runs_by_bench(found: Iterable[Entry]) -> dict[str, list[Entry]]:
    """Each bench's runs to draw, newest first: the full runs if there are any, else the
    quick ones (a quick run is drawn only when nothing better exists)."""
    grouped: dict[str, list[Entry]] = {}
    for entry in found:
        grouped.setdefault(entry.bench, []).append(entry)
    chosen = {}
    for name, runs in grouped.items():
        full = [r for r in runs if not r.quick]
        chosen[name] = sorted(full or runs, key=lambda r: r.started_at, reverse=True)
    return chosen


# --- paths -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    """What a path found: the keys its `"*"` steps took, their display names, the node."""

    keys: tuple[str, ...]
    names: tuple[str, ...]
    node: Any


def _step(node: Any, key: str) -> Any:
    if isinstance(node, Mapping):
        return node.get(key)
    if isinstance(node, list) and key.isdigit() and int(key) < len(node):
        return node[int(key)]
    return None


def expand(root: Any, path: Path, name_field: str | None = None) -> list[Match]:
    """Every node `path` reaches from `root` (see bench/figure_kinds.py for the syntax)."""
    matches = [Match((), (), root)]
    for key in path:
        nxt: list[Match] = []
        for m in matches:
            if key != "*":
                child = _step(m.node, key)
                if child is not None:
                    nxt.append(Match(m.keys, m.names, child))
            elif isinstance(m.node, Mapping):
                nxt += [Match((*m.keys, k), (*m.names, k), v) for k, v in m.node.items()]
            elif isinstance(m.node, list):
                for i, v in enumerate(m.node):
                    name = v.get(name_field) if name_field and isinstance(v, Mapping) else None
                    shown = f"{name:g}" if number(name) is not None else str(name or i)
                    nxt.append(Match((*m.keys, str(i)), (*m.names, shown), v))
        matches = nxt
    return matches


def resolve(root: Any, path: Path, keys: Sequence[str]) -> Any:
    """The node at `path`, its `"*"` steps taking `keys` in order."""
    taken = iter(keys)
    node = root
    for key in path:
        node = _step(node, next(taken, "") if key == "*" else key)
    return node


def number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    return float(value)


_FIELD = re.compile(r"\{[^{}]*\}")


def label(template: str, names: Sequence[str], node: Any) -> str:
    """`template` with the matched names as `{0}`… and the node's fields by name; a field
    the node lacks drops its placeholder (an older result) rather than failing."""
    fields = dict(node) if isinstance(node, Mapping) else {}
    try:
        return template.format(*names, **fields)
    except (KeyError, IndexError, ValueError, TypeError):
        stripped = _FIELD.sub("", template).replace("()", "").strip()
        return re.sub(r"\s{2,}", " ", stripped)


# --- distributions -------------------------------------------------------------------


@dataclass(frozen=True)
class Distribution:
    """Points (p, value) of a CDF in `unit`; `complete` is False when only a few
    percentiles were kept (results from before `bench.common.cdf`)."""

    unit: str
    n: int | None
    points: tuple[tuple[float, float], ...]
    complete: bool

    def to(self, unit: str) -> Distribution:
        if unit == self.unit or unit not in _TO_MS or self.unit not in _TO_MS:
            return self
        k = _TO_MS[self.unit] / _TO_MS[unit]
        points = tuple((p, v * k) for p, v in self.points)
        return Distribution(unit, self.n, points, self.complete)


def distribution(node: Any, cdf_key: str = "cdf") -> Distribution | None:
    """The distribution kept at `node`: its `cdf_key` record, else the percentiles it has
    (`p99`, `p99_ms`, `p99_us`…; bare keys are milliseconds, `bench.common.summary`'s
    convention); None if it has neither."""
    if not isinstance(node, Mapping):
        return None
    record = node.get(cdf_key)
    if isinstance(record, Mapping) and record.get("points"):
        kept_cdf = tuple((float(p), float(v)) for p, v in record["points"])
        size = record.get("n")
        unit = str(record.get("unit", "ms"))
        return Distribution(unit, int(size) if size else None, kept_cdf, True)
    if cdf_key != "cdf":
        return None
    for suffix, unit in (("_ms", "ms"), ("_us", "us"), ("", "ms")):
        kept = [(p, number(node.get(key + suffix))) for key, p in _PERCENTILE_KEYS]
        points = [(p, v) for p, v in kept if v is not None]
        if len(points) < 2:
            continue
        n = number(node.get("n")) or number(node.get("requests"))
        top = number(node.get("max" + suffix))
        if top is not None and n:
            points.append((1.0, top))
        return Distribution(unit, int(n) if n else None, tuple(points), False)
    return None


def plotting_positions(d: Distribution) -> list[tuple[float, float]]:
    """(p, value) for a chart whose p axis cannot show 0 or 1 (a logit scale): the
    minimum and maximum of n samples sit half a sample inside, as their plotting
    positions do; without n they are left out."""
    out = []
    for p, v in d.points:
        if 0.0 < p < 1.0:
            out.append((p, v))
        elif d.n:
            out.append((0.5 / d.n if p <= 0.0 else 1.0 - 0.5 / d.n, v))
    return out


def read(paths: Iterable[FsPath]) -> list[Entry]:
    """Every run in the results files at `paths`, each named by its file name."""
    found: list[Entry] = []
    for path in paths:
        found += entries(path.name, json.loads(path.read_text()))
    return found
