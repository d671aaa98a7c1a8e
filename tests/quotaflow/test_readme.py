"""The README's promises that code can check."""

from __future__ import annotations

from pathlib import Path

from quotaflow.commands.dev import consume_curl, sample_curl

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_readme_shows_the_exact_signed_curl_that_make_dev_prints() -> None:
    assert sample_curl() in README


def test_readme_shows_the_exact_consume_curl_that_make_dev_prints() -> None:
    assert consume_curl() in README


def test_readme_gives_exactly_the_two_setup_commands() -> None:
    assert "make dev " in README
    assert "make test " in README
