"""The root of quotaflow's own errors; each package derives its family from it."""


class QuotaflowError(Exception):
    """Base of every error quotaflow raises on purpose."""
