"""Who may import whom: the contracts in pyproject.toml `[tool.importlinter]`, kept; and the
slim edge distribution's contract in step with what `packaging/edge` ships."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tomllib
from fnmatch import fnmatchcase
from functools import cache
from importlib.metadata import packages_distributions
from pathlib import Path
from typing import Any

import grimp
import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SLIM = tomllib.loads((ROOT / "packaging" / "edge" / "pyproject.toml").read_text())
SLIM_CONTRACT_NAME = "the slim edge distribution imports only what it ships"
TOP_CONTRACT_NAME = "the commands sit on top: no face or foundation module imports them"
LAYERS_CONTRACT_NAME = "commands, then faces, then the foundation, then the domain and wire"


def test_every_import_contract_is_kept() -> None:
    done = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout
    # Each contract ran (a renamed package would make a contract vacuous, not broken).
    assert done.stdout.count(" KEPT") == 8
    assert f"{SLIM_CONTRACT_NAME} KEPT" in done.stdout
    assert f"{TOP_CONTRACT_NAME} KEPT" in done.stdout
    assert f"{LAYERS_CONTRACT_NAME} KEPT" in done.stdout


@cache
def _graph() -> grimp.ImportGraph:
    roots = PROJECT["tool"]["importlinter"]["root_packages"]
    return grimp.build_graph(*roots, include_external_packages=True, cache_dir=None)


def _first_party() -> set[str]:
    roots = set(PROJECT["tool"]["importlinter"]["root_packages"])
    return {m for m in _graph().modules if m.split(".")[0] in roots}


def _contract(name: str) -> dict[str, Any]:
    contracts: list[dict[str, Any]] = PROJECT["tool"]["importlinter"]["contracts"]
    (contract,) = [c for c in contracts if c["name"] == name]
    return contract


def _slim_contract() -> dict[str, Any]:
    return _contract(SLIM_CONTRACT_NAME)


def _under(module: str, packages: list[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _ancestors(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def _shipped() -> set[str]:
    """The modules the slim wheel holds, found the way setuptools finds them for
    packaging/edge: the modules of every package `find` includes, each `py-modules` entry,
    and the packages above them (whose `__init__` come along)."""
    config = SLIM["tool"]["setuptools"]
    include = config["packages"]["find"]["include"]
    packages = {
        m
        for m in _first_party()
        if (ROOT / m.replace(".", "/") / "__init__.py").is_file()
        and any(fnmatchcase(m, pattern) for pattern in include)
    }
    singles = set(config["py-modules"])
    wanted = packages | singles | {a for m in singles for a in _ancestors(m)}
    modules = {m for m in _first_party() if m in wanted or m.rpartition(".")[0] in packages}
    assert packages >= {"edge", "wire"}, packages
    assert singles <= modules, singles - modules
    return modules


def test_the_slim_contract_names_exactly_what_packaging_edge_ships() -> None:
    sources = list(_slim_contract()["source_modules"])
    shipped = _shipped()
    covered = {m for m in _first_party() if _under(m, sources)}
    # The packages above the single modules (quotaflow/, tables/) ship their __init__ only.
    assert shipped - covered == {"quotaflow", "tables"}
    assert covered <= shipped, covered - shipped
    graph = _graph()
    for package in ("quotaflow", "tables"):
        imported = graph.find_modules_directly_imported_by(package)
        assert not imported & _first_party(), (package, imported)


def test_the_slim_contract_forbids_every_module_it_does_not_ship() -> None:
    forbidden = list(_slim_contract()["forbidden_modules"])
    shipped = _shipped()
    missing = {m for m in _first_party() - shipped if not _under(m, forbidden)}
    assert not missing, f"add to the slim contract's forbidden_modules: {sorted(missing)}"
    assert not {m for m in shipped if _under(m, forbidden)}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_slim_modules_import_only_the_slim_dependencies() -> None:
    """What the wheel declares is what its modules import (standard library aside), and
    each dependency is the full distribution's own specifier, so the two never drift. A
    module for some callers only (say, an ASGI middleware needing Starlette) may import a
    package of one of the slim distribution's extras instead."""
    extras = SLIM["project"].get("optional-dependencies", {}).values()
    requirements = [*SLIM["project"]["dependencies"], *(r for extra in extras for r in extra)]
    declared = {_canonical(Requirement(r).name) for r in requirements}
    owners = packages_distributions()
    graph = _graph()
    first_party = _first_party()
    for module in _shipped():
        for imported in graph.find_modules_directly_imported_by(module) - first_party:
            top = imported.split(".")[0]
            if top in sys.stdlib_module_names:
                continue
            dists = {_canonical(d) for d in owners.get(top, [top])}
            assert dists & declared, f"{module} imports {top}, not a slim dependency"
    assert set(SLIM["project"]["dependencies"]) <= set(PROJECT["project"]["dependencies"])
    assert SLIM["project"]["version"] == PROJECT["project"]["version"]
    assert SLIM["project"]["scripts"]["quotaflow-edge"] == "edge.cli:main"
    assert PROJECT["project"]["scripts"]["quotaflow-edge"] == "edge.cli:main"


