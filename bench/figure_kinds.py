"""The kinds of figure a bench can declare (bench/figures.py says which each bench draws,
bench/charts.py draws them). Plain data: nothing here imports matplotlib.

Paths: a tuple of keys into the result (`("ingress_max", "webhooks_per_s")`); a digit
indexes a list; a `"*"` step matches every key of a dict or every element of a list, and
the names it matched fill the label's `{0}`, `{1}`, … (a list element is named by its
`name_field`, else by its index). A label may also name fields of the node it points at
(`"{webhooks_per_s:,.0f}/s"`). A path that matches nothing, or a node without the data a
figure needs (a failed phase, a result from before the field existed), is left out of the
figure, never an error, and the charts' index says what was left out.
"""

from __future__ import annotations

from dataclasses import dataclass

Path = tuple[str, ...]


@dataclass(frozen=True)
class Series:
    """One curve or one set of points; a `baseline` is drawn in grey, apart from the
    measured curves."""

    label: str
    path: Path
    name_field: str | None = None
    baseline: bool = False


@dataclass(frozen=True)
class Target:
    """A target drawn beside the data: `value` at percentile `at` on a CDF (p99 ≤ 10 ms is
    `Target("target p99 ≤ 10 ms", 10, 0.99)`), or the point (`x`, `value`) on a chart
    against keys."""

    label: str
    value: float
    at: float = 0.99
    x: float | None = None


@dataclass(frozen=True)
class LatencyCDF:
    """One CDF curve per series, each path pointing at a node with a distribution: its
    `cdf_key` record (`bench.common.cdf`) or, in results from before that record existed,
    the percentiles alone (`p50`, `p90`, `p99`, `p999`, `max`, bare or with `_ms`/`_us`),
    drawn as marked points and said so in the caption. `log_x` fits tails spanning
    decades; leave it off where zero is a real value (a lag that is nil). `quantity` names
    the x axis (its unit comes from the data)."""

    slug: str
    title: str
    series: tuple[Series, ...]
    cdf_key: str = "cdf"
    targets: tuple[Target, ...] = ()
    log_x: bool = True
    quantity: str = "latency"
    note: str = ""


@dataclass(frozen=True)
class Ratio:
    """One bar: the value at `value` over the value at `baseline`, both numbers in `unit`
    (the figure's if not given), against its own `target` ratio if it has one (else the
    figure's). A `"*"` in `baseline` takes the key that the same step of `value` matched."""

    label: str
    value: Path
    baseline: Path
    name_field: str | None = None
    unit: str | None = None
    target: float | None = None


@dataclass(frozen=True)
class RatioBars:
    """Each measured figure as a multiple of its baseline from the same run (the baseline
    is the line at 1), annotated with both absolute values in `unit`."""

    slug: str
    title: str
    unit: str
    bars: tuple[Ratio, ...]
    higher_is_better: bool = True
    target_ratio: float | None = None
    note: str = ""


@dataclass(frozen=True)
class AgainstKeys:
    """Figures against a size (the number of keys): one point per run of the bench in the
    results drawn from (and per element of `each`, if a run measured several sizes), so a
    curve builds up over runs at different sizes. `x` and every series' path are taken
    relative to each point's node."""

    slug: str
    title: str
    x: Path
    x_label: str
    y_label: str
    series: tuple[Series, ...]
    each: Path = ()
    targets: tuple[Target, ...] = ()
    note: str = ""


Figure = LatencyCDF | RatioBars | AgainstKeys
