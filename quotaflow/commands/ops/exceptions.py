"""Errors of the operator tools, on one base class (`OpsError`, defined in the foundation
because the worker's reconcile and the shared topic reader raise it too); click shows
their message."""

from __future__ import annotations

from quotaflow.exceptions import OpsError

__all__ = ["BadSpec", "OpsError", "UnknownTenant"]


class BadSpec(OpsError):
    """A time, offset or duration given on the command line does not parse."""

    def __init__(self, what: str, value: str) -> None:
        super().__init__(f"cannot read {what} {value!r}")
        self.what = what
        self.value = value


class UnknownTenant(OpsError):
    """The tenant is not in the registry."""

    def __init__(self, tenant_id: str) -> None:
        super().__init__(f"unknown tenant {tenant_id!r}")
        self.tenant_id = tenant_id
