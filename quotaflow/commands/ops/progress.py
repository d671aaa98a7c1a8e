"""A progress bar with an ETA on stderr, opened once the amount of work is known.

stdout stays clean for the command's result (tables or JSON); the bar is drawn only
when stderr is a terminal (click decides), so scripts and CI logs get no noise.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any

import click


class Progress:
    """`with Progress("replaying") as p: p.total(n); p.advance(k)`."""

    def __init__(self, label: str, *, enabled: bool = True) -> None:
        self._label = label
        # Scripts, CI and `--json | jq` get no bar: only a person at a terminal does.
        self._enabled = enabled and sys.stderr.isatty()
        self._bar: Any = None
        self._pending = 0

    def total(self, length: int) -> None:
        """Opens the bar (once): `length` units of work are coming."""
        if not self._enabled or self._bar is not None or length <= 0:
            return
        self._bar = click.progressbar(
            length=length, label=self._label, file=sys.stderr, show_eta=True, show_pos=True
        )
        self._bar.__enter__()
        if self._pending:
            self._bar.update(self._pending)

    def add_total(self, length: int) -> None:
        """Grows the expected work (several reads in a row)."""
        if self._bar is None:
            self.total(length)
        else:
            self._bar.length += length

    def advance(self, n: int) -> None:
        if self._bar is None:
            self._pending += n
        else:
            self._bar.update(n)

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.__exit__(exc_type, exc, tb)
            self._bar = None
