"""Reads the positions and durations operators type: offsets, times and `3d`-style spans.

A position is an offset (a plain integer, applied to every partition read), a time
(ISO 8601, `@UNIX_SECONDS`, or a duration meaning "that long ago": `90m`, `2h`, `3d`),
`beginning` or `end`. Integers are always offsets, never Unix times, so `@` marks those.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

from quotaflow.commands.ops.exceptions import BadSpec
from quotaflow.topicread import Position

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")


def parse_duration(text: str) -> float:
    """`90s`, `15m`, `2h`, `3d`, `1w` → seconds."""
    match = _DURATION.match(text.strip().lower())
    if match is None:
        raise BadSpec("duration", text)
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_time(text: str, now: float | None = None) -> float:
    """An ISO 8601 time (UTC unless it says otherwise), `@UNIX`, or a duration ago."""
    text = text.strip()
    now = time.time() if now is None else now
    if text.startswith("@"):
        try:
            return float(text[1:])
        except ValueError:
            raise BadSpec("time", text) from None
    if _DURATION.match(text.lower()):
        return now - parse_duration(text)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise BadSpec("time", text) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def parse_position(text: str, now: float | None = None) -> Position:
    """An offset, a time, `beginning` or `end` (see the module docstring)."""
    text = text.strip()
    if text.lower() in ("beginning", "earliest"):
        return Position(edge="beginning")
    if text.lower() in ("end", "latest", "now"):
        return Position(edge="end")
    if text.isdigit():
        return Position(offset=int(text))
    return Position(at=parse_time(text, now))
