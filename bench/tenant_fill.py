"""Benches' tenants as production holds them: sealed, signed records on the `tenants` topic.

`fill_tenants_topic` seals each tenant as the writer does (a data key per tenant wrapped
under the keyring's KEK, secrets AES-GCM, the body signed with the tenants key, version
1) and produces the records to partition 0 of the topic. It skips the writer's audit
records and transactions: what the benches measure only reads the records.
`tenant_env` is what a component needs to read them: the verify key and the keyring.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.worker_bench import make_tenants


@dataclass(frozen=True)
class TenantKeys:
    """The keys of one bench run: a tenants signing key pair and one KEK."""

    signing: str
    verify: str
    kek: bytes

    @classmethod
    def generate(cls) -> TenantKeys:
        from wire.signing import generate_keypair

        private, public = generate_keypair()
        return cls(private, public, os.urandom(32))

    def env(self, tenants_topic_prefix: str) -> dict[str, str]:
        """The settings a component reading the topic needs (prefix names the topics)."""
        import orjson

        return {
            "QUOTAFLOW_TOPIC_PREFIX": tenants_topic_prefix,
            "QUOTAFLOW_TENANT_VERIFY_KEYS": orjson.dumps([self.verify]).decode(),
            "QUOTAFLOW_KEYRING": orjson.dumps({"k1": base64.b64encode(self.kek).decode()}).decode(),
        }


def bench_tenants(n: int) -> list[Any]:
    """`make_tenants(n)` with what production tenants carry beyond it: a Connect account
    and a Stripe API key (the worker's secret), so the registry holds both kinds."""
    from pydantic import SecretStr

    return [
        t.model_copy(
            update={
                "stripe_account": f"acct_1Bench{i:06d}",
                "stripe_api_key": SecretStr(f"rk_test_bench_{i:06d}"),
            }
        )
        for i, t in enumerate(make_tenants(n))
    ]


async def sealed_records(tenants: Sequence[Any], keys: TenantKeys) -> list[tuple[bytes, bytes]]:
    """(key, value) of each tenant's version-1 record."""
    from quotaflow.tenants.keyring import LocalKeyring
    from quotaflow.tenants.sealing import new_data_key, seal_tenant
    from wire.signing import Kind, Signer

    ring = LocalKeyring({"k1": keys.kek})
    signer = Signer(Kind.TENANT, [keys.signing])
    out = []
    for tenant in tenants:
        data_key = await new_data_key(tenant.id, ring)
        out.append((tenant.id.encode(), seal_tenant(tenant, data_key, version=1, signer=signer)))
    return out


async def fill_tenants_topic(
    bootstrap: str, topic: str, tenants: Sequence[Any], keys: TenantKeys
) -> dict[str, Any]:
    """Produces every tenant's sealed record; returns counts, bytes and timings."""
    from aiokafka import AIOKafkaProducer

    started = time.monotonic()
    records = await sealed_records(tenants, keys)
    sealed_s = time.monotonic() - started
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks=1, linger_ms=20, max_batch_size=1024 * 1024
    )
    async with asyncio.timeout(30):
        await producer.start()
    try:
        pending = []
        for key, value in records:
            pending.append(await producer.send(topic, value, key=key, partition=0))
            if len(pending) >= 10_000:
                async with asyncio.timeout(120):
                    await asyncio.gather(*pending)
                pending.clear()
        async with asyncio.timeout(120):
            await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return {
        "records": len(records),
        "mib": round(sum(len(v) for _, v in records) / 2**20, 1),
        "mean_record_bytes": round(sum(len(v) for _, v in records) / max(1, len(records))),
        "seal_s": round(sealed_s, 1),
        "seconds": round(time.monotonic() - started, 1),
    }
