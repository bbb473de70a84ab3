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
    UNAUTHORIZED = "unauthorized"  # the register lacks the credential the hub requires
    UNSUPPORTED = "unsupported"  # receiver does not handle this type
    INVALID_REQUEST = "invalid_request"  # well-formed but semantically wrong
    NOT_FOUND = "not_found"  # the session/task/agent named does not exist
    BUSY = "busy"  # receiver has no capacity
    UNAVAILABLE = "unavailable"  # receiver cannot serve at all now (e.g. its state store is gone)
    TIMEOUT = "timeout"  # a request's deadline passed
    INTERNAL = "internal"  # a handler raised; the service keeps serving


#: bounds on what an error may echo back of its input
MAX_REASON = 1000
MAX_VALUE = 200
MAX_ITEMS = 10


def safe(value: Any, limit: int = MAX_VALUE) -> str:
    """A bounded, printable rendering of any value (input included): errors quote what
    they were sent without ever carrying bytes, huge values or control characters."""
    try:
        text = value if isinstance(value, str) else repr(value)[:limit * 4]
    except Exception:  # a repr that raises: say what it is
        text = f"<{type(value).__name__}>"
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256
                   else f"\\u{ord(c):04x}" for c in text[:limit * 4])
    return text if len(text) <= limit else text[:limit - 3] + "..."


def safe_details(value: Any, depth: int = 0) -> Any:
    """Error details as plain JSON values of bounded size: numbers, booleans and None as
    they are; strings bounded and printable; lists and maps bounded in length and depth;
    anything else (bytes, objects) as its bounded repr."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) < 2 ** 53 else safe(value)
    if isinstance(value, float):
        return value
    if isinstance(value, str):
        return safe(value)
    if depth < 3 and isinstance(value, (list, tuple)):
        return [safe_details(v, depth + 1) for v in value[:MAX_ITEMS]]
    if depth < 3 and isinstance(value, dict):
        return {safe(k, 80): safe_details(v, depth + 1)
                for k, v in list(value.items())[:MAX_ITEMS]}
    return safe(value)


class ProtocolError(Exception):
    """Raised by the codec (and handlers) for input that must be answered with an error.
    The reason and details are made safe to send back whatever input they quote."""

    def __init__(self, code: ErrorCode, reason: str, details: dict[str, Any] | None = None):
        reason = safe(reason, MAX_REASON)
        super().__init__(f"{code.value}: {reason}")
        self.code = code
        self.reason = reason
        self.details = safe_details(details or {})
