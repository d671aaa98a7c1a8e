"""Charts, drawn on the server as SVG by pygal (no chart code of our own, no script in the
page): the usage of one customer over its current period, from `quota explain`'s steps."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pygal
from pygal.style import CleanStyle

from quotaflow.commands.ops.explain import Explanation

__all__ = ["UsagePoint", "usage_chart", "usage_points"]

UsagePoint = tuple[float, int, int | None]  # (time, used, limit: None = unlimited)


def usage_points(explanation: Explanation) -> list[UsagePoint]:
    """(time, used, limit) after each step that changed them, within the period the final
    quota is in (the replayed one, else the published one)."""
    latest = explanation.published or explanation.final
    start = latest.period_start if latest is not None else None
    used: int | None = None
    limit: int | None = None
    points: list[UsagePoint] = []
    for step in explanation.steps:
        if "used" in step.changes:
            used = step.changes["used"][1]
        if "limit" in step.changes:
            limit = step.changes["limit"][1]
        if "period_start" in step.changes:
            start = step.changes["period_start"][1] if latest is None else start
        if step.changes and used is not None and (start is None or step.at >= start):
            points.append((step.at, int(used), limit))
    if latest is not None and (not points or points[-1][1] != latest.used):
        at = max(points[-1][0] if points else 0.0, float(latest.period_start or 0))
        points.append((at, latest.used, latest.limit))
    return points


def _time(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def usage_chart(points: list[UsagePoint], title: str) -> str:
    """The chart as a `data:` URL of an SVG image (the page's CSP allows no inline SVG
    styles; an image carries its own)."""
    chart = pygal.DateTimeLine(
        js=[],  # no script fetched from anywhere: a static picture
        width=900,
        height=320,
        title=title,
        style=CleanStyle,
        show_dots=True,
        dots_size=3,
        x_label_rotation=20,
        x_value_formatter=lambda d: d.strftime("%m-%d %H:%M"),
        truncate_legend=-1,
        show_legend=True,
        legend_at_bottom=True,
        no_data_text="no usage in this period",
    )
    chart.add("used", [(_time(at), used) for at, used, _ in points])
    limits = [(_time(at), limit) for at, _, limit in points if limit is not None]
    if limits:
        chart.add("limit", limits, stroke_style={"dasharray": "6, 4"}, show_dots=False)
    svg: bytes = chart.render()
    return "data:image/svg+xml;base64," + base64.b64encode(svg).decode()
