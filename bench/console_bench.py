"""The console's Tenants list at 10,000 tenants: time to answer one page, beside the admin
API listing the same tenants as JSON (the baseline, same process, same run).

Run: `.venv/bin/python -m bench.console_bench [--tenants 10000] [--requests 200]` against
the broker in QUOTAFLOW_KAFKA_BOOTSTRAP (default 127.0.0.1:19092). Prints JSON.

One process: a started `TenantWriter` (what `quotaflow admin` holds; its registry is what
the console and the API read), the 10,000 tenants written through it (so the registry is
the real `TopicTenantRegistry`), `build_admin_server` on a TCP port, and a client signed in
through the login form that requests, one at a time: the first page, a page in the middle,
a search that matches 10 tenants, a search that matches none, and the baseline
`GET /v1/tenants` (all tenants, masked). Latency is request to last byte on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import time
from typing import Any

import aiohttp
from aiohttp import web
from pydantic import SecretStr

from bench.common import Report, progress, summary, unique
from quotaflow.commands.console.server import build_admin_server
from quotaflow.commands.localkafka import free_port
from quotaflow.commands.tenants.writer import open_writer
from quotaflow.settings import Settings
from quotaflow.tenants.keyring import LocalKeyring
from wire.signing import generate_keypair

TOKEN = "bench-admin-token-" + "x" * 24
_LOGIN_CSRF = re.compile(r'name="login_csrf" value="([^"]+)"')


def _doc(i: int) -> dict[str, Any]:
    return {
        "id": f"t{i:05d}",
        "name": f"Tenant {i}",
        "regions": ["eu"],
        "webhook_secrets": [{"id": "s1", "secret": f"whsec_bench_{i:05d}"}],
        "stripe_api_key": f"rk_test_bench_{i:05d}",
        "plans": {"basic": {"quota": 1000}, "pro": {"quota": 50_000}},
    }


async def _timed(http: aiohttp.ClientSession, url: str, n: int, **kw: Any) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        async with http.get(url, **kw) as response:
            await response.read()
            if response.status != 200:
                raise RuntimeError(f"{url} answered {response.status}")
        out.append((time.perf_counter() - started) * 1000)
    return out


async def run(tenants: int, requests: int, bootstrap: str) -> dict[str, Any]:
    prefix = unique("console") + "."
    signing, _ = generate_keypair()
    settings = Settings(
        kafka_bootstrap=bootstrap,
        topic_prefix=prefix,
        partitions=2,
        regions=["eu"],
        admin_tokens={"bench": SecretStr(TOKEN)},
        tenant_signing_keys=[SecretStr(signing)],
    )
    keyring = LocalKeyring({"k1": b"\x01" * 32})
    async with open_writer(settings, keyring=keyring) as writer:
        progress(f"writing {tenants} tenants through the writer")
        for i in range(tenants):
            await writer.add(_doc(i), "bench")
        runner = web.AppRunner(build_admin_server(settings, writer), access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        base = f"http://127.0.0.1:{port}"
        try:
            jar = aiohttp.CookieJar(unsafe=True)
            async with aiohttp.ClientSession(cookie_jar=jar) as http:
                form = await (await http.get(f"{base}/console/login")).text()
                found = _LOGIN_CSRF.search(form)
                if found is None:
                    raise RuntimeError("no login form")
                data = {"token": TOKEN, "login_csrf": found.group(1)}
                signed_in = await http.post(f"{base}/console/login", data=data)
                if "t00000" not in await signed_in.text():
                    raise RuntimeError(f"sign-in failed: {signed_in.status}")
                middle = max(tenants // 100, 1)
                cases = {
                    "first_page": f"{base}/console/tenants",
                    "middle_page": f"{base}/console/tenants?page={middle}",
                    "search_10": f"{base}/console/tenants?q=t0042",
                    "search_none": f"{base}/console/tenants?q=nobody",
                }
                figures: dict[str, Any] = {}
                for name, url in cases.items():
                    progress(f"{name}: {requests} requests")
                    figures[name] = summary(await _timed(http, url, requests))
                progress(f"baseline GET /v1/tenants: {requests} requests")
                auth = {"Authorization": f"Bearer {TOKEN}"}
                figures["baseline_api_all_tenants"] = summary(
                    await _timed(http, f"{base}/v1/tenants", requests, headers=auth)
                )
        finally:
            await runner.cleanup()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="300 tenants, 20 requests")
    args = parser.parse_args()
    tenants, requests = (300, 20) if args.quick else (args.tenants, args.requests)
    bootstrap = os.environ.get("QUOTAFLOW_KAFKA_BOOTSTRAP", "127.0.0.1:19092")
    report = Report("console", {"tenants": tenants, "requests": requests})
    report["latency_ms"] = asyncio.run(run(tenants, requests, bootstrap))
    report.emit()


if __name__ == "__main__":
    main()
