"""Constant-rate HTTP load for the edge and gateway benches, from vegeta.

Why not our own asyncio client: asyncio's timers round each wait to about 1 ms, so an
open-loop client that sleeps between sends wakes late, and the lateness lands in the
latency measured from the scheduled send. vegeta (pinned, built by
scripts/install-deploy-tools.sh) paces from Go's runtime with one goroutine per request in
flight, keeps every result, and is a tool a reader knows.

What vegeta calls latency starts when a worker begins the request, not at the time the
pacer meant it to start (lib/attack.go: `res.Timestamp` is taken in `hit`). So this
module reads every result (`vegeta encode -to csv`: start time, sequence number, latency)
and adds the lateness itself: request `seq` was intended at `t0 + seq / rate` (vegeta's
constant pacer), `t0` the first request's start. `from_intended` is lateness + latency
(open loop, no coordinated omission, as wrk2 counts); `from_start` is vegeta's own figure.
vegeta's JSON report (its percentiles of `from_start`) is kept beside them.
"""

from __future__ import annotations

import base64
import csv
import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

VEGETA_VERSION = "v12.13.0"  # as pinned in scripts/install-deploy-tools.sh
TOOLS_BIN = Path(
    os.environ.get("QUOTAFLOW_TOOLS_BIN", Path.home() / ".cache" / "quotaflow" / "bin")
)


@dataclass(frozen=True)
class Request:
    """One target: vegeta cycles through the list it is given."""

    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass
class Attack:
    """Every answered request of one attack, in seconds."""

    from_intended: list[float]
    from_start: list[float]
    elapsed: float
    report: dict[str, Any]


def vegeta() -> Path:
    """The vegeta binary (QUOTAFLOW_VEGETA, else $QUOTAFLOW_TOOLS_BIN/vegeta); missing fails."""
    binary = Path(os.environ.get("QUOTAFLOW_VEGETA", TOOLS_BIN / "vegeta"))
    if not os.access(binary, os.X_OK):
        raise SystemExit(f"{binary} missing: run `make tools` (scripts/install-deploy-tools.sh)")
    return binary


def _run(args: list[str], timeout: float) -> bytes:
    done = subprocess.run(args, capture_output=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{args[1]} failed: {done.stderr.decode(errors='replace')[-500:]}")
    return done.stdout


def attack(
    requests: list[Request],
    rate: float,
    seconds: float,
    connections: int,
    expect: bytes | None = None,
) -> Attack:
    """`rate` req/s for `seconds` over at most `connections` keep-alive connections.

    Exactly `rate * seconds` requests count: vegeta runs 20 ms longer (a pacer running
    late at the end would otherwise stop one short) and the requests past the count
    are dropped by sequence number. Every answer must be a 200 (and contain
    `expect`, if given): a bench that measured errors would measure the wrong thing."""
    binary = vegeta()
    with tempfile.TemporaryDirectory(prefix="loadgen-") as tmp:
        targets, results = Path(tmp) / "targets.json", Path(tmp) / "results.bin"
        targets.write_bytes(
            b"\n".join(
                orjson.dumps(
                    {
                        "method": r.method,
                        "url": r.url,
                        "header": {k: [v] for k, v in r.headers.items()},
                        "body": base64.b64encode(r.body).decode(),
                    }
                )
                for r in requests
            )
            + b"\n"
        )
        _run(
            [
                str(binary),
                "attack",
                "-format=json",
                f"-targets={targets}",
                f"-rate={rate:g}/1s",
                f"-duration={seconds + 0.02:g}s",
                f"-connections={connections}",
                f"-max-connections={connections}",
                "-timeout=10s",
                f"-output={results}",
            ],
            timeout=seconds + 60,
        )
        report = orjson.loads(_run([str(binary), "report", "-type=json", str(results)], 60))
        rows = list(
            csv.reader(
                _run([str(binary), "encode", "-to=csv", str(results)], 60).decode().splitlines()
            )
        )
    rows = [row for row in rows if int(row[8]) < int(rate * seconds)]
    if not rows:
        raise RuntimeError("vegeta sent nothing")
    for row in rows:
        code, error, body = row[1], row[5], base64.b64decode(row[6])
        if code != "200" or error or (expect is not None and expect not in body):
            raise RuntimeError(f"unexpected answer: {code} {error} {body[:80]!r}")
    starts = [int(row[0]) for row in rows]
    t0 = min(starts)
    from_intended, from_start = [], []
    for row, start in zip(rows, starts, strict=True):
        latency = int(row[2])
        intended = t0 + int(row[8]) * 1e9 / rate
        from_intended.append((max(0.0, start - intended) + latency) / 1e9)
        from_start.append(latency / 1e9)
    ends = [s + int(row[2]) for s, row in zip(starts, rows, strict=True)]
    return Attack(from_intended, from_start, (max(ends) - t0) / 1e9, report)


def report_ms(report: dict[str, Any]) -> dict[str, float]:
    """vegeta's own JSON report: its percentiles (of `from_start`) in ms, and its rate."""
    latencies = report.get("latencies", {})
    return {
        f"{key}_ms": round(latencies[key] / 1e6, 3)
        for key in ("50th", "90th", "99th", "max")
        if key in latencies
    } | {"rate": round(report.get("rate", 0.0), 1), "success": report.get("success")}
