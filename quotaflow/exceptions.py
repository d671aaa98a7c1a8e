"""The root of quotaflow's own errors; each package derives its family from it."""


class QuotaflowError(Exception):
    """Base of every error quotaflow raises on purpose."""


class ConfigurationError(QuotaflowError):
    """The deployment is set up wrong (settings, topics): a one-line reason is all an
    operator needs, and the command exits with it instead of a traceback."""


class OpsError(QuotaflowError):
    """An operator command, or a topic read or Stripe reconcile the commands share with the
    worker (`quotaflow.topicread`, `streams.reconcile`), cannot do what it was asked; the
    message says why. Defined here, below both, so each raises and catches the one class."""
