"""Test and benchmark tooling that ships with quotaflow (never imported by a component):
the Stripe stand-in and Stripe object builders, the gateways, and the process harness
(`harness.py`) that `quotaflow dev`, the tests and the benches all run the pipeline with."""
