"""Runs quotaflow components as real processes through the documented command line, with
the harness every face shares (`quotaflow.testing.harness`), plus the tests' own
application credential for the edges."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from edge.auth import generate_app_token
from quotaflow.testing.harness import Process, app_tokens_env, processes, start_quotaflow

__all__ = [
    "EDGE_APP",
    "EDGE_AUTH",
    "EDGE_TOKEN",
    "Component",
    "components",
    "edge_auth_env",
    "start",
]

# The calling application every test edge accepts (consume, check and quota reads need a
# credential): edges get its digest through `edge_auth_env()`, clients send `EDGE_AUTH`.
EDGE_APP = "tests"
EDGE_TOKEN = generate_app_token()
EDGE_AUTH = {"Authorization": f"Bearer {EDGE_TOKEN}"}

# One `quotaflow <verb>` process with its output in a log file (the harness's `Process`).
Component = Process


def edge_auth_env() -> dict[str, str]:
    """The setting that lets `EDGE_AUTH` in at an edge process (a digest, not the token)."""
    return app_tokens_env({EDGE_APP: EDGE_TOKEN})


@contextmanager
def components(env: Mapping[str, str], logdir: Path) -> Iterator[list[Process]]:
    """A list to start components into; all are stopped, newest first, on exit."""
    with processes() as started:
        yield started


def start(started: list[Process], args: list[str], env: Mapping[str, str], logdir: Path) -> Process:
    """`quotaflow <args>` into `started`, logging to `<logdir>/<args>.log`."""
    return start_quotaflow(started, args, env, logdir)
