"""The edge's body limits refuse no legitimate push: the pusher's largest batch of large
records, with the largest tenant list, fits the default push limit (a refused snapshot
would be retried for ever)."""

from __future__ import annotations

import time
import uuid

import orjson

from edge.body import BodyLimits
from edge.settings import EdgeSettings
from streams.push_node import PushConfig
from tables.quota import QuotaUpdate, Reason


def _large_record() -> bytes:
    """A record far larger than any seen: 255-character ids and reason, 32 features of 64
    characters, every number at its widest."""
    update = QuotaUpdate(
        tenant_id="t" * 64,
        customer_id="c" * 255,
        limit=10**18,
        used=10**18,
        remaining=10**18,
        status="grace",
        period_start=1_767_225_600,
        period_end=1_798_761_600,
        version=10**18,
        reason=Reason(kind="stripe_event", id="e" * 255, type="t" * 128),
        updated_at=time.time(),
        features=tuple("f" * 64 for _ in range(32)),
        rate_per_second=1e9,
        grace_until=time.time(),
    )
    return update.to_json()


def _body(records: int, tenants: int) -> bytes:
    """The pusher's envelope (streams/push_node.py `_body`): `records` large records and,
    as a snapshot's first batch carries it, a complete list of `tenants` tenants with ids
    of the longest length `TENANT_ID_PATTERN` allows (63), each in the longest state."""
    states = {f"{i:063d}": "suspended" for i in range(tenants)}
    return (
        b'{"region":"%s","push_id":"%s","snapshot":{"id":"%s","final":false},'
        b'"tenants":%s,"tenants_complete":true,"updates":['
        % (b"r" * 64, uuid.uuid4().hex.encode(), uuid.uuid4().hex.encode(), orjson.dumps(states))
        + b",".join([_large_record()] * records)
        + b"]}"
    )


def test_the_largest_push_batches_fit_the_default_push_limit() -> None:
    config = PushConfig()
    limit = BodyLimits().push
    for records in (config.snapshot_batch, config.batch_max):
        body = _body(records, 0)
        assert orjson.loads(body)["updates"][0]["customer_id"] == "c" * 255
        assert len(body) * 4 < limit, (records, len(body))
    # A snapshot's first batch at the design's scale (100,000 tenants, BENCHMARKS.md).
    first = _body(config.snapshot_batch, 100_000)
    assert len(orjson.loads(first)["tenants"]) == 100_000
    assert len(first) * 1.4 < limit, len(first)


def test_the_settings_defaults_are_the_limits_defaults() -> None:
    fields, limits = EdgeSettings.model_fields, BodyLimits()
    assert fields["edge_push_max_bytes"].default == limits.push
    assert fields["edge_consume_max_bytes"].default == limits.consume
    assert fields["edge_body_read_timeout"].default == limits.timeout
