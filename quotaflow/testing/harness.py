"""The one harness that runs quotaflow as processes: for `quotaflow dev`, the tests and the
benches alike.

It holds what those three used to define each for itself: a child process with its output
in a log file (`Process`) and a group stopped newest first (`processes`), free ports and
readiness (a port that listens, an URL that answers 200, any condition: `wait_until` and
its async twin `eventually`, each with a timeout and a message saying what was awaited),
topic creation for a bench's own topics, and the pipeline's shared environment: fresh
Ed25519 keys per region (`RegionKeys`: every process gets the public keys, only a region's
pusher its private push key and only its edge nodes its private edge key, as deployed),
application-token digests for the edges, and the variables every component reads
(`pipeline_env`). What differs stays with each caller: `quotaflow dev` prints its demo,
`tests/reliability/stack.py` looks inside the edges, `bench/stack.py` runs instrumented
edge nodes.

Imports only the standard library, orjson, `wire` and light quotaflow modules (the Kafka
client only inside `create_topics`): `quotaflow dev` loads it at run time, and a bench
loads it before it decides what to start.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Self, TypeVar, overload

import orjson

from edge.auth import token_digest
from quotaflow.commands.localkafka import free_port, port_open
from quotaflow.testing.processes import stop_process
from wire import generate_keypair, public_key_of

__all__ = [
    "QUOTAFLOW",
    "Process",
    "RegionKeys",
    "WaitTimeout",
    "app_tokens_env",
    "create_topics",
    "edge_nodes_env",
    "eventually",
    "free_port",
    "pipeline_env",
    "port_open",
    "processes",
    "start_quotaflow",
    "wait_http",
    "wait_port",
    "wait_until",
]

T = TypeVar("T")

# `quotaflow <verb>` exactly as an operator runs it, from this interpreter.
QUOTAFLOW = (sys.executable, "-m", "quotaflow.commands.cli")


# --- waiting on a condition ------------------------------------------------------------


class WaitTimeout(AssertionError):
    """A condition did not hold within its timeout. An AssertionError, so a test that waits
    fails the way a failed assertion does, with the message saying what it waited for."""


def _timed_out(what: str, timeout: float, detail: Callable[[], str] | None) -> WaitTimeout:
    extra = ""
    if detail is not None:
        try:
            extra = f": {detail()}"
        except Exception as exc:  # noqa: BLE001 - the detail must not hide the time-out
            extra = f" (no detail: {exc!r})"
    return WaitTimeout(f"timed out after {timeout:g}s waiting until {what}{extra}")


def wait_until(
    condition: Callable[[], T],
    *,
    timeout: float,
    what: str,
    interval: float = 0.1,
    detail: Callable[[], str] | None = None,
) -> T:
    """Calls `condition` until it returns something truthy, and returns that.

    Raises `WaitTimeout` naming `what` (and `detail()`, the state worth seeing when it
    failed) once `timeout` seconds passed. An exception from `condition` is not retried:
    a process that died should fail the wait at once, not after the timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout, detail)
        time.sleep(interval)


@overload
async def eventually(
    condition: Callable[[], Awaitable[T]],
    *,
    timeout: float,
    what: str,
    interval: float = ...,
    detail: Callable[[], str] | None = ...,
) -> T: ...


@overload
async def eventually(
    condition: Callable[[], T],
    *,
    timeout: float,
    what: str,
    interval: float = ...,
    detail: Callable[[], str] | None = ...,
) -> T: ...


async def eventually(
    condition: Callable[[], Any],
    *,
    timeout: float,
    what: str,
    interval: float = 0.1,
    detail: Callable[[], str] | None = None,
) -> Any:
    """`wait_until` on the event loop: `condition` is a plain or an async callable (a
    coroutine's run is bounded by what is left of `timeout`, so a condition that hangs
    fails the wait too); the loop is never blocked between tries."""
    deadline = time.monotonic() + timeout
    while True:
        left = max(0.001, deadline - time.monotonic())
        try:
            async with asyncio.timeout(left):
                value = condition()
                result = await value if inspect.isawaitable(value) else value
        except TimeoutError:
            raise _timed_out(what, timeout, detail) from None
        if result:
            return result
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout, detail)
        await asyncio.sleep(interval)


