"""A real single-node Apache Kafka broker (KRaft) from Maven Central jars, without Docker.

`fetch()` resolves the broker's jars once into a cache outside the repository
(`~/.cache/quotaflow/kafka-<version>`); `LocalKafka` formats a log directory and runs
`kafka.Kafka` as a child process bound to 127.0.0.1. Topic auto-creation is off, so code
that forgets to create its topics fails here as it would in production.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from quotaflow.exceptions import QuotaflowError

CACHE_DIR = Path(os.environ.get("QUOTAFLOW_CACHE", Path.home() / ".cache" / "quotaflow"))
_POM = resources.files("quotaflow.commands.kafka").joinpath("pom.xml")
_LOG4J = resources.files("quotaflow.commands.kafka").joinpath("log4j2.properties")


class LocalKafkaError(QuotaflowError):
    """The local broker could not be fetched, started or stopped."""


def kafka_version() -> str:
    match = re.search(r"<kafka.version>([^<]+)</kafka.version>", _POM.read_text())
    if match is None:
        raise LocalKafkaError("pom.xml names no kafka.version")
    return match.group(1)


def jars_dir() -> Path:
    return CACHE_DIR / f"kafka-{kafka_version()}" / "jars"


def fetch() -> Path:
    """Resolves the broker jars with Maven once; later calls download nothing."""
    target = jars_dir()
    marker = target / ".complete"
    if marker.exists():
        return target
    if shutil.which("mvn") is None:
        raise LocalKafkaError("Maven (mvn) is needed to fetch the Kafka jars")
    work = target.parent / "pom"
    work.mkdir(parents=True, exist_ok=True)
    (work / "pom.xml").write_text(_POM.read_text())
    subprocess.run(
        [
            "mvn",
            "-B",
            "-q",
            "-f",
            str(work / "pom.xml"),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={target}",
        ],
        check=True,
        timeout=900,
    )
    marker.touch()
    return target


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class LocalKafka:
    """One broker+controller process; `start()` returns once clients can connect."""

    directory: Path
    port: int = 9092
    controller_port: int = 0
    heap: str = "512m"
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.directory / "kafka.pid"

    @property
    def log_file(self) -> Path:
        return self.directory / "kafka.log"

    def _write_config(self) -> Path:
        if not self.controller_port:
            self.controller_port = free_port()
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},"
            f"CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.directory / "data"),
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
            "log.cleaner.backoff.ms": "1000",
        }
        path = self.directory / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.directory / "log4j2.properties").write_text(_LOG4J.read_text())
        return path

    def _java(self, jars: Path, *args: str, heap: bool = False) -> list[str]:
        opts = [f"-Xms{self.heap}", f"-Xmx{self.heap}", "-XX:+UseSerialGC"] if heap else []
        return [
            "java",
            *opts,
            "-cp",
            f"{jars}/*",
            f"-Dlog4j2.configurationFile={self.directory / 'log4j2.properties'}",
            *args,
        ]

    def start(self, timeout: float = 60.0) -> None:
        """Formats the log directory on first use, starts the broker and waits for it."""
        if port_open(self.port):
            raise LocalKafkaError(f"port {self.port} is already in use")
        jars = fetch()
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        cluster_file = self.directory / "cluster.id"
        if not cluster_file.exists():
            cluster_id = subprocess.run(
                self._java(jars, "kafka.tools.StorageTool", "random-uuid"),
                check=True,
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout.strip()
            cluster_file.write_text(cluster_id)
        subprocess.run(
            self._java(
                jars,
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_file.read_text().strip(),
                "-c",
                str(config),
                "--ignore-formatted",
            ),
            check=True,
            capture_output=True,
            timeout=60,
        )
        with self.log_file.open("ab") as log:  # the child keeps its own descriptor
            self._proc = subprocess.Popen(
                self._java(jars, "kafka.Kafka", str(config), heap=True),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid_file.write_text(str(self._proc.pid))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise LocalKafkaError(
                    f"broker exited with {self._proc.returncode}; see {self.log_file}"
                )
            if port_open(self.port):
                return
            time.sleep(0.2)
        self.stop()
        raise LocalKafkaError(f"broker did not answer within {timeout:.0f}s; see {self.log_file}")

    def running_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def stop(self, timeout: float = 20.0) -> bool:
        """Stops the broker this object (or `quotaflow kafka start`) started; True if it ran."""
        pid = self._proc.pid if self._proc is not None else self.running_pid()
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid, self._proc):
            time.sleep(0.1)
        if _alive(pid, self._proc):
            os.killpg(pid, signal.SIGKILL)
            if self._proc is not None:
                self._proc.wait(timeout=10)
        self.pid_file.unlink(missing_ok=True)
        self._proc = None
        return True

    def kill(self) -> None:
        """SIGKILL, for tests that cut the broker off."""
        if self._proc is not None:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout=10)
            self._proc = None


def _alive(pid: int, proc: subprocess.Popen[bytes] | None) -> bool:
    if proc is not None:
        return proc.poll() is None
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True
