"""The wire contract between quotaflow's faces: how every message that crosses a trust
boundary between them is signed and verified, and the record headers they agree on.

Below every face: imports only the standard library and `cryptography`, never settings,
Faust, Kafka or the domain, so the edge (which ships on its own), the ingress and the
pushers all speak it without importing each other.
"""

from wire.exceptions import SignatureError, WireError
from wire.records import SCHEMA_HEADER
from wire.signing import (
    REGION_HTTP_HEADER,
    SIGNATURE_HEADER,
    Kind,
    Signer,
    Verifier,
    generate_keypair,
    key_id,
    public_key_id,
    public_key_of,
    signed_message,
)

__all__ = [
    "REGION_HTTP_HEADER",
    "SCHEMA_HEADER",
    "SIGNATURE_HEADER",
    "Kind",
    "SignatureError",
    "Signer",
    "Verifier",
    "WireError",
    "generate_keypair",
    "key_id",
    "public_key_id",
    "public_key_of",
    "signed_message",
]
