"""The wire contract's errors, on one base class.

WireError
└── SignatureError   a signed message was refused; `reason` is stable and machine-readable

A malformed key is a `ValueError` when it is loaded (configuration time), never later.
"""

from __future__ import annotations


class WireError(Exception):
    """Base of every error the wire package raises on purpose."""


class SignatureError(WireError):
    """A signature did not verify. Never carries a key or a body, only the reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
