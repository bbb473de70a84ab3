"""Error codes that cross the wire, and the exception the codec raises."""

from __future__ import annotations

from enum import Enum
from typing import Any


class ErrorCode(str, Enum):
    DECODE_ERROR = "decode_error"  # frames are not msgpack maps / wrong frame count
    VERSION_MISMATCH = "version_mismatch"  # header.v is not PROTOCOL_VERSION
    UNKNOWN_TYPE = "unknown_type"  # no body model registered for header.type
    VALIDATION_ERROR = "validation_error"  # header or body failed its model
    OVERSIZE = "oversize"  # message larger than the maximum size
    UNDELIVERABLE = "undeliverable"  # destination unknown or gone
    NOT_REGISTERED = "not_registered"  # sender has not registered (or was dropped as lost)
    SPOOFED_SOURCE = "spoofed_source"  # header.src is not the name the sender registered
    NAME_TAKEN = "name_taken"  # another live peer already holds this name
    UNSUPPORTED = "unsupported"  # receiver does not handle this type
    INVALID_REQUEST = "invalid_request"  # well-formed but semantically wrong
    NOT_FOUND = "not_found"  # the session/task/agent named does not exist
    BUSY = "busy"  # receiver has no capacity
    UNAVAILABLE = "unavailable"  # receiver cannot serve at all now (e.g. its state store is gone)
    TIMEOUT = "timeout"  # a request's deadline passed
    INTERNAL = "internal"  # a handler raised; the service keeps serving


class ProtocolError(Exception):
    """Raised by the codec (and handlers) for input that must be answered with an error."""

    def __init__(self, code: ErrorCode, reason: str, details: dict[str, Any] | None = None):
        super().__init__(f"{code.value}: {reason}")
        self.code = code
        self.reason = reason
        self.details = details or {}
