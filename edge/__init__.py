"""The edge: the quota cache a Rating API node consults, and the sidecar that feeds it.

Ships on its own next to a Rating node: imports no Faust and no Kafka client. Signing and
verification come from `wire` (standard library and `cryptography` only).
"""

from edge.asgi import QuotaMiddleware
from edge.cache import Decision, QuotaCache, RateLimited
from edge.exceptions import EdgeError
from edge.identify import Identifier, IdentifyError
from wire import SIGNATURE_HEADER, SignatureError, Signer, Verifier, key_id

__all__ = [
    "SIGNATURE_HEADER",
    "Decision",
    "EdgeError",
    "Identifier",
    "IdentifyError",
    "QuotaCache",
    "QuotaMiddleware",
    "RateLimited",
    "SignatureError",
    "Signer",
    "Verifier",
    "key_id",
]
