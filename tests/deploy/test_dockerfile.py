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


def _stage(name: str) -> list[tuple[str, str]]:
    """The instructions of the stage `FROM … AS name`, its FROM included."""
    instructions = _instructions()
    starts = [i for i, (op, _) in enumerate(instructions) if op == "FROM"]
    (start,) = [i for i in starts if instructions[i][1].split()[-1] == name]
    end = min([i for i in starts if i > start], default=len(instructions))
    return instructions[start:end]


def test_the_edge_target_builds_only_the_slim_distribution() -> None:
    """`docker build --target edge`: the sources packaging/edge builds from, nothing else of
    the project (no streams, no ingress, not the full pyproject), installed by pip from
    packaging/edge into a venv of its own."""
    slim = tomllib.loads((ROOT / "packaging" / "edge" / "pyproject.toml").read_text())
    setuptools = slim["tool"]["setuptools"]
    shipped_tops = {p.split(".")[0] for p in setuptools["packages"]["find"]["include"]}
    shipped_tops |= {m.split(".")[0] for m in setuptools["py-modules"]}
    build = _stage("edge-build")
    sources = {
        source.rstrip("/")
        for op, arg in build
        if op == "COPY" and not arg.startswith("--from")
        for source in arg.split()[:-1]
    }
    assert sources == shipped_tops | {"packaging/edge"}
    for source in sources:
        assert (ROOT / source).exists(), source
    runs = " ".join(arg for op, arg in build if op == "RUN")
    assert "/opt/quotaflow-edge/bin/pip install ./packaging/edge" in runs
    assert "pip install ." not in runs.replace("pip install ./packaging/edge", "")


def test_the_edge_image_runs_quotaflow_edge_as_the_fixed_non_root_user() -> None:
    edge = _stage("edge")
    assert edge[0][1].split()[0] == "python:3.11-slim"
    copies = [arg for op, arg in edge if op == "COPY"]
    assert copies == ["--from=edge-build /opt/quotaflow-edge /opt/quotaflow-edge"]
    entrypoints = [arg for op, arg in edge if op == "ENTRYPOINT"]
    assert json.loads(entrypoints[-1]) == ["quotaflow-edge"]
    assert [op for op, _ in edge].count("CMD") == 0  # runs the sidecar, not --help
    users = [arg for op, arg in edge if op == "USER"]
    assert users == [arg for op, arg in _final_stage() if op == "USER"]
    env = " ".join(arg for op, arg in edge if op == "ENV")
    assert "PATH=/opt/quotaflow-edge/bin:$PATH" in env
    assert "QUOTAFLOW_EDGE_HOST=0.0.0.0" in env
    # The full image stays the default target: the edge stages come before it.
    froms = [arg.split()[-1] for op, arg in _instructions() if op == "FROM"]
    assert froms.index("edge") < len(froms) - 1
