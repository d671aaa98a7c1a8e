"""Stripe test peers as separate processes on 127.0.0.1: stripe-mock and localstripe.

localstripe is GPL-licensed: it runs in its own virtualenv and process and is never
imported here. Its own command binds every interface, so a one-line launcher runs its
aiohttp app on loopback instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from quotaflow.commands.localkafka import CACHE_DIR, free_port, port_open
from quotaflow.testing.processes import stop_process

LOCALSTRIPE_LAUNCHER = (
    "import sys, aiohttp.web as web; from localstripe.server import app; "
    "web.run_app(app, host='127.0.0.1', port=int(sys.argv[1]), print=None)"
)


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        if port_open(port):
            return
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout}s")


def stripe_mock_binary() -> str:
    """The stripe-mock the Makefile installed; a missing tool is an error, never a skip."""
    path = os.environ.get("QUOTAFLOW_STRIPE_MOCK") or shutil.which("stripe-mock")
    if not path or not Path(path).exists():
        raise RuntimeError("stripe-mock is not installed: run `make tools` (or `make test`)")
    return path


def localstripe_python() -> str:
    path = os.environ.get("QUOTAFLOW_LOCALSTRIPE_PYTHON") or str(
        CACHE_DIR / "localstripe-venv" / "bin" / "python"
    )
    if not Path(path).exists():
        raise RuntimeError("localstripe is not installed: run `make tools` (or `make test`)")
    return path


@contextmanager
def run_stripe_mock() -> Iterator[str]:
    """Yields the base URL of a stripe-mock on loopback."""
    port = free_port()
    proc = subprocess.Popen(
        # Without -https-addr it also binds HTTPS on :12112 on every interface.
        [
            stripe_mock_binary(),
            "-http-addr",
            f"127.0.0.1:{port}",
            "-https-addr",
            f"127.0.0.1:{free_port()}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_port(port, proc, "stripe-mock")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)


@contextmanager
def run_localstripe(workdir: Path) -> Iterator[str]:
    """Yields the base URL of a localstripe on loopback (store starts empty)."""
    port = free_port()
    proc = subprocess.Popen(
        [localstripe_python(), "-c", LOCALSTRIPE_LAUNCHER, str(port)],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_port(port, proc, "localstripe")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)
