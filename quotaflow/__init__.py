"""quotaflow: Stripe billing turned into live API quotas at the edge.

This package holds what every face shares (settings, topic names, the tenant registry,
logging, the local broker) and the one command line, `quotaflow`, which is the only
module that imports every face.
"""

__version__ = "0.1.0"
