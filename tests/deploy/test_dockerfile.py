"""The Dockerfile, read as text (no Docker engine here): slim base, every package of the
project copied, a fixed non-root user, and `quotaflow` as the entry point."""

from __future__ import annotations

import json
import re
import tomllib

from tests.deploy.support import ROOT

DOCKERFILE = ROOT / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def _final_stage() -> list[tuple[str, str]]:
    instructions = _instructions()
    last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    return instructions[last_from:]


def test_every_stage_is_python_311_slim() -> None:
    images = [arg.split()[0] for op, arg in _instructions() if op == "FROM"]
    assert images
    assert all(image == "python:3.11-slim" for image in images)


def test_copies_every_package_setuptools_installs() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    includes = project["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.rstrip("*") for pattern in includes}
    sources = {
        source.rstrip("/")
        for op, arg in _instructions()
        if op == "COPY" and not arg.startswith("--from")
        for source in arg.split()[:-1]
    }
    assert packages <= sources
    assert {"pyproject.toml", "README.md"} <= sources
    for source in sources:
        assert (ROOT / source).exists(), source


def test_runs_as_a_fixed_non_root_user() -> None:
    users = [arg for op, arg in _final_stage() if op == "USER"]
    assert users, "the final stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit()
    assert int(uid) >= 1000


def test_entrypoint_is_the_quotaflow_command() -> None:
    entrypoints = [arg for op, arg in _final_stage() if op == "ENTRYPOINT"]
    assert json.loads(entrypoints[-1]) == ["quotaflow"]


def test_components_listen_on_all_interfaces_inside_the_container() -> None:
    env = " ".join(arg for op, arg in _final_stage() if op == "ENV")
    assert "QUOTAFLOW_INGRESS_HOST=0.0.0.0" in env
    assert "QUOTAFLOW_EDGE_HOST=0.0.0.0" in env
