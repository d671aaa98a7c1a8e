"""`python -m tests.ops.worker_web_main PORT`: the worker wired as quotaflow/commands/cli.py's
`worker --web-port PORT` is meant to wire it (create_app without Faust's web, then
attach_worker_web), so the test runs exactly that composition as a real process."""

from __future__ import annotations

import asyncio
import sys

import faust

from quotaflow.logs import setup_logging
from quotaflow.settings import Settings
from quotaflow.topics import ensure_topics
from streams.app import create_app
from streams.worker_web import WorkerMetrics, attach_worker_web


def main(port: int) -> None:
    settings = Settings()
    setup_logging(settings.log_level)
    asyncio.run(ensure_topics(settings))
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    metrics = WorkerMetrics()
    app = create_app(
        settings,
        stripe_reader=metrics.stripe_reader(settings),
        web_port=None,
        observe=metrics.observe,
    )
    attach_worker_web(app, settings, port, metrics=metrics)
    faust.Worker(app, loglevel=settings.log_level, quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main(int(sys.argv[1]))
