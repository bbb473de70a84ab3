"""Base class for message bodies."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict


class Body(BaseModel):
    """A message body. ``TYPE`` is the header ``type`` it travels under."""

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")
    TYPE: ClassVar[str] = ""
    #: fields of type bytes: sent as raw bytes (msgpack bin), not as JSON text
    BINARY: ClassVar[tuple[str, ...]] = ()
