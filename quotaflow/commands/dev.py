"""`quotaflow dev`: the whole pipeline on this machine, for trying quotaflow out.

Starts a local Kafka broker, then one process per component (ingress, worker, a pusher
and a demo edge node per region), all with a demo tenant whose webhook secret is the
published `DEMO_SECRET`. Ctrl-C stops everything it started, in reverse order.

Fresh Ed25519 key pairs are generated at every start, one push pair and one edge pair
per region: every process gets the public keys, and only a region's pushers get its
private push key and only its edge node its private edge key, as in a deployment.

The edge nodes authenticate their callers as in a deployment (loopback is not let in
without a token): a fresh application token `dev` is made at every start, its digest
goes to the edges and the token itself to `APP_TOKEN_FILE` (mode 0600), which the printed
`curl` commands read.

The operator console (`quotaflow admin`, `/console`) runs too, so tenants live on the
tenants topic as in a deployment (not in a file): the demo tenant is written there at start
by the same writer the console and the CLI use. The key-encryption key and the tenants
signing key are made once and kept in `KEYS_FILE` (mode 0600), as the broker's topics
outlive a run; a fresh admin token is made at every start and written to
`ADMIN_TOKEN_FILE` (mode 0600), which the banner names for the console's sign-in page.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import time
from pathlib import Path

import orjson
from pydantic import SecretStr

from edge.auth import generate_app_token
from quotaflow.commands.localkafka import LocalKafka
from quotaflow.commands.tenants.writer import open_writer
from quotaflow.settings import Settings
from quotaflow.tenants.exceptions import TenantExists
from quotaflow.tenants.keyring import generate_kek
from quotaflow.testing.harness import (
    QUOTAFLOW,
    Process,
    RegionKeys,
    WaitTimeout,
    app_tokens_env,
    edge_nodes_env,
    pipeline_env,
    port_open,
    wait_until,
)
from quotaflow.topics import ensure_topics
from tables.tenant import PlanEntry, Tenant, WebhookSecret
from wire import generate_keypair, public_key_of

DEV_DIR = Path(".quotaflow/dev")
DEMO_TENANT = "demo"
# Published in the README so the sample curl works; never use it outside `quotaflow dev`.
DEMO_SECRET = "whsec_quotaflow_local_demo"  # noqa: S105 - a published demo value
FIRST_EDGE_PORT = 9101
DEV_APP = "dev"
# Relative, as the README's curl reads it from where `make dev` runs.
APP_TOKEN_FILE = DEV_DIR / "app-token"
ADMIN_PORT = 8090
ADMIN_USER = "dev"
ADMIN_TOKEN_FILE = DEV_DIR / "admin-token"
KEYS_FILE = DEV_DIR / "tenant-keys.json"
CONSOLE_URL = f"http://127.0.0.1:{ADMIN_PORT}/console/login"


def demo_tenant(regions: list[str]) -> Tenant:
    return Tenant(
        id=DEMO_TENANT,
        name="Demo tenant",
        mode="test",
        webhook_secrets=(WebhookSecret(id="demo-1", secret=DEMO_SECRET),),
        regions=tuple(regions),
        plans={
            "starter": PlanEntry(quota=1000),
            "pro": PlanEntry(quota=100_000),
            "unlimited": PlanEntry(quota=None),
        },
    )


def _write_private(path: Path, text: str) -> None:
    """A new file readable by us only (never world-readable, not even for a moment)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


