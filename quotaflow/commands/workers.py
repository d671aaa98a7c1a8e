"""Several processes of one component on one port (`quotaflow ingress --workers N`).

The parent only supervises: it starts `count` children (spawned, so each has its own
interpreter, event loop and Kafka producer), each binding the same port with
`SO_REUSEPORT` so the kernel spreads connections over them. A SIGTERM or SIGINT to the
parent is passed on to every child, which stops gracefully (in-flight requests finish,
the producer flushes); the parent waits for all of them, killing none unless one
outlives `stop_timeout`. If one child dies on its own, the parent stops the others and
exits non-zero, so the orchestrator restarts the whole set (no half-sized pod).

Metrics aggregate through prometheus_client's multiprocess mode: the parent gives the
children a fresh `PROMETHEUS_MULTIPROC_DIR` (unless one is set), every child's /metrics
answers with the sum over all children.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

__all__ = ["MULTIPROC_ENV", "default_workers", "run_workers"]

log = logging.getLogger("quotaflow.workers")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_POLL = 0.2


def default_workers(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota
    (a container limited to 2 CPUs on a 32-core node runs 2 workers, not 32); at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def run_workers(target: Callable[[int], None], count: int, *, stop_timeout: float = 30.0) -> int:
    """Runs `target(index)` in `count` spawned processes until a signal; the exit code."""
    own_dir = None
    if not os.environ.get(MULTIPROC_ENV):
        own_dir = tempfile.mkdtemp(prefix="quotaflow-metrics-")
        os.environ[MULTIPROC_ENV] = own_dir
    stopping = False

    def ask_stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, ask_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    context = multiprocessing.get_context("spawn")
    children: list[BaseProcess] = []
    code = 0
    try:
        for index in range(count):
            spawned = context.Process(target=target, args=(index,), name=f"worker-{index}")
            spawned.start()
            children.append(spawned)
        log.info("workers started", extra={"workers": count, "pids": [c.pid for c in children]})
        while not stopping:
            dead = [c for c in children if not c.is_alive()]
            if dead:
                log.error(
                    "a worker exited on its own; stopping the others",
                    extra={"pid": dead[0].pid, "exitcode": dead[0].exitcode},
                )
                code = 1
                break
            time.sleep(_POLL)
    finally:
        for child in children:
            if child.is_alive() and child.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + stop_timeout
        for child in children:
            child.join(max(0.0, deadline - time.monotonic()))
            if child.is_alive():
                log.error("a worker did not stop in time; killing it", extra={"pid": child.pid})
                child.kill()
                child.join()
                code = 1
            elif child.exitcode not in (0, None) and not stopping:
                code = 1
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)
            os.environ.pop(MULTIPROC_ENV, None)
    return code
