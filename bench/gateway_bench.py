"""Gateway benchmark: what forward auth through the edge sidecar adds to a real gateway.

Run: `.venv/bin/python -m bench.gateway_bench [--quick] [--gateways nginx,caddy]` (prints
JSON). `--quick` runs tiny sizes (a smoke test: the figures mean nothing).

For each gateway (Debian's nginx and caddy from `make tools`, configured with the
snippets in `deploy/gateways/` exactly as the tests run them), one gateway process serves
three sites, driven open-loop at the same rate by openloop (bench/openloop.c, through
bench/loadgen.py) over 16 keep-alive connections, alternately round by round in the same
run:
- `static`: the gateway answers 200 itself (the issue's baseline);
- `proxy`: the gateway proxies to the upstream, no quota;
- `authorized`: the shipped snippet: an auth subrequest to the sidecar (consume, cost 1,
  10,000 customers in `headers` mode), then the upstream;
- `authorized_null_edge`: the same through a gateway process whose "sidecar" is NGINX's
  static 200 in a process of its own (an authorizer that costs nearly nothing, one hop
  away as the sidecar is): the gateway's forward auth by itself (its `edge` CPU is that
  NGINX's);
- `authorized_aiohttp_edge`: the same through another gateway process whose sidecar
  serves with aiohttp alone on asyncio's loop, as before the light face
  (`edge/fastpath.py`) and uvloop: the before figure beside the after one in the same run.
The upstream (the Rating API's stand-in) is the gateway's own `static` site, so
`authorized` is the forward auth plus one proxy hop inside the gateway, and
`authorized - proxy` the forward auth alone. Latency is from each request's intended send
time (no coordinated omission). Beside them, `static_vegeta` and `authorized_vegeta` are
the same loads from vegeta, the client of the earlier figures, so old and new compare
within one run. The result gives p50/p99 per mode and, per gateway, `authorized - static`
and `authorized - proxy` at p99 (the issue's target: <= 1 ms over `static` at 2,000
req/s) and their ratios, and per mode the CPU per request (user + system, from /proc) of
the gateway and the sidecar: on a shared machine the latency moves with everyone else's
load, the CPU a request costs each server much less. `machine_wakeup` is how long the
machine takes to wake a process on the same CPU and across CPUs; `--one-cpu` runs
everything on one CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson
import uvloop
from aiohttp import web

from bench import loadgen
from bench.common import cdf, confine_to_one_cpu, machine, percentile, wakeup_latency
from edge.auth import AppAuth, generate_app_token, token_digest
from edge.cache import QuotaCache
from edge.fastpath import EdgeRunner
from edge.server import build_app
from quotaflow.commands.localkafka import free_port, port_open
from quotaflow.testing.gateways import (
    CADDYFILE,
    NGINX_TEMPLATE,
    Gateway,
    caddy_gateway,
    nginx_gateway,
)
from tables.quota import QuotaUpdate, Reason

CUSTOMERS = 10_000
CONNECTIONS = 16
TOKEN = generate_app_token()
MODES = ("static", "proxy", "authorized")
# vegeta, the client of the earlier figures, as a labelled cross-check on the modes the
# target compares.
VEGETA_MODES = ("static", "authorized")
TOOLS_BIN = Path(
    os.environ.get("QUOTAFLOW_TOOLS_BIN", Path.home() / ".cache" / "quotaflow" / "bin")
)


async def _serve_forever(
    app: web.Application, port: int, ready: Connection, runner_class: type[web.AppRunner]
) -> None:
    """Serves `app` on 127.0.0.1:`port`, says so on `ready`, and runs until killed."""
    runner = runner_class(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    ready.send(os.getpid())
    await asyncio.Event().wait()


def _serve_edge(port: int, ready: Connection, digest: str, aiohttp_only: bool = False) -> None:
    """The sidecar as `quotaflow edge` serves it (the light face for the hot routes, on
    uvloop), or with aiohttp alone on asyncio's loop (as before: the
    `authorized_aiohttp_edge` mode)."""

    async def main() -> None:
        cache = QuotaCache(regions=("bench",))
        for i in range(CUSTOMERS):
            cache.apply(
                QuotaUpdate(
                    tenant_id=f"t{i % 100}",
                    customer_id=f"c{i}",
                    limit=10**12,
                    used=0,
                    remaining=10**12,
                    status="active",
                    version=1,
                    reason=Reason(kind="policy", id="bench"),
                    updated_at=time.time(),
                ),
                "bench",
            )
        app = build_app(
            cache,
            _verifier(),
            region="bench",
            auth=AppAuth({"gateway": digest}),
        )
        cache.mark_complete()
        await _serve_forever(app, port, ready, web.AppRunner if aiohttp_only else EdgeRunner)

    if aiohttp_only:
        asyncio.run(main())
    else:
        uvloop.run(main())  # as `quotaflow edge` runs


def _verifier() -> Any:
    from wire import Kind, Verifier, generate_keypair

    return Verifier(Kind.PUSH, [generate_keypair()[1]])


def _cpu_seconds(pid: int) -> float:
    """CPU time so far (user + system, from /proc; 0 off Linux) of a process and its live
    children (NGINX serves from a worker under its master)."""
    total = 0.0
    for stat_path in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_path.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if stat_path.parent.name == str(pid) or fields[1] == str(pid):
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


@contextmanager
def _child(target: Any, *args: Any) -> Iterator[int]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=target, args=(*args[:1], child, *args[1:]), daemon=True)
    proc.start()
    try:
        if not parent.poll(60):
            raise RuntimeError(f"{target.__name__} did not start")
        parent.recv()
        assert proc.pid is not None
        yield proc.pid
    finally:
        proc.terminate()
        proc.join(10)


def _drive(
    port: int, rate: float, seconds: float, warmup: int, client: loadgen.Client
) -> list[float]:
    """One round's load; latency from each intended send time."""
    url = f"http://127.0.0.1:{port}/search"
    requests = [
        loadgen.Request(
            "GET",
            f"{url}?q={i}",
            {"X-Quotaflow-Tenant": f"t{i % 100}", "X-Quotaflow-Customer": f"c{i}"},
        )
        for i in range(CUSTOMERS)
    ]
    loadgen.attack(requests[:warmup], rate, warmup / rate, CONNECTIONS, client=client)
    return loadgen.attack(requests, rate, seconds, CONNECTIONS, client=client).from_intended