def _absolute_imports(path: Path) -> set[str]:
    """Every module `path` imports by absolute name, at any depth (lazy imports too)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
    return out


def test_benches_and_the_package_import_no_test_code() -> None:
    """Benches build their load with the shipped harness and Stripe objects
    (`quotaflow.testing`), never with `tests/` (which no installed quotaflow has)."""
    sources = sorted((ROOT / "bench").rglob("*.py")) + sorted((ROOT / "quotaflow").rglob("*.py"))
    assert len(sources) > 20
    offenders: dict[str, list[str]] = {}
    for path in sources:
        found = sorted(m for m in _absolute_imports(path) if m.split(".")[0] == "tests")
        if found:
            offenders[str(path.relative_to(ROOT))] = found
    assert not offenders, f"test code imported outside tests/: {offenders}"


def _layers() -> list[list[str]]:
    """The layers contract's layers, top first, each as its list of modules."""
    return [re.split(r"\s*[|:]\s*", layer) for layer in _contract(LAYERS_CONTRACT_NAME)["layers"]]


def test_the_layer_contracts_place_every_module_of_the_project() -> None:
    """A new module is in exactly one layer, and the commands' contract covers every module
    that is not a command: else a new foundation module could import the commands unseen."""
    modules = _first_party() - {"quotaflow"}  # its __init__ imports nothing (checked above)
    layers = _layers()
    for module in modules:
        placed = [i for i, layer in enumerate(layers) if _under(module, layer)]
        assert len(placed) == 1, f"{module} is in layers {placed} of {LAYERS_CONTRACT_NAME!r}"
    top = _contract(TOP_CONTRACT_NAME)
    assert top["forbidden_modules"] == layers[0]
    below = {m for m in modules if not _under(m, layers[0])}
    covered = {m for m in modules if _under(m, top["source_modules"])}
    assert covered == below, sorted(covered ^ below)
    # The foundation is what stays in quotaflow/ outside the top layer, and nothing else.
    foundation = {m.split(".")[1] for m in modules if m.startswith("quotaflow.")} - {
        m.split(".")[1] for m in layers[0]
    }
    assert {m.removeprefix("quotaflow.") for m in layers[2]} == foundation


def _copy_with(tmp: Path, module: str, line: str) -> Path:
    """The project's packages and pyproject.toml in `tmp`, `line` added to `module`."""
    for root in PROJECT["tool"]["importlinter"]["root_packages"]:
        shutil.copytree(ROOT / root, tmp / root, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp / "pyproject.toml")
    path = tmp / (module.replace(".", "/") + ".py")
    path.write_text(path.read_text() + f"\n{line}\n")
    return tmp


@pytest.mark.parametrize(
    ("module", "line"),
    [
        # a foundation module, directly
        ("quotaflow.topics", "import quotaflow.commands.ops.lag"),
        # a face, through a lazy import deep in a function body
        ("streams.app", "def _late() -> None:\n    from quotaflow.commands.tenants import writer"),
        # the registry the components open, reaching for the test harness
        ("quotaflow.tenants.running", "from quotaflow.testing import harness"),
    ],
)
def test_the_layer_contracts_break_when_a_lower_module_imports_the_commands(
    tmp_path: Path, module: str, line: str
) -> None:
    """Run on a copy of the sources with one wrong-direction import added, lint-imports
    fails and both layer contracts name it: the contracts are not vacuous."""
    tree = _copy_with(tmp_path, module, line)
    done = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stdout[-4000:] + done.stderr[-2000:]
    assert f"{TOP_CONTRACT_NAME} BROKEN" in done.stdout
    assert f"{LAYERS_CONTRACT_NAME} BROKEN" in done.stdout
    assert module in done.stdout
    assert "Contracts: 6 kept, 2 broken." in done.stdout
