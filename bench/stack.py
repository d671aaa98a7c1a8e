"""The whole pipeline as real processes for the end-to-end benches: `quotaflow ingress`,
`quotaflow worker`, `quotaflow push` per region and instrumented edge nodes, on one broker
under a fresh topic prefix.

An edge node is started as `python -m <edge_module> edge-node REGION PORT TAP`: each bench
brings its own instrumented `QuotaCache` (it writes what it saw to the TAP file), and
nothing else differs from `quotaflow edge`. The nodes report usage to this stack's
ingress, each with its own spool directory and node id.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import Proc, processes, progress, unique, wait_http
from bench.worker_bench import WorkerTuning, start_worker
from edge.auth import generate_app_token
from quotaflow.testing.harness import (
    RegionKeys,
    app_tokens_env,
    edge_nodes_env,
    free_port,
    pipeline_env,
)

# Ed25519 keys per region: pushers get the private push key, edge nodes the public push
# key and their region's private edge key, the ingress the public edge keys.
KEYS = RegionKeys.fresh(["eu", "us"])
# The benches' calling application: edge nodes hold its digest, load generators send
# `APP_AUTH` (consume needs a credential, as deployed).
APP_TOKEN = generate_app_token()
APP_AUTH = {"Authorization": f"Bearer {APP_TOKEN}"}


@dataclass
class Stack:
    """What a bench needs of the running pipeline."""

    ingress_port: int
    node_ports: list[int]
    taps: list[Path]
    procs: dict[str, Proc] = field(default_factory=dict)

    def node_url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.node_ports[i]}"

    def check(self) -> None:
        for proc in self.procs.values():
            proc.check()


@contextlib.contextmanager
def pipeline(
    *,
    bootstrap: str,
    work: Path,
    tenants: Sequence[Any],
    nodes: Sequence[tuple[str, str]],
    edge_module: str,
    store: str = "rocksdb://",
    env: Mapping[str, str] | None = None,
    worker_env: Mapping[str, str] | None = None,
    tuning: WorkerTuning | None = None,
) -> Iterator[Stack]:
    """Starts everything, waits until every edge node is ready; stops all on exit.

    `nodes` is (region, name) per edge node; `env` is added to every process's environment
    and `worker_env` to the worker's only.
    """
    from quotaflow.registry import dump_tenants

    tenants_file = work / "tenants.json"
    tenants_file.write_bytes(dump_tenants(tenants))
    prefix = unique("e2e-") + "."
    ingress_port = free_port()
    node_ports = [free_port() for _ in nodes]
    urls: dict[str, list[str]] = {}
    for (region, _), p in zip(nodes, node_ports, strict=True):
        urls.setdefault(region, []).append(f"http://127.0.0.1:{p}")
    base = {
        **pipeline_env(
            bootstrap=bootstrap,
            tenants_file=tenants_file,
            data_dir=work / "data",
            store=store,
            topic_prefix=prefix,
            partitions=8,
            app_id=f"{prefix}app",
        ),
        "QUOTAFLOW_METER_ENABLED": "false",
        "QUOTAFLOW_LOG_LEVEL": "WARNING",
        **edge_nodes_env(urls),
        **KEYS.public_env(),
        **app_tokens_env({"bench": APP_TOKEN}),
        "QUOTAFLOW_USAGE_INGRESS_URL": f"http://127.0.0.1:{ingress_port}",
        **(env or {}),
    }
    taps = [work / f"tap-{name}.txt" for _, name in nodes]
    stack = Stack(ingress_port, node_ports, taps)
    with processes() as started:
        progress("starting ingress, worker, pushers, edge nodes")
        ingress = Proc.quotaflow(
            ["ingress", "--port", str(ingress_port), "--workers", "1"], base, work
        )
        started.append(ingress)
        wait_http(f"http://127.0.0.1:{ingress_port}/readyz", 60, ingress)
        worker = start_worker(
            {**base, **(worker_env or {})}, work / "worker.log", tuning or WorkerTuning()
        )
        started.append(worker)
        stack.procs = {"ingress": ingress, "worker": worker}
        edges = []
        for (region, name), p, tap in zip(nodes, node_ports, taps, strict=True):
            node_env = {
                **base,
                "QUOTAFLOW_USAGE_NODE_ID": name,
                "QUOTAFLOW_USAGE_SPOOL_DIR": str(work / f"spool-{name}"),
                **KEYS.edge_env(region),
            }
            argv = [sys.executable, "-m", edge_module, "edge-node", region, str(p), str(tap)]
            edge = Proc(argv, node_env, work / f"edge-{name}.log")
            started.append(edge)
            edges.append(edge)
        for region in sorted(urls):
            pusher_env = {**base, **KEYS.pusher_env(region)}
            pusher = Proc.quotaflow(["push", "--region", region], pusher_env, work)
            started.append(pusher)
            stack.procs[f"pusher-{region}"] = pusher
        for edge, p in zip(edges, node_ports, strict=True):
            wait_http(f"http://127.0.0.1:{p}/readyz", 60, edge)
        stack.procs |= {f"edge-{n}": e for (_, n), e in zip(nodes, edges, strict=True)}
        yield stack