def _figures(samples: list[float], rate: float) -> dict[str, Any]:
    ordered = sorted(samples)
    return {
        "target_rps": rate,
        "requests": len(ordered),
        "p50_ms": round(percentile(ordered, 0.50) * 1e3, 3),
        "p99_ms": round(percentile(ordered, 0.99) * 1e3, 3),
        "max_ms": round(ordered[-1] * 1e3, 3) if ordered else None,
        "cdf": cdf(ordered, "ms", 1e3),
    }


def _nginx_sites(tmp: Path, ports: dict[str, int], upstream: str) -> Path:
    """The shipped snippet plus a static and a proxy-only server in the same nginx."""
    extra = f"""
server {{
    listen 127.0.0.1:{ports["static"]};
    location / {{ return 200 "ok\\n"; }}
}}
server {{
    listen 127.0.0.1:{ports["proxy"]};
    location / {{
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_pass http://bench_upstream;
    }}
}}
upstream bench_upstream {{
    server {upstream};
    keepalive 32;
}}
"""
    path = tmp / "nginx.conf.template"
    path.write_text(NGINX_TEMPLATE.read_text() + extra)
    return path


def _caddy_sites(tmp: Path, ports: dict[str, int], upstream: str) -> Path:
    """The shipped Caddyfile plus a static and a proxy-only site in the same caddy."""
    extra = f"""
http://127.0.0.1:{ports["static"]} {{
	respond "ok" 200
}}

http://127.0.0.1:{ports["proxy"]} {{
	reverse_proxy {upstream}
}}
"""
    path = tmp / "Caddyfile"
    path.write_text(CADDYFILE.read_text() + extra)
    return path


