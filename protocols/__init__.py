"""Every message shape that crosses a ccaa socket, and the one codec for them.

Routed messages travel as two frames ``[header, body]`` (the hub's ROUTER adds and strips
the peer identity frame); events travel as ``[topic, header, body]``. See PROTOCOL.md.
"""

from protocols.codec import (
    MAX_MESSAGE_SIZE,
    Message,
    decode,
    decode_event,
    decode_header,
    encode,
    encode_event,
    make_header,
)
from protocols.errors import ErrorCode, ProtocolError
from protocols.header import PROTOCOL_VERSION, Header
from protocols.registry import MESSAGE_TYPES, body_model

__all__ = [
    "MAX_MESSAGE_SIZE",
    "MESSAGE_TYPES",
    "PROTOCOL_VERSION",
    "ErrorCode",
    "Header",
    "Message",
    "ProtocolError",
    "body_model",
    "decode",
    "decode_event",
    "decode_header",
    "encode",
    "encode_event",
    "make_header",
]
