"""`quotaflow ingress --workers 2`: two processes on one port, both answering, metrics
summed over both, and one SIGTERM stopping them all gracefully."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import requests

from quotaflow.commands.localkafka import free_port, port_open
from quotaflow.commands.workers import default_workers
from quotaflow.registry import dump_tenants
from quotaflow.settings import Settings
from tests.ingress.conftest import event_body, make_tenant, signed

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_default_is_one_worker_per_usable_core_within_the_cgroup_quota(tmp_path: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("max 100000\n")
    assert default_workers(cpu_max) == cores
    cpu_max.write_text("50000 100000\n")
    assert default_workers(cpu_max) == 1
    cpu_max.write_text(f"{(cores + 8) * 100000} 100000\n")
    assert default_workers(cpu_max) == cores
    assert default_workers(tmp_path / "absent") == cores


def test_two_workers_share_one_port_and_stop_together(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = settings_factory()
    tenants = tmp_path / "tenants.json"
    tenants.write_bytes(dump_tenants([make_tenant("acme")]))
    port = free_port()
    env = {
        **os.environ,
        "QUOTAFLOW_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "QUOTAFLOW_TOPIC_PREFIX": settings.topic_prefix,
        "QUOTAFLOW_PARTITIONS": "2",
        "QUOTAFLOW_TENANTS_FILE": str(tenants),
        "QUOTAFLOW_LOG_LEVEL": "INFO",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = tmp_path / "ingress.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "quotaflow.commands.cli",
                "ingress",
                "--workers",
                "2",
                "--port",
                str(port),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while log.read_text().count('"ingress listening"') < 2:
                assert proc.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.1)
            url = f"http://127.0.0.1:{port}"
            while requests.get(f"{url}/readyz", timeout=5).status_code != 200:
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.2)
            for i in range(40):  # a new connection each: the kernel spreads them
                body = event_body(f"evt_{i}")
                headers = {**signed(body, "whsec_acme_secret"), "Connection": "close"}
                resp = requests.post(
                    f"{url}/v1/webhooks/stripe/acme", data=body, headers=headers, timeout=10
                )
                assert resp.status_code == 200, resp.text
            lines = [orjson.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
            answered = {d["pid"] for d in lines if d.get("msg") == "webhook"}
            listening = {d["pid"] for d in lines if d.get("msg") == "ingress listening"}
            assert len(answered) == 2
            assert answered == listening
            for _ in range(3):  # whichever worker answers, the counts are both workers'
                page = requests.get(f"{url}/metrics", headers={"Connection": "close"}, timeout=5)
                found = re.search(
                    r'^quotaflow_ingress_webhooks_total\{outcome="accepted",'
                    r'reason="published",route="tenant"\} (\S+)$',
                    page.text,
                    re.M,
                )
                assert found is not None, page.text[:2000]
                assert float(found.group(1)) == 40.0
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=40)
    assert code == 0, log.read_text()[-3000:]
    assert not any(_alive(pid) for pid in listening)
    assert log.read_text().count('"ingress stopping"') == 2
    assert not port_open(port)