class DevKeys:
    """A fresh push key and edge key per region (the harness's `RegionKeys`), and a fresh
    application token."""

    def __init__(self, regions: list[str], keys_file: Path = KEYS_FILE) -> None:
        self.regions = RegionKeys.fresh(regions)
        self.app_token = generate_app_token()
        self.admin_token = "qf-admin-dev-" + secrets.token_urlsafe(32)
        if not keys_file.exists():
            kept = {"kek": generate_kek(), "tenant_signing": generate_keypair()[0]}
            _write_private(keys_file, orjson.dumps(kept).decode())
        kept = orjson.loads(keys_file.read_bytes())
        self.kek: str = kept["kek"]
        self.tenant_signing: str = kept["tenant_signing"]

    def public_environment(self) -> dict[str, str]:
        """The verify keys and the app token's digest: public, every process may have them.
        The keyring too: in dev every component runs as us, on this machine."""
        return {
            **self.regions.public_env(),
            **app_tokens_env({DEV_APP: self.app_token}),
            "QUOTAFLOW_KEYRING": orjson.dumps({"dev": self.kek}).decode(),
            "QUOTAFLOW_TENANT_VERIFY_KEYS": orjson.dumps(
                [public_key_of(self.tenant_signing)]
            ).decode(),
        }

    def admin_environment(self) -> dict[str, str]:
        """What only the admin process (and the demo seeding) holds: the admin token and the
        tenants signing key."""
        return {
            "QUOTAFLOW_ADMIN_PORT": str(ADMIN_PORT),
            "QUOTAFLOW_ADMIN_TOKENS": orjson.dumps({ADMIN_USER: self.admin_token}).decode(),
            "QUOTAFLOW_TENANT_SIGNING_KEYS": orjson.dumps([self.tenant_signing]).decode(),
        }

    def admin_settings(self, bootstrap: str, regions: list[str]) -> Settings:
        """The settings the demo seeding writes the tenants topic with."""
        return Settings(
            kafka_bootstrap=bootstrap,
            regions=regions,
            keyring={"dev": SecretStr(self.kek)},
            tenant_signing_keys=[SecretStr(self.tenant_signing)],
            tenant_verify_keys=[public_key_of(self.tenant_signing)],
            tenants_file=None,
        )

    def write_app_token(self, path: Path = APP_TOKEN_FILE) -> None:
        """Puts the token where the printed curl commands read it, readable by us only."""
        _write_private(path, self.app_token)

    def write_admin_token(self, path: Path = ADMIN_TOKEN_FILE) -> None:
        """Puts the console's sign-in token where the banner says, readable by us only."""
        _write_private(path, self.admin_token)

    def signer_environment(self, command: list[str]) -> dict[str, str]:
        """The one private key a `push --region R` or `edge --region R` process signs with."""
        return self.regions.signer_env(command)


def dev_environment(regions: list[str], kafka_port: int, keys: DevKeys) -> dict[str, str]:
    nodes = {r: [f"http://127.0.0.1:{FIRST_EDGE_PORT + i}"] for i, r in enumerate(regions)}
    env = pipeline_env(
        bootstrap=f"127.0.0.1:{kafka_port}",
        tenants_file=DEV_DIR / "tenants.json",
        data_dir=DEV_DIR / "worker",
        store="memory://",
    )
    # Tenants come from the tenants topic, which the console writes to.
    del env["QUOTAFLOW_TENANTS_FILE"]
    return {
        **keys.public_environment(),
        **env,
        **edge_nodes_env(nodes),
        "QUOTAFLOW_EDGE_URL_ALLOW": orjson.dumps({r: ["127.0.0.1"] for r in regions}).decode(),
        "QUOTAFLOW_REGIONS": orjson.dumps(regions).decode(),
    }


async def seed_demo(settings: Settings, regions: list[str]) -> None:
    """Writes the demo tenant to the tenants topic unless an earlier run did."""
    demo = orjson.loads(dump_demo(regions))
    async with open_writer(settings) as writer:
        with contextlib.suppress(TenantExists):
            await writer.add(demo, actor=f"console:{ADMIN_USER}")


def dump_demo(regions: list[str]) -> bytes:
    """The demo tenant as the document `TenantWriter.add` takes (secrets included)."""
    tenant = demo_tenant(regions)
    doc = tenant.model_dump(mode="json", exclude={"created_at", "updated_at"})
    doc["webhook_secrets"] = [
        {**s.model_dump(mode="json"), "secret": s.secret.get_secret_value()}
        for s in tenant.webhook_secrets
    ]
    return orjson.dumps(doc)


DEMO_EVENT = {
    "id": "evt_demo_1",
    "object": "event",
    "type": "customer.subscription.created",
    "livemode": False,
    "created": 1767225600,
    "data": {
        "object": {
            "id": "sub_demo",
            "object": "subscription",
            "customer": "cus_demo",
            "status": "active",
            "items": {
                "data": [
                    {
                        "id": "si_demo",
                        "quantity": 1,
                        "price": {"id": "price_demo", "lookup_key": "starter"},
                        "current_period_start": 1767225600,
                        "current_period_end": 1798761600,
                    }
                ]
            },
        }
    },
}


