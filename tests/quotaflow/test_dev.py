"""`make dev` then the README's curl shows the quota at the edge: run exactly that."""

from __future__ import annotations

import http.cookiejar
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import orjson
import pytest

from quotaflow.commands.dev import (
    ADMIN_PORT,
    ADMIN_TOKEN_FILE,
    APP_TOKEN_FILE,
    CONSOLE_URL,
    FIRST_EDGE_PORT,
    consume_curl,
)
from quotaflow.commands.localkafka import port_open

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
DEV_PORTS = (8080, ADMIN_PORT, 9092, 9101, 9102)


def sign_in_to_console(token: str) -> tuple[int, str]:
    """Signs in through the console's form as a browser would; the status of the sign-in
    and the tenants page it leads to."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    with opener.open(CONSOLE_URL, timeout=10) as form:
        assert form.status == 200
        nonce = re.search(r'name="login_csrf" value="([^"]+)"', form.read().decode())
    assert nonce is not None
    body = urllib.parse.urlencode({"token": token, "login_csrf": nonce.group(1)}).encode()
    try:
        with opener.open(CONSOLE_URL, data=body, timeout=10) as page:
            return page.status, page.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


def test_dev_pipeline_answers_the_readme_curl_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    busy = [p for p in DEV_PORTS if port_open(p)]
    assert not busy, f"ports {busy} are taken; `quotaflow dev` needs them"
    script = re.search(r"```\n(BODY=.*?)\n```", README, re.S)
    assert script is not None, "the README lost its curl example"
    log = (tmp_path / "dev.log").open("wb")
    dev = subprocess.Popen(
        [sys.executable, "-m", "quotaflow.commands.cli", "dev"],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={k: v for k, v in os.environ.items() if not k.startswith("QUOTAFLOW_")},
    )
    try:
        deadline = time.monotonic() + 120
        while b"Ctrl-C stops everything" not in (tmp_path / "dev.log").read_bytes():
            assert dev.poll() is None, (tmp_path / "dev.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "quotaflow dev did not come up"
            time.sleep(0.5)
        answers: list[bytes] = []

        # Run where `make dev` runs: the curl reads the dev app token from .quotaflow/dev/.
        def bash(command: str) -> bytes:
            done = subprocess.run(
                ["bash", "-c", command], cwd=tmp_path, capture_output=True, timeout=30, check=True
            )
            return done.stdout

        stdout = b""
        for _ in range(20):  # the push reaches the edge within milliseconds; allow slack
            stdout = bash(script.group(1))
            answers = stdout.split(b"}{")
            if len(answers) == 2 and b'"limit"' in answers[1]:
                break
            time.sleep(0.5)
        assert answers[0] == b'{"status":"accepted"', stdout
        quota = orjson.loads(b"{" + answers[1])
        assert (quota["tenant_id"], quota["customer_id"]) == ("demo", "cus_demo")
        assert (quota["limit"], quota["remaining"], quota["status"]) == (1000, 1000, "active")
        # The printed consume, twice: one Idempotency-Key, so one unit counted.
        first, again = bash(consume_curl()), bash(consume_curl())
        assert orjson.loads(first) == {"allowed": True, "remaining": 999, "reason": "ok"}
        assert again == first
        url = f"http://127.0.0.1:{FIRST_EDGE_PORT}/v1/quotas/demo/cus_demo"
        token = f'-H "Authorization: Bearer $(cat {APP_TOKEN_FILE})"'
        assert orjson.loads(bash(f"curl -sS {token} {url}"))["used"] == 1
        # Without the token the edge answers nothing (auth is on in dev as in production).
        assert bash(f"curl -sS -o /dev/null -w '%{{http_code}}' {url}") == b"401"
        # The console: the banner names it and where its sign-in token is; that token
        # signs in and the tenants page lists the demo tenant (from the tenants topic).
        banner = (tmp_path / "dev.log").read_text()
        assert CONSOLE_URL in banner
        assert str(ADMIN_TOKEN_FILE) in banner
        token_file = tmp_path / ADMIN_TOKEN_FILE
        assert token_file.stat().st_mode & 0o077 == 0
        status, page = sign_in_to_console(token_file.read_text())
        assert status == 200
        assert 'href="/console/tenants/demo"' in page, page[:2000]
        assert sign_in_to_console("qf-admin-dev-wrong")[0] == 401
    finally:
        dev.send_signal(signal.SIGINT)
        dev.wait(timeout=60)
        log.close()
    assert b"stopped" in (tmp_path / "dev.log").read_bytes()
    assert not [p for p in DEV_PORTS if port_open(p)], "Ctrl-C left a component running"
