"""Issue 14, part 5: the slim edge distribution (`packaging/edge`, `quotaflow-edge`) in a
clean virtualenv, as an operator installs it.

The wheel is built from a copy of this tree's sources (so a stale `build/` never leaks into
it), installed with its dependencies from the package index into a fresh venv that has
never seen the repository, and checked there: none of the full distribution's heavy
dependencies is importable, and `quotaflow-edge`, run as a real process, takes a signed
push and answers a consume and a quota read to an application with its token.

Needs the package index (PyPI, or pip's configured index) the first time; the downloads are
kept under ~/.cache/quotaflow/pip. Anything missing fails the test: nothing is skipped.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
import urllib3

from quotaflow.commands.localkafka import free_port, port_open
from tables.quota import QuotaUpdate, Reason
from tests.processes import EDGE_AUTH, edge_auth_env
from wire import SIGNATURE_HEADER, Kind, Signer, generate_keypair

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]
PIP_CACHE = Path.home() / ".cache" / "quotaflow" / "pip"
HTTP = urllib3.PoolManager(retries=False, timeout=5.0)
PUSH_KEY, PUSH_PUBLIC = generate_keypair()
# The full distribution's heavy dependencies (import names): none may be in the slim venv.
HEAVY = ("faust", "mode", "aiokafka", "kafka", "stripe", "rocksdict", "aiolimiter", "yaml")
# Faces and modules the slim distribution does not ship.
UNSHIPPED = ("streams", "ingress", "quotaflow.commands.cli", "quotaflow.tenants", "tables.billing")
# What the sidecar does need, so that "not importable" above is not a broken interpreter.
NEEDED = ("edge.server", "wire", "quotaflow.settings", "aiohttp", "pydantic_settings")


@dataclass(frozen=True)
class SlimVenv:
    path: Path
    wheel: Path
    env: dict[str, str]

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def command(self) -> Path:
        return self.path / "bin" / "quotaflow-edge"

    def run(self, *args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(a) for a in args],
            cwd=cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


def _pip(*args: str | Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--cache-dir", str(PIP_CACHE), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _clean_env() -> dict[str, str]:
    """The environment of a machine that never saw this checkout: no PYTHONPATH, and no
    QUOTAFLOW_* of the test run."""
    drop = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("QUOTAFLOW_")}


@pytest.fixture(scope="module")
def slim_edge_venv(tmp_path_factory: pytest.TempPathFactory) -> SlimVenv:
    """The slim wheel, built from a copy of the sources and installed in a fresh venv."""
    tmp = tmp_path_factory.mktemp("slim-edge")
    src = tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "build", "*.egg-info")
    shutil.copytree(ROOT / "packaging" / "edge", src / "packaging" / "edge", ignore=ignore)
    for package in ("edge", "wire", "quotaflow", "tables"):
        shutil.copytree(ROOT / package, src / package, ignore=ignore)
    dist = tmp / "dist"
    _pip("wheel", "--no-deps", "--wheel-dir", dist, src / "packaging" / "edge")
    (wheel,) = dist.glob("quotaflow_edge-*.whl")
    venv = tmp / "venv"
    done = subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", venv], capture_output=True, check=False
    )
    assert done.returncode == 0, done.stderr
    # The test venv's pip installs into the clean one (`--python`): no pip bootstrap there.
    _pip("--python", venv / "bin" / "python", "install", "--no-input", wheel)
    return SlimVenv(venv, wheel, _clean_env())


def test_the_slim_wheel_holds_the_edge_and_none_of_the_other_faces(
    slim_edge_venv: SlimVenv,
) -> None:
    import zipfile

    names = zipfile.ZipFile(slim_edge_venv.wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("quotaflow_edge-")}
    assert tops == {"edge", "wire", "quotaflow", "tables"}
    # Every edge module of this tree is in it (found by package discovery, not a list).
    assert {f"edge/{p.name}" for p in (ROOT / "edge").glob("*.py")} <= set(names)
    assert not [n for n in names if n.startswith(("quotaflow/commands/cli", "quotaflow/tenants/"))]


def test_the_clean_venv_has_no_faust_kafka_client_stripe_sdk_or_rocksdb(
    slim_edge_venv: SlimVenv, tmp_path: Path
) -> None:
    probe = (
        "import importlib.util, importlib.metadata, json, sys\n"
        "def present(name):\n"
        "    try:\n"
        "        return importlib.util.find_spec(name) is not None\n"
        "    except ModuleNotFoundError:\n"
        "        return False\n"
        "import edge, edge.cli, edge.server\n"  # imported, not just found: they must load
        "print(json.dumps({'found': {n: present(n) for n in sys.argv[1:]},"
        " 'edge': edge.__file__, 'prefix': sys.prefix,"
        " 'dists': sorted(d.metadata['Name'].lower()"
        " for d in importlib.metadata.distributions())}))\n"
    )
    done = slim_edge_venv.run(
        slim_edge_venv.python, "-c", probe, *HEAVY, *UNSHIPPED, *NEEDED, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    seen = orjson.loads(done.stdout)
    assert Path(seen["prefix"]) == slim_edge_venv.path
    # The edge comes from the venv's site-packages, not from this checkout.
    assert Path(seen["edge"]).is_relative_to(slim_edge_venv.path), seen["edge"]
    assert {n for n in (*HEAVY, *UNSHIPPED) if seen["found"][n]} == set()
    assert all(seen["found"][n] for n in NEEDED), seen["found"]
    dists = set(seen["dists"])
    assert "quotaflow-edge" in dists
    assert not dists & {"quotaflow", "faust-streaming", "aiokafka", "stripe", "rocksdict"}


def test_quotaflow_edge_has_the_options_of_quotaflow_edge(
    slim_edge_venv: SlimVenv, tmp_path: Path
) -> None:
    slim = slim_edge_venv.run(slim_edge_venv.command, "--help", cwd=tmp_path)
    assert slim.returncode == 0, slim.stderr
    assert slim.stdout.startswith("Usage: quotaflow-edge [OPTIONS]")
    full = subprocess.run(
        [Path(sys.executable).with_name("quotaflow"), "edge", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert full.stdout.startswith("Usage: quotaflow edge [OPTIONS]")
    assert slim.stdout.split("\n", 1)[1] == full.stdout.split("\n", 1)[1]
    assert "--region" in slim.stdout
    assert "--port" in slim.stdout
    version = slim_edge_venv.run(slim_edge_venv.command, "--version", cwd=tmp_path)
    assert version.stdout.strip() == "quotaflow-edge, version 0.1.0"


@pytest.fixture
def slim_edge(slim_edge_venv: SlimVenv, tmp_path: Path) -> Iterator[str]:
    """`quotaflow-edge` from the clean venv, as a real process; yields its base URL."""
    port = free_port()
    env = {
        **slim_edge_venv.env,
        **edge_auth_env(),
        "QUOTAFLOW_PUSH_VERIFY_KEYS": orjson.dumps({"eu": [PUSH_PUBLIC]}).decode(),
        "QUOTAFLOW_USAGE_SPOOL_DIR": str(tmp_path / "spool"),
        "QUOTAFLOW_USAGE_INGRESS_URL": f"http://127.0.0.1:{free_port()}",
    }
    log = tmp_path / "quotaflow-edge.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(slim_edge_venv.command), "--region", "eu", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while not port_open(port):
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait(timeout=10)
    text = log.read_text(errors="replace")
    assert code == 0, text
    assert "applications allowed to consume" in text
    assert "Traceback" not in text


def test_the_slim_sidecar_takes_a_signed_push_and_answers_a_consume(slim_edge: str) -> None:
    update = QuotaUpdate(
        tenant_id="t1",
        customer_id="c1",
        limit=100,
        used=0,
        remaining=100,
        status="active",
        version=1,
        reason=Reason(kind="policy", id="v1"),
        updated_at=time.time(),
    )
    body = orjson.dumps(
        {
            "region": "eu",
            "updates": [update.model_dump(mode="json")],
            "snapshot": {"id": "s1", "final": True},
            "push_id": uuid.uuid4().hex,
        }
    )
    unsigned = HTTP.request("POST", slim_edge + "/v1/push", body=body)
    assert unsigned.status == 401
    header = Signer(Kind.PUSH, [PUSH_KEY]).header(body)
    push = HTTP.request(
        "POST", slim_edge + "/v1/push", body=body, headers={SIGNATURE_HEADER: header}
    )
    assert push.status == 200, push.data
    assert orjson.loads(push.data)["applied"] == 1
    assert HTTP.request("GET", slim_edge + "/readyz").status == 200

    ask = orjson.dumps({"tenant_id": "t1", "customer_id": "c1", "cost": 3})
    refused = HTTP.request("POST", slim_edge + "/v1/consume", body=ask)
    assert refused.status == 401
    consume = HTTP.request("POST", slim_edge + "/v1/consume", body=ask, headers=EDGE_AUTH)
    assert consume.status == 200, consume.data
    assert orjson.loads(consume.data) == {"allowed": True, "remaining": 97, "reason": "ok"}
    quota = HTTP.request("GET", slim_edge + "/v1/quotas/t1/c1", headers=EDGE_AUTH)
    assert quota.status == 200, quota.data
    assert orjson.loads(quota.data)["used"] == 3
    metrics = HTTP.request("GET", slim_edge + "/metrics").data.decode()
    assert 'edge_consume_decisions_total{app="tests",reason="ok"} 1.0' in metrics


# Drives `edge.asgi.QuotaMiddleware` by hand in the clean venv (no Starlette or httpx there:
# the middleware is pure ASGI): two allowed calls reach the app, the third is denied 429.
_MIDDLEWARE_PROBE = """
import asyncio, json, time
from edge import Identifier, QuotaCache, QuotaMiddleware
from tables.quota import QuotaUpdate, Reason

