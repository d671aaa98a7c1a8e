"""Operator tools: replay, dead letters, quota explain, reconcile with Stripe, consumer lag.

Each module does one job on the real topics and is driven by `quotaflow.commands.ops.cli`. They
write only what the pipeline would accept from the ingress (same topics, keys, headers),
so every operation is as safe as a Stripe redelivery: state is idempotent.
"""
