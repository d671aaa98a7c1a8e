"""Real NGINX and Caddy in front of a Rating API and an edge sidecar, configured from the
ready-to-use snippets in `deploy/gateways/`, for the tests and the gateway bench.

Each gateway runs in the foreground (`daemon off`, `caddy run`), on 127.0.0.1 only, from a
private prefix directory, and needs no privilege: when the caller is root the gateway runs
as `nobody`, so a test run as root proves it works unprivileged too.

The binaries are passed in (the tests find them with their tool fixtures, which fail when
one is missing; `scripts/install-deploy-tools.sh` installs both from Debian's packages).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from quotaflow.commands.localkafka import port_open
from quotaflow.testing.processes import stop_process

__all__ = [
    "CADDYFILE",
    "NGINX_TEMPLATE",
    "Gateway",
    "caddy_gateway",
    "nginx_gateway",
    "render_nginx",
]

GATEWAYS = Path(__file__).resolve().parents[2] / "deploy" / "gateways"
NGINX_TEMPLATE = GATEWAYS / "nginx.conf.template"
CADDYFILE = GATEWAYS / "Caddyfile"
NGINX_PLACEHOLDERS = (
    "QUOTAFLOW_LISTEN",
    "QUOTAFLOW_UPSTREAM",
    "QUOTAFLOW_EDGE",
    "QUOTAFLOW_GATEWAY_TOKEN",
)


@dataclass
class Gateway:
    """A running gateway: where it listens and its log."""

    name: str
    port: int
    log: Path
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def render_nginx(template: str, values: Mapping[str, str]) -> str:
    """The template with its `${QUOTAFLOW_…}` placeholders filled, as `envsubst` with the
    variable list would (NGINX's own `$variables` are left alone)."""
    missing = set(NGINX_PLACEHOLDERS) - set(values)
    if missing:
        raise ValueError(f"no value for {sorted(missing)}")
    for name in NGINX_PLACEHOLDERS:
        template = template.replace("${" + name + "}", values[name])
    return template


def _unprivileged() -> tuple[int, int] | None:
    """(uid, gid) of `nobody` when the caller is root (the gateway drops to it), else None."""
    if os.geteuid() != 0:
        return None
    nobody = pwd.getpwnam("nobody")
    return nobody.pw_uid, nobody.pw_gid


@contextmanager
def _prefix(name: str) -> Iterator[Path]:
    """A private directory the gateway (perhaps `nobody`) owns; removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=f"quotaflow-{name}-"))
    try:
        path.chmod(0o755)
        drop = _unprivileged()
        if drop is not None:
            os.chown(path, *drop)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _executable(binary: Path, prefix: Path) -> Path:
    """The binary as the gateway's user can run it: a copy in its prefix when privileges
    are dropped (the tool cache may sit in root's home, which `nobody` cannot enter)."""
    if _unprivileged() is None:
        return binary
    copy = prefix / binary.name
    shutil.copy2(binary, copy)
    return copy


def _wait(gateway: Gateway, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gateway.proc.poll() is not None:
            raise RuntimeError(f"{gateway.name} exited {gateway.proc.returncode}: {gateway.tail()}")
        if port_open(gateway.port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{gateway.name} did not listen on {gateway.port}: {gateway.tail()}")


@contextmanager
def _run(
    name: str, args: list[str], port: int, log: Path, env: Mapping[str, str], timeout: float
) -> Iterator[Gateway]:
    drop = _unprivileged()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env),
            user=None if drop is None else drop[0],
            group=None if drop is None else drop[1],
        )
    gateway = Gateway(name, port, log, proc)
    try:
        _wait(gateway, timeout)
        yield gateway
    finally:
        stop_process(proc)


@contextmanager
def nginx_gateway(
    nginx: Path,
    *,
    port: int,
    upstream: str,
    edge: str,
    token: str,
    log: Path,
    template: Path = NGINX_TEMPLATE,
    timeout: float = 20.0,
) -> Iterator[Gateway]:
    """NGINX on 127.0.0.1:`port` with `template` (the snippet) rendered and included."""
    with _prefix("nginx") as prefix:
        snippet = render_nginx(
            template.read_text(),
            {
                "QUOTAFLOW_LISTEN": f"127.0.0.1:{port}",
                "QUOTAFLOW_UPSTREAM": upstream,
                "QUOTAFLOW_EDGE": edge,
                "QUOTAFLOW_GATEWAY_TOKEN": token,
            },
        )
        (prefix / "quotaflow.conf").write_text(snippet)
        temps = "\n".join(
            f"    {kind}_temp_path {prefix}/{kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        (prefix / "nginx.conf").write_text(
            f"""daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log stderr notice;
events {{ worker_connections 1024; }}
http {{
    access_log off;
{temps}
    include {prefix}/quotaflow.conf;
}}
"""
        )
        args = [
            str(_executable(nginx, prefix)),
            "-p",
            str(prefix),
            "-c",
            str(prefix / "nginx.conf"),
            "-e",
            "stderr",
        ]
        with _run("nginx", args, port, log, {"PATH": os.defpath}, timeout) as gateway:
            yield gateway


@contextmanager
def caddy_gateway(
    caddy: Path,
    *,
    port: int,
    upstream: str,
    edge: str,
    token: str,
    log: Path,
    caddyfile: Path = CADDYFILE,
    timeout: float = 20.0,
) -> Iterator[Gateway]:
    """Caddy on 127.0.0.1:`port` running `caddyfile` (imported as is; placeholders from the
    environment), without its admin endpoint or automatic HTTPS."""
    with _prefix("caddy") as prefix:
        shutil.copyfile(caddyfile, prefix / "Caddyfile.quotaflow")
        (prefix / "Caddyfile").write_text(
            f"""{{
	admin off
	auto_https off
	storage file_system {prefix}/data
}}

import {prefix}/Caddyfile.quotaflow
"""
        )
        env = {
            "PATH": os.defpath,
            "HOME": str(prefix),
            "XDG_CONFIG_HOME": str(prefix / "config"),
            "XDG_DATA_HOME": str(prefix / "data"),
            "QUOTAFLOW_SITE": f"http://127.0.0.1:{port}",
            "QUOTAFLOW_UPSTREAM": upstream,
            "QUOTAFLOW_EDGE": edge,
            "QUOTAFLOW_GATEWAY_TOKEN": token,
        }
        args = [
            str(_executable(caddy, prefix)),
            "run",
            "--adapter",
            "caddyfile",
            "--config",
            str(prefix / "Caddyfile"),
        ]
        with _run("caddy", args, port, log, env, timeout) as gateway:
            yield gateway
