"""An edge node's announcement of itself: who it is, where its pusher reaches it, when.

Written by the edge sidecar (`edge/announcer.py`), signed with its edge key (Ed25519),
relayed by the ingress (`POST /v1/edge/nodes`) into the compacted `edge.nodes` topic
(key `region/node_id`, value = the signed body byte for byte, signature in the
`qf-signature` header; a departure becomes a tombstone) and read by the region's
pushers (`streams/node_directory.py`), which verify the signature again.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

NODE_ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
REGION_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
SIGNATURE_RECORD_HEADER = "qf-signature"
BOOT_ID_PATTERN = r"^[0-9a-f]{32}$"


class NodeAnnouncement(BaseModel):
    """`leaving` is true once, when the node stops gracefully; `boot_id` changes at every
    start of the node's process."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    region: str = Field(..., pattern=REGION_PATTERN)
    node_id: str = Field(..., pattern=NODE_ID_PATTERN)
    url: str = Field(..., pattern=r"^https?://[^\s/]+(/[^\s]*)?$", max_length=512)
    at: float
    leaving: bool = False
    # The announcing process's boot id (new at every start); absent from older nodes.
    boot_id: str | None = Field(None, pattern=BOOT_ID_PATTERN)

    @property
    def key(self) -> str:
        return f"{self.region}/{self.node_id}"
