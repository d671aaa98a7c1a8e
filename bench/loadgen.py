"""Constant-rate HTTP load for the edge and gateway benches: openloop, or vegeta beside it.

Why not our own asyncio client: asyncio's timers round each wait to about 1 ms, so an
open-loop client that sleeps between sends wakes late, and the lateness lands in the
latency measured from the scheduled send.

`openloop` (bench/openloop.c, compiled here on first use with the machine's `cc`) is the
default: one thread, epoll and a timerfd armed at each intended send time. It exists
because vegeta's own CPU (about 170 us a request, twice the sidecar's) set the floor of
what the 2-vCPU bench machine could show: NGINX's static 200 measured p99 2.8-4.6 ms under
vegeta and 0.5-0.8 ms under openloop in the same session. It writes, per request, the
intended, written and answered times, so `from_intended` (open loop, no coordinated
omission, as wrk2 counts) and `from_start` come straight from it.

`vegeta` (pinned, built by scripts/install-deploy-tools.sh) is kept as a client a reader
knows, for a cross-check. What vegeta calls latency starts when a worker begins the
request, not at the time the pacer meant it to start (lib/attack.go: `res.Timestamp` is
taken in `hit`). So this module reads every result (`vegeta encode -to csv`: start time,
sequence number, latency) and adds the lateness itself: request `seq` was intended at
`t0 + seq / rate` (vegeta's constant pacer), `t0` the first request's start. vegeta's
JSON report (its percentiles of `from_start`) is kept beside them.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import orjson

VEGETA_VERSION = "v12.13.0"  # as pinned in scripts/install-deploy-tools.sh
TOOLS_BIN = Path(
    os.environ.get("QUOTAFLOW_TOOLS_BIN", Path.home() / ".cache" / "quotaflow" / "bin")
)
OPENLOOP_SOURCE = Path(__file__).with_name("openloop.c")
Client = Literal["openloop", "vegeta"]


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
    report: dict[str, Any]  # vegeta's own JSON report; empty from openloop


def vegeta() -> Path:
    """The vegeta binary (QUOTAFLOW_VEGETA, else $QUOTAFLOW_TOOLS_BIN/vegeta); missing fails."""
    binary = Path(os.environ.get("QUOTAFLOW_VEGETA", TOOLS_BIN / "vegeta"))
    if not os.access(binary, os.X_OK):
        raise SystemExit(f"{binary} missing: run `make tools` (scripts/install-deploy-tools.sh)")
    return binary


def client_name(client: Client) -> str:
    """How a result names the client that measured it."""
    return f"vegeta {VEGETA_VERSION}" if client == "vegeta" else "openloop"


def openloop() -> Path:
    """The openloop binary for bench/openloop.c as it is now, compiled once per version of
    the source (its hash names the binary) into $QUOTAFLOW_TOOLS_BIN; no `cc` fails."""
    source = OPENLOOP_SOURCE.read_bytes()
    binary = TOOLS_BIN / f"openloop-{hashlib.sha256(source).hexdigest()[:12]}"
    if os.access(binary, os.X_OK):
        return binary
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise SystemExit("cc missing: bench/openloop.c needs a C compiler (apt-get install gcc)")
    TOOLS_BIN.mkdir(parents=True, exist_ok=True)
    partial = binary.with_suffix(f".{os.getpid()}")
    done = subprocess.run(
        [compiler, "-O2", "-Wall", "-o", str(partial), str(OPENLOOP_SOURCE)],
        capture_output=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"building openloop failed: {done.stderr.decode(errors='replace')}")
    partial.replace(binary)  # atomic: a concurrent bench sees the whole binary or none
    return binary


def _run(args: list[str], timeout: float) -> bytes:
    """A client's stdout; a non-zero exit raises with the end of what it said."""
    done = subprocess.run(args, capture_output=True, timeout=timeout, check=False)
    if done.returncode != 0:
        name = f"{Path(args[0]).name} {args[1]}"
        raise RuntimeError(f"{name} failed: {done.stderr.decode(errors='replace')[-500:]}")
    return done.stdout


def attack(
    requests: list[Request],
    rate: float,
    seconds: float,
    connections: int,
    expect: bytes | None = None,
    client: Client = "openloop",
) -> Attack:
    """`rate` req/s for `seconds` over `connections` keep-alive connections, from `client`.

    Exactly `rate * seconds` requests count, and every answer must be a 200 (and contain
    `expect`, if given): a bench that measured errors would measure the wrong thing."""
    if client == "vegeta":
        return _attack_vegeta(requests, rate, seconds, connections, expect)
    return _attack_openloop(requests, rate, seconds, connections, expect)


def _raw(request: Request) -> tuple[int, bytes]:
    """The request's port (loopback only) and its bytes on the wire."""
    url = urlsplit(request.url)
    if url.hostname != "127.0.0.1" or url.port is None:
        raise ValueError(f"openloop sends to 127.0.0.1:<port> only, not {request.url}")
    path = url.path + (f"?{url.query}" if url.query else "")
    head = [f"{request.method} {path} HTTP/1.1", f"Host: {url.netloc}"]
    head += [f"{name}: {value}" for name, value in request.headers.items()]
    if request.body or request.method in ("POST", "PUT", "PATCH"):
        head.append(f"Content-Length: {len(request.body)}")
    return url.port, ("\r\n".join(head) + "\r\n\r\n").encode() + request.body


def _attack_openloop(
    requests: list[Request],
    rate: float,
    seconds: float,
    connections: int,
    expect: bytes | None,
) -> Attack:
    binary = openloop()
    total = round(rate * seconds)
    raws = [_raw(r) for r in requests]
    ports = {port for port, _ in raws}
    if len(ports) != 1:
        raise ValueError(f"one port per attack, not {sorted(ports)}")
    if expect is not None and (b"\0" in expect or not expect.isascii()):
        raise ValueError("expect: ASCII without NUL (it travels as an argument)")
    with tempfile.TemporaryDirectory(prefix="loadgen-") as tmp:
        targets, results = Path(tmp) / "requests", Path(tmp) / "results.txt"
        targets.write_bytes(b"".join(b"%d\n" % len(raw) + raw for _, raw in raws))
        args = [str(binary), str(ports.pop()), repr(rate), str(total), str(connections)]
        args += [str(targets), str(results)] + ([expect.decode()] if expect is not None else [])
        _run(args, timeout=seconds + 60)
        rows = [line.split() for line in results.read_text().splitlines()]
    if len(rows) != total:
        raise RuntimeError(f"openloop answered {len(rows)} of {total}")
    for row in rows:
        if row[4] != "200" or row[5] != "1":
            raise RuntimeError(f"unexpected answer to request {row[0]}: {row[4]}")
    intended = [int(row[1]) for row in rows]
    written = [int(row[2]) for row in rows]
    answered = [int(row[3]) for row in rows]
    return Attack(
        from_intended=[(a - i) / 1e9 for i, a in zip(intended, answered, strict=True)],
        from_start=[(a - w) / 1e9 for w, a in zip(written, answered, strict=True)],
        elapsed=(max(answered) - intended[0]) / 1e9,
        report={},
    )


def _attack_vegeta(
    requests: list[Request],
    rate: float,
    seconds: float,
    connections: int,
    expect: bytes | None,
) -> Attack:
    """vegeta's attack: `rate` req/s for `seconds` over at most `connections` connections.

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
    rows = [row for row in rows if int(row[8]) < round(rate * seconds)]
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
