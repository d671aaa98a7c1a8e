"""Kafka record headers every face agrees on, beside the signed-message format.

`qf-schema` names the schema and major version of a record's value on every topic that
carries one (`stripe-event/1`, `usage-batch/1`, `quota-update/1`): consumers check the
major version before they read. The values stay with the record types they describe
(`quotaflow.envelope`, `tables.usage`, `tables.quota`); the header name is defined here,
once, so the producers (ingress, worker) and the readers (worker, ops tools) cannot
disagree on it.
"""

from __future__ import annotations

SCHEMA_HEADER = "qf-schema"