def sample_curl(port: int = 8080) -> str:
    """The signed request the README shows; openssl signs it when pasted."""
    body = orjson.dumps(DEMO_EVENT).decode()
    return f"""BODY='{body}'
T=$(date +%s)
SIG=$(printf '%s.%s' "$T" "$BODY" | openssl dgst -sha256 -hmac '{DEMO_SECRET}' | sed 's/^.* //')
curl -sS http://127.0.0.1:{port}/v1/webhooks/stripe/{DEMO_TENANT} \\
  -H "Stripe-Signature: t=$T,v1=$SIG" -H 'Content-Type: application/json' --data-binary "$BODY"
curl -sS -H "Authorization: Bearer $(cat {APP_TOKEN_FILE})" \\
  http://127.0.0.1:{FIRST_EDGE_PORT}/v1/quotas/{DEMO_TENANT}/cus_demo"""


def consume_curl() -> str:
    """One call of the demo customer, as the Rating API makes it (with its token)."""
    ask = orjson.dumps({"tenant_id": DEMO_TENANT, "customer_id": "cus_demo", "cost": 1}).decode()
    return f"""curl -sS -H "Authorization: Bearer $(cat {APP_TOKEN_FILE})" \\
  -H "Idempotency-Key: demo-call-1" --data-binary '{ask}' \\
  http://127.0.0.1:{FIRST_EDGE_PORT}/v1/consume"""


def run_dev(regions: list[str], *, kafka_port: int = 9092) -> None:
    DEV_DIR.mkdir(parents=True, exist_ok=True)
    broker = LocalKafka(DEV_DIR / "kafka", port=kafka_port)
    if broker.running_pid() is None:
        print(f"starting Kafka on 127.0.0.1:{kafka_port} ...", flush=True)
        broker.start()
    keys = DevKeys(regions)
    keys.write_app_token()
    keys.write_admin_token()
    env = {**os.environ, **dev_environment(regions, kafka_port, keys)}
    asyncio.run(ensure_topics(Settings(kafka_bootstrap=broker.bootstrap)))
    asyncio.run(seed_demo(keys.admin_settings(broker.bootstrap, regions), regions))

    # One ingress process: dev runs everything on one machine beside the broker.
    commands = [["ingress", "--workers", "1"], ["worker"]]
    for i, region in enumerate(regions):
        commands.append(["edge", "--region", region, "--port", str(FIRST_EDGE_PORT + i)])
        commands.append(["push", "--region", region])
    # Tenant notifications; dev receivers are local, so private addresses are allowed here.
    commands.append(["notifier"])
    # The operator console (and the admin API) with the dev admin token.
    commands.append(["admin"])
    logs = DEV_DIR / "logs"
    logs.mkdir(exist_ok=True)
    procs: list[Process] = []
    stopping = False

    def request_stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        for command in commands:
            name = "-".join(command[:3:2]) if command[0] in ("edge", "push") else command[0]
            own = {**env, **keys.signer_environment(command)}
            if command[0] == "notifier":
                own["QUOTAFLOW_NOTIFY_ALLOW_PRIVATE"] = "true"
            if command[0] == "admin":
                own |= keys.admin_environment()
            procs.append(Process([*QUOTAFLOW, *command], own, logs / f"{name}.log"))
        ports = [8080, ADMIN_PORT, *(FIRST_EDGE_PORT + i for i in range(len(regions)))]
        # The banner is printed even if a port is not up within the minute: the watchdog
        # below names a component that exited, and a slow one may still come.
        with contextlib.suppress(WaitTimeout):
            wait_until(
                lambda: all(port_open(p) for p in ports),
                timeout=60.0,
                what=f"ports {ports} listen",
                interval=0.2,
            )
        edges = ", ".join(
            f"{r}=http://127.0.0.1:{FIRST_EDGE_PORT + i}" for i, r in enumerate(regions)
        )
        print(
            f"""
quotaflow is running (logs in {logs}/):
  ingress   http://127.0.0.1:8080/v1/webhooks/stripe/{DEMO_TENANT}
  edges     {edges}
  console   {CONSOLE_URL}
            (sign in with the admin token in {ADMIN_TOKEN_FILE})
  kafka     {broker.bootstrap}

Send a signed webhook for the demo tenant, then read the quota at the edge (as the
application "{DEV_APP}", whose token is in {APP_TOKEN_FILE}):
{sample_curl()}

Consume one unit as the Rating API would; run it twice: the same Idempotency-Key
answers the first decision again and counts once:
{consume_curl()}

Ctrl-C stops everything.""",
            flush=True,
        )
        while not stopping:
            for proc in procs:
                if not proc.alive():
                    print(f"a component exited with {proc.returncode}; see {logs}/", flush=True)
                    stopping = True
            time.sleep(0.2)
    finally:
        # SIGTERM to every component first (newest first), so they stop side by side.
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            proc.stop(timeout=15)
        broker.stop()
        print("stopped", flush=True)
