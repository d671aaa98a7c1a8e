"""The edge's errors, on one base class.

EdgeError
└── SignatureError   a push was refused; `reason` is stable and machine-readable
"""

from __future__ import annotations


class EdgeError(Exception):
    """Base of every error the edge package raises on purpose."""


class SignatureError(EdgeError):
    """A push signature did not verify. Never carries a key or a body, only the reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
