"""Runs quotaflow components as real processes through the documented command line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import orjson

from edge.auth import generate_app_token, token_digest
from quotaflow.localkafka import port_open

# The calling application every test edge accepts (consume, check and quota reads need a
# credential): edges get its digest through `edge_auth_env()`, clients send `EDGE_AUTH`.
EDGE_APP = "tests"
EDGE_TOKEN = generate_app_token()
EDGE_AUTH = {"Authorization": f"Bearer {EDGE_TOKEN}"}


def edge_auth_env() -> dict[str, str]:
    """The setting that lets `EDGE_AUTH` in at an edge process (a digest, not the token)."""
    digests = {EDGE_APP: token_digest(EDGE_TOKEN)}
    return {"QUOTAFLOW_EDGE_APP_TOKENS": orjson.dumps(digests).decode()}


class Component:
    """One `quotaflow <verb>` process with its output in a log file."""

    def __init__(self, args: list[str], env: Mapping[str, str], log: Path) -> None:
        self.args = args
        self.log = log
        self._out = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "quotaflow.cli", *args],
            env={**os.environ, **env},
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def wait_port(self, port: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.args} exited {self.proc.returncode}: {self.tail()}")
            if port_open(port):
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.args} did not listen on {port}: {self.tail()}")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._out.close()
        return self.proc.returncode


@contextmanager
def components(env: Mapping[str, str], logdir: Path) -> Iterator[list[Component]]:
    """A list to start components into; all are stopped, newest first, on exit."""
    started: list[Component] = []
    try:
        yield started
    finally:
        for component in reversed(started):
            component.stop()


def start(
    started: list[Component], args: list[str], env: Mapping[str, str], logdir: Path
) -> Component:
    component = Component(args, env, logdir / f"{'-'.join(args)}.log")
    started.append(component)
    return component
