"""What a chart is drawn from: the CDF record a bench keeps, the run chosen per bench, and
the percentiles older results kept (bench/common.py, bench/chartdata.py)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from bench.chartdata import distribution, entries, plotting_positions, runs_by_bench
from bench.common import cdf, summary


def test_a_cdf_record_keeps_the_quantiles_its_sample_resolves() -> None:
    record = cdf([float(v) for v in range(1, 1001)], "ms")
    points = dict((p, v) for p, v in record["points"])
    assert (record["unit"], record["n"]) == ("ms", 1000)
    assert (points[0.0], points[0.5], points[0.99], points[0.999], points[1.0]) == (
        1.0,
        500.0,
        990.0,
        999.0,
        1000.0,
    )
    # 1,000 samples say nothing about the p99.99 nor the p0.01.
    assert 0.9999 not in points
    assert 0.0001 not in points
    assert cdf([], "ms") == {"unit": "ms", "n": 0, "points": []}
    # summary() carries the record, in the unit it was given: 3 samples resolve only
    # 1/3 <= p <= 2/3, all of which is the middle one.
    small = summary([3.0, 1.0, 2.0], unit="units")["cdf"]
    assert small["unit"] == "units"
    assert small["points"][0] == [0.0, 1.0]
    assert small["points"][-1] == [1.0, 3.0]
    assert {p for p, _ in small["points"][1:-1]} == {0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65}
    assert {v for _, v in small["points"][1:-1]} == {2.0}


def _report(started: str, quick: bool, rc: int, p99: float) -> dict[str, Any]:
    result = {"p50_ms": 1.0, "p99_ms": p99, "max_ms": 9.0, "requests": 100}
    return {
        "quick": quick,
        "started_at": started,
        "machine": {"cpus": 2},
        "benches": {
            "edge": {"returncode": rc, "load_start": [1.0], "load_end": [2.0], "result": result}
        },
    }


def test_each_bench_is_drawn_from_its_newest_full_run_that_succeeded() -> None:
    found = [
        *entries("a.json", _report("2026-11-29T20:00:00+0000", False, 0, 2.0)),
        *entries("b.json", _report("2026-11-29T21:00:00+0000", False, 0, 3.0)),
        *entries("c.json", _report("2026-11-29T22:00:00+0000", True, 0, 4.0)),  # quick
        *entries("d.json", _report("2026-11-29T23:00:00+0000", False, 1, 5.0)),  # failed
    ]
    runs = runs_by_bench(found)["edge"]
    assert [r.source for r in runs] == ["b.json", "a.json"]
    assert "load avg (1 min) 1 → 2, 2 CPUs" in runs[0].provenance()
    # Quick runs are drawn only when a bench has nothing else.
    only_quick = runs_by_bench(entries("c.json", _report("t", True, 0, 4.0)))["edge"]
    assert only_quick[0].quick


def test_percentiles_alone_are_points_and_a_max_needs_a_sample_count() -> None:
    with_n = distribution({"p50_ms": 1.0, "p99_ms": 3.0, "max_ms": 9.0, "requests": 100})
    assert with_n is not None
    assert not with_n.complete
    assert with_n.points == ((0.5, 1.0), (0.99, 3.0), (1.0, 9.0))
    # The max sits half a sample below 1 on a logit axis.
    assert plotting_positions(with_n)[-1] == (0.995, 9.0)
    without_n = distribution({"p50_us": 0.4, "p99_us": 2.0, "max_us": 200.0, "calls": 10**6})
    assert without_n is not None
    assert without_n.unit == "us"
    assert [p for p, _ in plotting_positions(without_n)] == [0.5, 0.99]
    assert distribution({"p99_ms": 3.0}) is None  # one point is no distribution


def test_benchmarks_md_embeds_charts_that_were_drawn() -> None:
    repo = Path(__file__).resolve().parents[2]
    links = re.findall(
        r"!\[[^\]]*\]\((docs/bench/[^)]+\.svg)\)", (repo / "BENCHMARKS.md").read_text()
    )
    assert links
    for link in links:
        root = ET.parse(repo / link).getroot()  # noqa: S314 - a file of this repository
        text = " ".join(
            "".join(t.itertext()) for t in root.iter("{http://www.w3.org/2000/svg}text")
        )
        # Drawn by bench/charts.py from a results file, which the footer names.
        assert re.search(r"bench \w+: \d{8}-\d{6}(-quick)?\.json, started ", text), link