# --- processes -------------------------------------------------------------------------


class Process:
    """A child process with its output (stdout and stderr) appended to a log file.

    `stop()` sends SIGTERM once and waits, then SIGKILLs; `kill()` SIGKILLs at once, as a
    crash test does. `check()` raises with the log's tail if the process exited.
    """

    STOP_TIMEOUT = 20.0

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        log: Path,
        *,
        cwd: Path | None = None,
    ) -> None:
        self.args = list(argv)
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._out: IO[bytes] = log.open("ab")
        self.started = time.monotonic()
        self._terminated = False
        self.proc = subprocess.Popen(
            self.args,
            env={**os.environ, **env},
            stdout=self._out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
        )

    @classmethod
    def quotaflow(cls, verb: Sequence[str], env: Mapping[str, str], logdir: Path) -> Self:
        """`quotaflow <verb>`, logging to `<logdir>/<verb words>.log`."""
        return cls([*QUOTAFLOW, *verb], env, logdir / f"{'-'.join(verb)}.log")

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def check(self) -> None:
        """Raises if the process has exited (with the end of its log)."""
        if not self.alive():
            raise RuntimeError(f"{self.args} exited {self.proc.returncode}:\n{self.tail()}")

    def wait_port(self, port: int, timeout: float = 60.0) -> None:
        """Waits until something listens on `port`; fails early if this process exits."""
        wait_port(port, timeout, self)

    def wait_http(self, url: str, timeout: float = 60.0) -> None:
        """Waits until `url` answers 200; fails early if this process exits."""
        wait_http(url, timeout, self)

    def terminate(self) -> None:
        """Sends SIGTERM once (a second one may cut a graceful shutdown short)."""
        if self.alive() and not self._terminated:
            self._terminated = True
            self.proc.terminate()

    def stop(self, timeout: float | None = None) -> int:
        """SIGTERM (unless sent already), then SIGKILL after `timeout`; the exit code."""
        self.terminate()
        stop_process(self.proc, self.STOP_TIMEOUT if timeout is None else timeout)
        self._out.close()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL now, as a crash."""
        if self.alive():
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._out.close()


@contextlib.contextmanager
def processes() -> Iterator[list[Process]]:
    """A list to start processes into; all are stopped, newest first, on exit (a failure
    to stop one does not keep the others running)."""
    started: list[Process] = []
    try:
        yield started
    finally:
        for proc in reversed(started):
            with contextlib.suppress(Exception):
                proc.stop()


def start_quotaflow(
    started: list[Process], verb: list[str], env: Mapping[str, str], logdir: Path
) -> Process:
    """`quotaflow <verb>` into `started`, logging to `<logdir>/<verb words>.log`."""
    proc = Process.quotaflow(verb, env, logdir)
    started.append(proc)
    return proc


# --- readiness -------------------------------------------------------------------------


def _check(proc: Process | None) -> Callable[[], str] | None:
    return None if proc is None else proc.tail


def wait_port(port: int, timeout: float = 60.0, proc: Process | None = None) -> None:
    """Waits until something listens on 127.0.0.1:`port` (raises if `proc` exits)."""

    def listening() -> bool:
        if proc is not None:
            proc.check()
        return port_open(port)

    what = f"{proc.args if proc else 'something'} listens on {port}"
    wait_until(listening, timeout=timeout, what=what, detail=_check(proc))


def _answers_200(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2.0) as response:  # noqa: S310 - loopback
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait_http(url: str, timeout: float = 60.0, proc: Process | None = None) -> None:
    """Waits until `url` answers 200 (raises if `proc` exits)."""

    def ready() -> bool:
        if proc is not None:
            proc.check()
        return _answers_200(url)

    wait_until(ready, timeout=timeout, what=f"{url} answers 200", detail=_check(proc))


# --- the pipeline's environment --------------------------------------------------------


def _json(doc: object) -> str:
    return orjson.dumps(doc).decode()


def _public_keys(private: Mapping[str, str]) -> str:
    return _json({region: [public_key_of(key)] for region, key in private.items()})


@dataclass
class RegionKeys:
    """Private Ed25519 keys per region: a push key and an edge key each (fresh by default).

    The dicts may be changed in place (a test adds a region's key); every environment is
    computed from them when asked.
    """

    push: dict[str, str] = field(default_factory=dict)
    edge: dict[str, str] = field(default_factory=dict)

    @classmethod
    def fresh(cls, regions: Sequence[str]) -> RegionKeys:
        return cls(
            push={r: generate_keypair()[0] for r in regions},
            edge={r: generate_keypair()[0] for r in regions},
        )

    def public_env(self) -> dict[str, str]:
        """The verify keys of every region: public, every process may have them."""
        return {
            "QUOTAFLOW_PUSH_VERIFY_KEYS": _json(
                {r: [public_key_of(k)] for r, k in self.push.items()}
            ),
            "QUOTAFLOW_EDGE_VERIFY_KEYS": _json(
                {r: [public_key_of(k)] for r, k in self.edge.items()}
            ),
        }

    def pusher_env(self, region: str) -> dict[str, str]:
        """The one private key a `push --region` process signs with."""
        return {"QUOTAFLOW_PUSH_SIGNING_KEYS": _json({region: [self.push[region]]})}

    def edge_env(self, region: str) -> dict[str, str]:
        """The one private key an edge node of `region` signs its reports with."""
        return {"QUOTAFLOW_EDGE_SIGNING_KEYS": _json([self.edge[region]])}

    def signer_env(self, verb: Sequence[str]) -> dict[str, str]:
        """The private key of a `push --region R` or `edge --region R` verb; {} otherwise."""
        if verb[0] not in ("push", "edge"):
            return {}
        region = verb[list(verb).index("--region") + 1]
        return self.pusher_env(region) if verb[0] == "push" else self.edge_env(region)


def app_tokens_env(tokens: Mapping[str, str]) -> dict[str, str]:
    """What lets applications (name -> token) in at an edge: digests, never the tokens."""
    return {"QUOTAFLOW_EDGE_APP_TOKENS": _json({a: token_digest(t) for a, t in tokens.items()})}


def edge_nodes_env(nodes: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """The configured edge nodes (region -> URLs) every pusher pushes to."""
    return {"QUOTAFLOW_EDGE_NODES": _json({r: list(urls) for r, urls in nodes.items()})}


def pipeline_env(
    *,
    bootstrap: str,
    tenants_file: Path,
    data_dir: Path,
    store: str = "memory://",
    stripe_api: str | None = None,
    topic_prefix: str | None = None,
    partitions: int | None = None,
    app_id: str | None = None,
) -> dict[str, str]:
    """The variables every component of one pipeline shares.

    `stripe_api`: the Stripe API the worker fetches from, with the fetch on as in
    production; None turns the fetch off (snapshot mode). The topic prefix, partitions
    and application id are left to their defaults unless given.
    """
    env = {
        "QUOTAFLOW_KAFKA_BOOTSTRAP": bootstrap,
        "QUOTAFLOW_DATA_DIR": str(data_dir),
        "QUOTAFLOW_STORE": store,
        "QUOTAFLOW_TENANTS_FILE": str(tenants_file),
    }
    if stripe_api is None:
        env["QUOTAFLOW_STRIPE_FETCH"] = "false"
    else:
        env |= {"QUOTAFLOW_STRIPE_FETCH": "true", "QUOTAFLOW_STRIPE_API_BASE": stripe_api}
    if topic_prefix is not None:
        env["QUOTAFLOW_TOPIC_PREFIX"] = topic_prefix
    if partitions is not None:
        env["QUOTAFLOW_PARTITIONS"] = str(partitions)
    if app_id is not None:
        env["QUOTAFLOW_APP_ID"] = app_id
    return env


# --- topics ----------------------------------------------------------------------------


async def create_topics(
    bootstrap: str, specs: Sequence[tuple[str, int, Mapping[str, str]]], timeout: float = 30.0
) -> None:
    """Creates (name, partitions, config) topics, replication 1: a bench's own topics (the
    pipeline's are created by `quotaflow.topics.ensure_topics`)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
    async with asyncio.timeout(timeout):
        await admin.start()
        try:
            await admin.create_topics(
                [NewTopic(n, p, 1, topic_configs=dict(c)) for n, p, c in specs]
            )
        finally:
            await admin.close()
