"""The header every routed message and event carries."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

PROTOCOL_VERSION = 1

#: Destination name of the hub itself (registration, heartbeats, registry queries).
HUB = "hub"


class Header(BaseModel):
    """``{v, type, id, src, dst, corr, ts}``.

    ``id`` is unique per message (the sender's request id); ``corr`` is the ``id`` of the
    message a reply answers (empty for requests and one-way messages); ``ts`` is the
    sender's wall clock in seconds.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: int = PROTOCOL_VERSION
    type: str = Field(min_length=1, max_length=64)
    id: str = Field(min_length=1, max_length=64)
    src: str = Field(min_length=1, max_length=128)
    dst: str = Field(min_length=1, max_length=128)
    corr: str = Field(default="", max_length=64)
    ts: float = 0.0
