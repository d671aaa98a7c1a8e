"""The edge's errors, on one base class.

EdgeError            base of what the edge raises on purpose

A refused push is a `wire.SignatureError` (the signed-message format is `wire/signing.py`,
shared with the ingress and the pushers).
"""

from __future__ import annotations


class EdgeError(Exception):
    """Base of every error the edge package raises on purpose."""
