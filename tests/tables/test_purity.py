"""tables/ is the pure domain: no Faust, Kafka, HTTP or other quotaflow faces."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

import tables

TABLES = Path(tables.__file__).parent
ALLOWED_THIRD_PARTY = {"pydantic", "orjson"}
PUBLIC_MODULES = [
    "billing",
    "billing_state",
    "dedupe",
    "notification",
    "notifications",
    "outcome",
    "policy",
    "stripe_objects",
    "usage",
]


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", sorted(TABLES.glob("*.py")), ids=lambda p: p.name)
def test_module_imports_only_stdlib_pydantic_orjson_and_tables(path: Path) -> None:
    foreign = {
        root
        for root in imported_roots(path)
        if root not in sys.stdlib_module_names
        and root not in ALLOWED_THIRD_PARTY
        and root not in {"tables", "__future__"}
    }
    assert foreign == set()


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_names_exist(name: str) -> None:
    module = importlib.import_module(f"tables.{name}")
    exported = module.__all__
    assert len(set(exported)) == len(exported)
    assert all(hasattr(module, attr) for attr in exported)
