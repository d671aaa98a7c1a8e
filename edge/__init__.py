"""The edge: the quota cache a Rating API node consults, and the sidecar that feeds it.

Ships on its own next to a Rating node: imports no Faust and no Kafka client.
"""

from edge.cache import Decision, QuotaCache
from edge.exceptions import EdgeError, SignatureError
from edge.signing import SIGNATURE_HEADER, PushSigner, PushVerifier, key_id

__all__ = [
    "SIGNATURE_HEADER",
    "Decision",
    "EdgeError",
    "PushSigner",
    "PushVerifier",
    "QuotaCache",
    "SignatureError",
    "key_id",
]
