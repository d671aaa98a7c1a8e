"""The usage spool on a real directory: its incarnation is created with it, survives
restarts, and changes only when the spool starts over empty."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from edge.spool import UsageSpool
from tables.dedupe import BatchId, parse_batch_id


def _spool(path: Path) -> UsageSpool:
    spool = UsageSpool(path)
    spool.load()
    return spool


def test_a_new_spool_gets_a_random_incarnation_stored_with_it(tmp_path: Path) -> None:
    spool = _spool(tmp_path / "a")
    assert re.fullmatch(r"[0-9a-f]{16}", spool.incarnation)
    stored = orjson.loads((tmp_path / "a" / "incarnation").read_bytes())
    assert stored == {"incarnation": spool.incarnation, "first_seq": 1}
    batch = spool.seal({("acme", "cus_1"): 3})
    assert parse_batch_id(spool.batch_id("n1", batch.seq)) == BatchId("n1", spool.incarnation, 1)
    assert _spool(tmp_path / "b").incarnation != spool.incarnation


def test_a_restart_keeps_the_incarnation_and_the_sequence(tmp_path: Path) -> None:
    first = _spool(tmp_path)
    first.seal({("acme", "cus_1"): 3})
    first.seal({("acme", "cus_1"): 4})
    first.remove(1)
    again = _spool(tmp_path)
    assert again.incarnation == first.incarnation
    assert again.next_seq == 3
    assert again.batch_id("n1", 2) == f"n1:{first.incarnation}:2"


def test_an_emptied_spool_is_a_new_incarnation_starting_at_one(tmp_path: Path) -> None:
    old = _spool(tmp_path / "spool")
    for _ in range(5):
        old.remove(old.seal({("acme", "cus_1"): 1}).seq)
    # A container restarted without its volume: the directory is gone.
    new = _spool(tmp_path / "fresh-volume")
    assert new.next_seq == 1
    assert new.incarnation != old.incarnation
    assert new.batch_id("n1", 1) != old.batch_id("n1", 1)


def test_a_spool_from_before_incarnations_keeps_legacy_ids_for_its_old_batches(
    tmp_path: Path,
) -> None:
    # What the previous version left: next_seq and an unsent (maybe delivered) batch 6.
    (tmp_path / "next_seq").write_text("7")
    doc = {"seq": 6, "items": [["acme", "cus_1", 5]]}
    (tmp_path / f"batch-{6:020d}.json").write_bytes(orjson.dumps(doc))
    spool = _spool(tmp_path)
    assert spool.batch_id("n1", 6) == "n1:6"  # as the core may already hold it
    batch = spool.seal({("acme", "cus_1"): 1})
    assert batch.seq == 7
    assert spool.batch_id("n1", 7) == f"n1:{spool.incarnation}:7"
    assert _spool(tmp_path).batch_id("n1", 6) == "n1:6"  # and so after a restart


def test_batch_ids_need_a_loaded_spool(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        UsageSpool(tmp_path).batch_id("n1", 1)
