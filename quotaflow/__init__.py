"""quotaflow: Stripe billing turned into live API quotas at the edge.

Two layers live here. The foundation every face builds on: settings, the envelope, topic
names and creation, the tenant registry (`tenants/`, read side), JSON logs, the process
runner, the ops HTTP server, egress checks, the topic reader and producer the worker and
the tools share. On top, `commands/`: the one command line, `quotaflow`, the operator
tools, the console and the local broker; nothing outside `commands/` (and the test
harness, `testing/`) imports it, a contract in `pyproject.toml` checks.
"""

__version__ = "0.1.0"
