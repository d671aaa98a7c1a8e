"""JSON access logs: one line per webhook (2xx sampled), never a body or a secret.

Fields travel as `extra` on the `quotaflow.ingress` logger; `quotaflow.logs.JsonFormatter`
(installed by the CLI) renders them as one JSON object per line.
"""

from __future__ import annotations

import logging
import os
import random
import time

__all__ = ["ACCESS_LOG", "log_access"]

ACCESS_LOG = logging.getLogger("quotaflow.ingress")
_PID = os.getpid()  # each worker is spawned, so each imports this module afresh


def log_access(
    *,
    route: str,
    tenant_id: str | None,
    event_id: str | None,
    event_type: str | None,
    outcome: str,
    reason: str,
    status: int,
    started: float,
    secret_id: str | None = None,
    sample: float = 1.0,
) -> None:
    """Logs one webhook request at INFO (WARNING for 5xx); free when INFO is off.

    Only a `sample` fraction of 2xx answers is logged (the line costs about as much as
    the rest of the request); every refusal and error is."""
    if status < 300 and sample < 1.0 and random.random() >= sample:
        return
    level = logging.WARNING if status >= 500 else logging.INFO
    if not ACCESS_LOG.isEnabledFor(level):
        return
    ACCESS_LOG.log(
        level,
        "webhook",
        extra={
            "route": route,
            # The URL's tenant id is client-supplied: bounded before it reaches a log.
            "tenant_id": tenant_id[:64] if tenant_id is not None else None,
            "event_id": event_id,
            "event_type": event_type,
            "outcome": outcome,
            "reason": reason,
            "status": status,
            "secret_id": secret_id,
            "latency_ms": round((time.perf_counter() - started) * 1000.0, 3),
            "pid": _PID,  # which worker answered, with `quotaflow ingress --workers N`
        },
    )
