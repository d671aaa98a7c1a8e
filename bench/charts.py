"""`python -m bench.charts RESULTS.json [MORE.json …] [--out DIR]`: draws the charts that
bench/figures.py declares from results files, without running any bench, so charts can be
redrawn from a quiet machine's run. `python -m bench` calls `draw` after writing its JSON
and puts the charts beside it (`bench/results/<time>/`).

From several files, each bench is drawn from its newest full run (a quick run only if it
has no full one), and a chart against keys takes a point from every such run. Each chart
is an SVG whose text stays text (searchable, diffable), with its provenance and the load
average of its run written under it; `index.md` beside them lists every chart with its
caption. matplotlib (Agg) is a bench/dev extra, not a runtime dependency.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.chartdata import (
    Distribution,
    Entry,
    distribution,
    expand,
    label,
    number,
    plotting_positions,
    read,
    resolve,
    runs_by_bench,
)
from bench.figure_kinds import AgainstKeys, Figure, LatencyCDF, RatioBars
from bench.figures import FIGURES

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure as MplFigure

_UNIT_LABEL = {"us": "µs", "ms": "ms", "s": "s"}
TIMES = "\N{MULTIPLICATION SIGN}"
_PERCENT_TICKS = (0.1, 0.5, 0.9, 0.99, 0.999, 0.9999, 0.99999)


@dataclass(frozen=True)
class Drawn:
    """One chart written: its file and the caption that goes with it."""

    bench: str
    slug: str
    path: Path
    caption: str


class NothingToDraw(Exception):
    """The results hold none of the data a figure needs (a bench that failed, or ran
    before the field existed): the figure is left out, and the index says so."""


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    matplotlib.rcParams.update(
        {
            "svg.fonttype": "none",  # text stays text: searchable, and far smaller
            "svg.hashsalt": "quotaflow-bench",  # stable ids: a redraw diffs only if data did
            "font.size": 9,
            "axes.titlesize": 11,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "figure.dpi": 100,
        }
    )
    return pyplot


def _footer(fig: MplFigure, lines: Sequence[str]) -> None:
    fig.text(0.01, 0.01, "\n".join(lines), fontsize=7, color="0.35", va="bottom", ha="left")


def _new(pyplot: Any, title: str, entry: Entry, height: float = 5.0) -> tuple[MplFigure, Axes]:
    fig, ax = pyplot.subplots(figsize=(8.0, height))
    quick = " [quick run]" if entry.quick else ""
    # Over the figure, not the axes: long bar labels would push an axes title off the edge.
    fig.suptitle(f"{title}{quick}", x=0.01, ha="left", fontsize=11)
    return fig, ax


# --- the kinds of figure ---------------------------------------------------------------


@dataclass(frozen=True)
class _Curve:
    name: str
    dist: Distribution
    names: tuple[str, ...]
    baseline: bool


def _styles(curves: Sequence[_Curve]) -> list[dict[str, Any]]:
    """Measured curves in colours, baselines in greys; a series that matched two `"*"`
    steps (gateway x mode) gets its colour from the second name and its dashes from the
    first, so the same mode looks alike across gateways."""
    palette = [f"C{i}" for i in range(10)]
    greys, dashes = ["0.2", "0.5", "0.35", "0.65"], ["-", "--", ":", "-."]
    colours: dict[str, str] = {}
    lines: dict[str, str] = {}
    out = []
    n_baselines = 0
    for c in curves:
        if c.baseline:
            out.append({"color": greys[n_baselines % 4], "linestyle": "-."})
            n_baselines += 1
            continue
        colour_key, dash_key = (c.names[-1], c.names[0]) if len(c.names) >= 2 else (c.name, "")
        colour = colours.setdefault(colour_key, palette[len(colours) % 10])
        out.append(
            {"color": colour, "linestyle": lines.setdefault(dash_key, dashes[len(lines) % 4])}
        )
    return out


def _kept(d: Distribution) -> str:
    names = {0.5: "p50", 0.9: "p90", 0.99: "p99", 0.999: "p99.9", 1.0: "max"}
    return "/".join(names.get(p, f"p{p * 100:g}") for p, _ in d.points)


def _draw_cdf(pyplot: Any, spec: LatencyCDF, entry: Entry) -> tuple[MplFigure, list[str]]:
    from matplotlib.ticker import FuncFormatter, NullFormatter

    curves = []
    for series in spec.series:
        for m in expand(entry.result, series.path, series.name_field):
            d = distribution(m.node, spec.cdf_key)
            if d is not None:
                name = label(series.label, m.names, m.node)
                curves.append(_Curve(name, d, m.names, series.baseline))
    if not curves:
        raise NothingToDraw(f"no distribution at any of {spec.slug}'s paths")
    unit = curves[0].dist.unit
    notes: list[str] = []
    fig, ax = _new(pyplot, spec.title, entry)
    plotted: list[float] = []
    for c, style in zip(curves, _styles(curves), strict=True):
        d = c.dist.to(unit)
        points = plotting_positions(d)
        if spec.log_x:
            points = [(p, v) for p, v in points if v > 0]
        if not points:
            continue
        plotted += [p for p, _ in points]
        n = f" · n={d.n:,}" if d.n else ""
        xs, ps = [v for _, v in points], [p for p, _ in points]
        if d.complete:
            ax.plot(xs, ps, drawstyle="steps-post", linewidth=1.6, label=f"{c.name}{n}", **style)
        else:
            ax.plot(xs, ps, marker="o", linewidth=1, markersize=5, label=f"{c.name}{n}", **style)
    partial = sorted({_kept(c.dist) for c in curves if not c.dist.complete})
    if partial:
        notes.append(
            f"Points, not curves: this run kept only {', '.join(partial)} "
            "(from before the benches recorded a CDF); lines between them are not data."
        )
    for target in spec.targets:
        ax.plot([target.value], [target.at], marker="*", markersize=13, color="crimson",
                linestyle="none", label=target.label)  # fmt: skip
        ax.axvline(target.value, color="crimson", linestyle=":", linewidth=1)
    if spec.log_x:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    scale = "log scale" if spec.log_x else "linear"
    ax.set_xlabel(f"{spec.quantity} ({_UNIT_LABEL.get(unit, unit)}, {scale})")
    ax.set_yscale("logit")
    lowest, highest = min(plotted, default=0.5), max(plotted, default=0.99)
    ticks = [t for t in _PERCENT_TICKS if min(lowest, 0.5) <= t <= max(highest, 0.99)]
    ax.set_ylim(min(lowest, 0.1) * 0.9, 1 - (1 - max(highest, 0.99)) * 0.6)
    ax.set_yticks(ticks, [f"{t * 100:g} %" for t in ticks])
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylabel("share of samples at or below (percentile, logit scale)")
    ax.legend(loc="best", fontsize=8)
    if spec.note:
        notes.append(spec.note)
    return fig, notes


def _draw_ratios(pyplot: Any, spec: RatioBars, entry: Entry) -> tuple[MplFigure, list[str]]:
    bars = []
    for ratio in spec.bars:
        for m in expand(entry.result, ratio.value, ratio.name_field):
            value = number(m.node)
            base = number(resolve(entry.result, ratio.baseline, m.keys))
            if value is not None and base:
                name = label(ratio.label, m.names, entry.result)
                target = ratio.target if ratio.target is not None else spec.target_ratio
                bars.append((name, value, base, ratio.unit or spec.unit, target))
    if not bars:
        raise NothingToDraw(f"no value with its baseline at any of {spec.slug}'s paths")
    fig, ax = _new(pyplot, spec.title, entry, height=2.4 + 0.5 * len(bars))
    ratios = [bar[1] / bar[2] for bar in bars]
    ys = list(range(len(bars)))[::-1]
    # Green or orange only against a target: a fraction of a raw ceiling is no failure.
    colours = []
    for r, (*_, target) in zip(ratios, bars, strict=True):
        met = target is None or (r >= target if spec.higher_is_better else r <= target)
        colours.append("tab:blue" if target is None else "tab:green" if met else "tab:orange")
    ax.barh(ys, ratios, height=0.55, color=colours)
    own = [bar[4] if bar[4] is not None and bar[4] != spec.target_ratio else None for bar in bars]
    sign = "≥" if spec.higher_is_better else "≤"
    names = [
        f"{bar[0]}\ntarget {sign} {t:g} {TIMES}" if t else bar[0]
        for bar, t in zip(bars, own, strict=True)
    ]
    ax.set_yticks(ys, names)
    targets = [bar[4] for bar in bars if bar[4] is not None]
    widest = max([*ratios, *targets, 1.0])
    narrowest = min([*ratios, *targets, 1.0])
    log = widest / narrowest > 20
    if log:
        from matplotlib.ticker import FuncFormatter

        ax.set_xscale("log")
        left = narrowest / 3
        # Room right of the widest bar for its annotation, about 40 % of the axis.
        ax.set_xlim(left, widest * (widest / left) ** 0.8)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    else:
        ax.set_xlim(0, widest * 1.8)
    ax.axvline(1.0, color="black", linewidth=1.4, label=f"baseline, same run = 1 {TIMES}")
    if spec.target_ratio is not None:
        ax.axvline(spec.target_ratio, color="crimson", linestyle="--", linewidth=1.2,
                   label=f"target {sign} {spec.target_ratio:g} {TIMES}")  # fmt: skip
    for y, r, (_, value, base, unit, _), target in zip(ys, ratios, bars, own, strict=True):
        text = f"{r:.3g} {TIMES} ({_fmt(value)} vs {_fmt(base)} {unit})"
        if target is not None:
            ax.plot([target], [y], marker="|", markersize=22, color="crimson", linestyle="none")
        # An offset, not leading spaces: SVG viewers collapse those.
        ax.annotate(text, (r, y), xytext=(4, 0), textcoords="offset points", va="center",
                    fontsize=8)  # fmt: skip
    ax.set_ylim(-0.6, len(bars) - 0.4)
    better = "higher" if spec.higher_is_better else "lower"
    ax.set_xlabel(f"{TIMES} the baseline ({spec.unit}; {better} is better)")
    ax.grid(axis="y", visible=False)
    ax.legend(loc="lower right", fontsize=8)
    notes = [spec.note] if spec.note else []
    return fig, notes


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _draw_against_keys(
    pyplot: Any, spec: AgainstKeys, runs: Sequence[Entry]
) -> tuple[MplFigure, list[str]]:
    from matplotlib.ticker import FuncFormatter

    lines: dict[str, list[tuple[float, float]]] = {}
    for run in runs:
        for point in expand(run.result, spec.each):
            x = number(resolve(point.node, spec.x, ()))
            if x is None:
                continue
            for series in spec.series:
                for m in expand(point.node, series.path, series.name_field):
                    y = number(m.node)
                    if y is not None:
                        name = label(series.label, m.names, point.node)
                        lines.setdefault(name, []).append((x, y))
    if not lines:
        raise NothingToDraw(f"no run with {spec.slug}'s figures")
    fig, ax = _new(pyplot, spec.title, runs[0])
    for name, points in lines.items():
        points.sort()
        ax.plot([x for x, _ in points], [y for _, y in points], "o-", label=name)
        for x, y in points:
            ax.annotate(f"{y:,.3g}", (x, y), textcoords="offset points", xytext=(5, 4),
                        fontsize=8)  # fmt: skip
    for target in spec.targets:
        if target.x is not None:
            ax.plot([target.x], [target.value], marker="*", markersize=13, linestyle="none",
                    color="crimson")  # fmt: skip
            ax.annotate(target.label, (target.x, target.value), textcoords="offset points",
                        xytext=(-8, 6), ha="right", fontsize=8, color="crimson")  # fmt: skip
    xs = [x for points in lines.values() for x, _ in points] + [
        t.x for t in spec.targets if t.x is not None
    ]
    ys = [y for points in lines.values() for _, y in points] + [t.value for t in spec.targets]
    ax.set_xscale("log")
    ax.set_xlim(min(xs) / 2, max(xs) * 2)
    if max(ys) / max(min(y for y in ys if y > 0), 1e-9) > 20:
        ax.set_yscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.set_xlabel(f"{spec.x_label} (log scale)")
    ax.set_ylabel(spec.y_label)
    ax.legend(loc="upper left", fontsize=8)
    notes = [spec.note] if spec.note else []
    if len({x for points in lines.values() for x, _ in points}) < 2:
        notes.append("One size measured so far: each run at another size adds a point.")
    return fig, notes


# --- drawing a set of results ----------------------------------------------------------


def _draw_one(pyplot: Any, spec: Figure, runs: Sequence[Entry]) -> tuple[MplFigure, list[str]]:
    if isinstance(spec, LatencyCDF):
        return _draw_cdf(pyplot, spec, runs[0])
    if isinstance(spec, RatioBars):
        return _draw_ratios(pyplot, spec, runs[0])
    return _draw_against_keys(pyplot, spec, runs)


def draw(found: Iterable[Entry], out: Path, fmt: str = "svg") -> list[Drawn]:
    """Every declared chart the runs in `found` support, written into `out`, with
    `index.md` listing them; returns what was drawn."""
    pyplot = _pyplot()
    out.mkdir(parents=True, exist_ok=True)
    drawn: list[Drawn] = []
    missing: list[str] = []
    for bench, runs in runs_by_bench(found).items():
        for spec in FIGURES.get(bench, ()):
            try:
                fig, notes = _draw_one(pyplot, spec, runs)
            except NothingToDraw as exc:
                missing.append(f"{bench}/{spec.slug}: {exc}")
                continue
            used = runs if isinstance(spec, AgainstKeys) else runs[:1]
            provenance = [f"bench {bench}: " + r.provenance() for r in used]
            _footer(fig, [*notes, *provenance])
            footer_inches = 0.2 + 0.13 * (len(notes) + len(provenance))
            fig.tight_layout(rect=(0, footer_inches / fig.get_figheight(), 1, 1))
            path = out / f"{spec.slug}.{fmt}"
            fig.savefig(path, format=fmt, metadata={"Date": None} if fmt == "svg" else None)
            pyplot.close(fig)
            caption = " ".join(n if n.endswith(".") else f"{n}." for n in [*notes, *provenance])
            drawn.append(Drawn(bench, spec.slug, path, caption))
    _index(out, drawn, missing)
    return drawn


def _index(out: Path, drawn: Sequence[Drawn], missing: Sequence[str]) -> None:
    lines = ["# Bench charts", "", "Drawn by `python -m bench.charts` (bench/charts.py).", ""]
    for d in drawn:
        lines += [f"![{d.slug}]({d.path.name})", "", d.caption, ""]
    if missing:
        lines += ["Not drawn (the results lack their data):", ""]
        lines += [f"- {m}" for m in missing]
    (out / "index.md").write_text("\n".join(lines) + "\n")


def chart_dir(results: Path) -> Path:
    """Where the charts of a results file go: a directory of the same name beside it."""
    return results.with_suffix("")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("results", nargs="+", type=Path, help="results JSON files")
    parser.add_argument(
        "--out", type=Path, help="directory for the charts (default: beside the newest file)"
    )
    parser.add_argument("--format", choices=("svg", "png"), default="svg")
    args = parser.parse_args(argv)
    for path in args.results:
        if not path.is_file():
            parser.error(f"{path}: no such file")
    found = read(args.results)
    out = args.out or chart_dir(max(args.results, key=lambda p: p.stat().st_mtime))
    drawn = draw(found, out, args.format)
    for d in drawn:
        print(d.path)
    if not drawn:
        print("no chart: the results hold no figure that bench/figures.py declares",
              file=sys.stderr)  # fmt: skip
        sys.exit(1)


if __name__ == "__main__":
    main()
