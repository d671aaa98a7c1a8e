"""Operator tools: replay, dead letters, quota explain, reconcile with Stripe, consumer lag.

Each module does one job on the real topics and is driven by `quotaflow.commands.ops.cli`.
They write only what the pipeline would accept from the ingress (same topics, keys,
headers), so every operation is as safe as a Stripe redelivery: state is idempotent. What
the worker runs too is not here but below the commands: reconcile (`streams/reconcile.py`,
run on every resume), the topic reader and the producer (`quotaflow/topicread.py`,
`quotaflow/produce.py`).
"""