@contextmanager
def _gateway(
    name: str, tmp: Path, edge_port: int | None
) -> Iterator[tuple[Gateway, dict[str, int]]]:
    """`name` serving the three sites (MODES) on free ports, with the shipped snippet
    asking the sidecar on `edge_port` (None: the gateway's own static site).

    The Rating API stand-in is the gateway's own static site too: what `authorized` adds
    over `static` is then the gateway's work and the sidecar's, not a Python upstream's
    (an aiohttp app cost ~170 us a request, more than the sidecar, on the same 2 cores)."""
    tmp.mkdir(exist_ok=True)
    binary = Path(os.environ.get(f"QUOTAFLOW_{name.upper()}", TOOLS_BIN / name))
    if not os.access(binary, os.X_OK):
        raise SystemExit(f"{binary} missing: run `make tools` (scripts/install-deploy-tools.sh)")
    ports = {mode: free_port() for mode in MODES}
    upstream = f"127.0.0.1:{ports['static']}"
    common: dict[str, Any] = {
        "port": ports["authorized"],
        "upstream": upstream,
        "edge": upstream if edge_port is None else f"127.0.0.1:{edge_port}",
        "token": TOKEN,
        "log": tmp / f"{name}.log",
    }
    if name == "nginx":
        cm = nginx_gateway(binary, template=_nginx_sites(tmp, ports, upstream), **common)
    else:
        cm = caddy_gateway(binary, caddyfile=_caddy_sites(tmp, ports, upstream), **common)
    with cm as gateway:
        deadline = time.monotonic() + 20
        while not all(port_open(p) for p in ports.values()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} sites did not listen: {gateway.tail()}")
            time.sleep(0.05)
        yield gateway, ports


