"""The consume idempotency cache (`edge/idempotency.py`): pure, on a fake clock."""

from __future__ import annotations

import pytest

from edge.idempotency import IdempotencyCache, KeyReused, Request, valid_key

ASK: Request = ("t1", "c1", 1, None)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_first_answer_is_replayed_for_the_same_request() -> None:
    cache = IdempotencyCache(clock=Clock())
    assert cache.lookup("rating", "k1", ASK) is None
    cache.store("rating", "k1", ASK, b"first")
    assert cache.lookup("rating", "k1", ASK) == b"first"


def test_another_request_under_the_same_key_is_refused() -> None:
    cache = IdempotencyCache(clock=Clock())
    cache.store("rating", "k1", ASK, b"first")
    others: tuple[Request, ...] = (
        ("t1", "c1", 2, None),
        ("t1", "c2", 1, None),
        ("t2", "c1", 1, None),
        ("t1", "c1", 1, "bulk"),  # the same call naming a feature
    )
    for other in others:
        with pytest.raises(KeyReused):
            cache.lookup("rating", "k1", other)


def test_keys_are_scoped_per_application() -> None:
    cache = IdempotencyCache(clock=Clock())
    cache.store("rating", "k1", ASK, b"rating's")
    assert cache.lookup("gateway", "k1", ("t9", "c9", 5, None)) is None
    cache.store("gateway", "k1", ("t9", "c9", 5, None), b"gateway's")
    assert cache.lookup("rating", "k1", ASK) == b"rating's"
    assert cache.held() == {"rating": 1, "gateway": 1}


def test_a_key_expires_after_its_ttl_from_first_use() -> None:
    clock = Clock()
    cache = IdempotencyCache(ttl=10.0, clock=clock)
    cache.store("rating", "k1", ASK, b"first")
    clock.now += 9.9
    assert cache.lookup("rating", "k1", ASK) == b"first"  # a replay does not extend it
    clock.now += 0.1
    assert cache.lookup("rating", "k1", ASK) is None
    assert len(cache) == 0
    cache.store("rating", "k1", ("t1", "c1", 7, None), b"second")  # the key may be used anew
    assert cache.lookup("rating", "k1", ("t1", "c1", 7, None)) == b"second"


def test_expired_keys_are_swept_as_new_ones_arrive() -> None:
    clock = Clock()
    cache = IdempotencyCache(ttl=10.0, clock=clock)
    for i in range(100):
        cache.store("rating", f"k{i}", ASK, b"x")
    clock.now += 11
    cache.store("rating", "fresh", ASK, b"x")
    assert len(cache) == 1


def test_past_max_keys_the_oldest_go_first_and_only_that_applications() -> None:
    cache = IdempotencyCache(max_keys=3, clock=Clock())
    cache.store("gateway", "g", ASK, b"g")
    for i in range(5):
        cache.store("rating", f"k{i}", ASK, b"%d" % i)
    assert cache.held() == {"gateway": 1, "rating": 3}
    assert cache.lookup("rating", "k1", ASK) is None
    assert cache.lookup("rating", "k2", ASK) == b"2"
    assert cache.lookup("gateway", "g", ASK) == b"g"


@pytest.mark.parametrize(
    ("key", "ok"),
    [
        ("3f2c1a9e-7d7b-4c3e-9a53-0d5c1f2b8e11", True),
        ("a", True),
        ("x" * 255, True),
        ("x" * 256, False),
        ("", False),
        ("has space", False),
        ("tab\there", False),
        ("é", False),
    ],
)
def test_valid_keys(key: str, ok: bool) -> None:
    assert valid_key(key) is ok


def test_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="max_keys"):
        IdempotencyCache(max_keys=0)
    with pytest.raises(ValueError, match="ttl"):
        IdempotencyCache(ttl=0)
