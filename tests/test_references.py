"""Every test file that the docs or the code cite exists: a renamed or removed test must
not leave a claim (a path under tests/ named as what checks a rule) pointing at nothing."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CITED = re.compile(r"(?<![\w/.-])tests/[\w/]+\.py")
# Files of other projects cited by their own paths (stripe-python's suite).
FOREIGN = re.compile(r"stripe-python's\s+$")
SOURCES = ("quotaflow", "ingress", "streams", "edge", "tables", "wire", "bench", "tests")


def _citing_files() -> list[Path]:
    docs = sorted(ROOT.glob("*.md"))
    code = [p for d in SOURCES for p in sorted((ROOT / d).rglob("*.py"))]
    return docs + code


def test_every_cited_test_file_exists() -> None:
    missing: list[str] = []
    cited = 0
    for path in _citing_files():
        text = path.read_text()
        for match in CITED.finditer(text):
            if FOREIGN.search(text[max(0, match.start() - 40) : match.start()]):
                continue
            cited += 1
            if not (ROOT / match.group()).is_file():
                line = text.count("\n", 0, match.start()) + 1
                missing.append(f"{path.relative_to(ROOT)}:{line}: {match.group()}")
    assert cited > 20  # the docs cite tests throughout; none found means the scan broke
    assert not missing, "cited test files that do not exist:\n" + "\n".join(missing)
