"""`quotaflow-edge`: the edge sidecar's command, the one the slim distribution installs.

The same click command is `quotaflow edge` in the full distribution (`quotaflow/commands/cli.py`
registers it), so both take the same options and read the same `QUOTAFLOW_*` settings.
This module imports only what the slim distribution ships (`packaging/edge`): click,
the settings, the JSON logs and the signal runner; the server (and uvloop, the loop it
runs on) is imported when it runs.
"""

from __future__ import annotations

from typing import Any

import click

from edge.settings import EdgeSettings
from quotaflow import __version__
from quotaflow.logs import setup_logging
from quotaflow.runner import run_until_signalled


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="quotaflow-edge")
@click.option("--region", help="Region of this node (QUOTAFLOW_REGION).")
@click.option("--port", type=int, help="Listen port (QUOTAFLOW_EDGE_PORT).")
def edge(region: str | None, port: int | None) -> None:
    """Run an edge sidecar: receives signed pushes, answers quota checks locally."""
    import uvloop

    from edge.server import serve

    overrides: dict[str, Any] = {"region": region, "edge_port": port}
    settings = EdgeSettings(**{k: v for k, v in overrides.items() if v is not None})
    setup_logging(settings.log_level)
    # uvloop: with the hot routes on the light face (edge/fastpath.py) the event loop's own
    # work is a large share of a request, and uvloop's costs less (BENCHMARKS.md, issue 14).
    run_until_signalled(lambda stop: serve(settings, stop), loop_factory=uvloop.new_event_loop)


def main() -> None:
    """The `quotaflow-edge` console script."""
    edge()


if __name__ == "__main__":
    main()