cache = QuotaCache()
cache.apply(QuotaUpdate(tenant_id="t1", customer_id="c1", limit=2, used=0, remaining=2,
    status="active", version=1, reason=Reason(kind="policy", id="v1"), updated_at=time.time()))
reached = []

async def app(scope, receive, send):
    reached.append(scope["path"])
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})

async def call(mw):
    sent = []
    async def receive():
        return {"type": "http.request", "body": b""}
    async def send(message):
        sent.append(message)
    scope = {"type": "http", "method": "GET", "path": "/search", "raw_path": b"/search",
             "headers": [(b"x-quotaflow-tenant", b"t1"), (b"x-quotaflow-customer", b"c1")]}
    await mw(scope, receive, send)
    head, body = sent[0], sent[1]["body"].decode()
    return head["status"], dict(head["headers"]).get(b"x-quota-remaining", b"").decode(), body

async def main():
    mw = QuotaMiddleware(app, cache=cache, identifier=Identifier())
    answers = [await call(mw) for _ in range(3)]
    used = cache.get("t1", "c1")["used"]
    print(json.dumps({"answers": answers, "reached": reached, "used": used}))

asyncio.run(main())
"""


def test_the_asgi_middleware_works_in_the_slim_venv(
    slim_edge_venv: SlimVenv, tmp_path: Path
) -> None:
    done = slim_edge_venv.run(slim_edge_venv.python, "-c", _MIDDLEWARE_PROBE, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = orjson.loads(done.stdout)
    assert result["answers"] == [
        [200, "1", "ok"],
        [200, "0", "ok"],
        [429, "0", '{"error":{"reason":"exhausted"}}'],
    ]
    assert result["reached"] == ["/search", "/search"]
    assert result["used"] == 2