def bench_gateways(
    gateways: list[str], rate: float, seconds: float, rounds: int, warmup: int
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    edge_port, plain_edge_port = free_port(), free_port()
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gateway-bench-")))
        edge_pid = stack.enter_context(_child(_serve_edge, edge_port, token_digest(TOKEN)))
        plain_edge_pid = stack.enter_context(
            _child(_serve_edge, plain_edge_port, token_digest(TOKEN), True)
        )
        # The authorizer that costs (nearly) nothing: NGINX's static 200, in a process of
        # its own as the sidecar is, so the null mode keeps the hop between processes.
        null_edge, null_edge_ports = stack.enter_context(
            _gateway("nginx", tmp / "null-authorizer", None)
        )
        for name in gateways:
            with ExitStack() as gateways_up:
                gw, ports = gateways_up.enter_context(_gateway(name, tmp, edge_port))
                # The same gateway and snippet before a sidecar served by aiohttp alone
                # (the sidecar before the light face), in its own gateway process.
                plain_gw, plain_ports = gateways_up.enter_context(
                    _gateway(name, tmp / "plain", plain_edge_port)
                )
                # The same gateway and snippet asking the authorizer that costs nothing:
                # what the gateway's forward auth costs by itself, so
                # `authorized - authorized_null_edge` is the sidecar's share.
                null_gw, null_gw_ports = gateways_up.enter_context(
                    _gateway(name, tmp / "null", null_edge_ports["static"])
                )
                # CPU per request of each server process (user + system): what a mode costs
                # the machine, which a shared machine's latency figures cannot say.
                pids = {"gateway": gw.proc.pid, "edge": edge_pid}
                plain_pids = {"gateway": plain_gw.proc.pid, "edge": plain_edge_pid}
                # run -> (port, the load client, its processes)
                runs: dict[str, tuple[int, loadgen.Client, dict[str, int]]] = (
                    {mode: (ports[mode], "openloop", pids) for mode in MODES}
                    | {f"{mode}_vegeta": (ports[mode], "vegeta", pids) for mode in VEGETA_MODES}
                    | {
                        "authorized_null_edge": (
                            null_gw_ports["authorized"],
                            "openloop",
                            {"gateway": null_gw.proc.pid, "edge": null_edge.proc.pid},
                        ),
                        "authorized_aiohttp_edge": (
                            plain_ports["authorized"],
                            "openloop",
                            plain_pids,
                        ),
                    }
                )
                samples: dict[str, list[float]] = {run: [] for run in runs}
                round_p99: dict[str, list[float]] = {run: [] for run in runs}
                cpu = {run: dict.fromkeys(pids, 0.0) for run in runs}
                sent = dict.fromkeys(runs, 0)
                for _ in range(rounds):
                    for run, (port, client, procs) in runs.items():
                        before = {k: _cpu_seconds(pid) for k, pid in procs.items()}
                        got = _drive(port, rate, seconds, warmup, client)
                        for k, pid in procs.items():
                            cpu[run][k] += _cpu_seconds(pid) - before[k]
                        sent[run] += warmup + int(rate * seconds)
                        samples[run] += got
                        round_p99[run].append(round(percentile(sorted(got), 0.99) * 1e3, 3))
                figures = {run: _figures(samples[run], rate) for run in runs}
                for run, (_, client, _) in runs.items():
                    figures[run]["client"] = loadgen.client_name(client)
                for mode in runs:
                    figures[mode]["round_p99_ms"] = round_p99[mode]
                    figures[mode]["cpu_us_per_request"] = {
                        k: round(v / sent[mode] * 1e6, 1) for k, v in cpu[mode].items()
                    }
                auth = figures["authorized"]["p99_ms"]
                static, proxy = figures["static"]["p99_ms"], figures["proxy"]["p99_ms"]
                figures["added_p99_ms"] = {
                    "authorized_minus_static": round(auth - static, 3),
                    "authorized_minus_proxy": round(auth - proxy, 3),
                    "authorized_over_static_ratio": round(auth / static, 3) if static else None,
                    "authorized_over_proxy_ratio": round(auth / proxy, 3) if proxy else None,
                    # The gateway's forward auth with an authorizer that costs nothing, and
                    # the sidecar's share beyond it.
                    "null_edge_authorized_minus_static": round(
                        figures["authorized_null_edge"]["p99_ms"] - static, 3
                    ),
                    "authorized_minus_null_edge": round(
                        auth - figures["authorized_null_edge"]["p99_ms"], 3
                    ),
                    # The sidecar served by aiohttp alone (before the light face), same run.
                    "aiohttp_edge_authorized_minus_static": round(
                        figures["authorized_aiohttp_edge"]["p99_ms"] - static, 3
                    ),
                    # The same difference as vegeta measures it.
                    "vegeta_authorized_minus_static": round(
                        figures["authorized_vegeta"]["p99_ms"] - figures["static_vegeta"]["p99_ms"],
                        3,
                    ),
                }
                result[name] = figures
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--gateways", default="nginx,caddy")
    parser.add_argument("--rate", type=float, default=2000.0, help="requests/s per mode")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--one-cpu",
        action="store_true",
        help="Linux: the bench, its load clients, the gateways and the sidecars on one CPU, "
        "so no request waits for the host to wake a second vCPU (see machine_wakeup)",
    )
    args = parser.parse_args()
    rate, seconds, rounds, warmup = args.rate, args.seconds, args.rounds, 500
    if args.quick:
        rate, seconds, rounds, warmup = 300.0, 1.5, 1, 100
    loadgen.vegeta()  # a missing load generator fails before any server starts
    loadgen.openloop()
    # Before the confinement: both placements measured (a smoke test needs few trips).
    wakeup = wakeup_latency(500 if args.quick else 5_000)
    if args.one_cpu:
        confine_to_one_cpu()
    names = [g.strip() for g in args.gateways.split(",") if g.strip()]
    doc = {
        "machine": machine(),
        "machine_wakeup": wakeup,
        "one_cpu": args.one_cpu,
        "quick": args.quick,
        "rate": rate,
        "seconds_per_round": seconds,
        "rounds": rounds,
        "connections": CONNECTIONS,
        "gateways": bench_gateways(names, rate, seconds, rounds, warmup),
    }
    print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
