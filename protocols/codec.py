"""The one codec: body model -> frames, frames -> model or a ProtocolError with a code.

Routed message frames: ``[header, body]``, each a msgpack map.
Event frames: ``[topic, header, body]`` with ``topic`` as UTF-8 bytes.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Sequence

import msgpack
from pydantic import ValidationError

from protocols.base import Body
from protocols.errors import ErrorCode, ProtocolError, safe
from protocols.header import PROTOCOL_VERSION, Header
from protocols.registry import body_model

#: Largest accepted message (all frames together), in bytes.
MAX_MESSAGE_SIZE = 4 * 1024 * 1024

Frames = Sequence[bytes]


@dataclass(frozen=True, slots=True)
class Message:
    header: Header
    body: Body


def new_id() -> str:
    """32 random hex digits, as uuid4().hex but without building a UUID (0.7 instead of
    4 us: every message header takes one)."""
    return os.urandom(16).hex()


def make_header(type_: str, src: str, dst: str, corr: str = "", id_: str = "") -> Header:
    return Header(type=type_, id=id_ or new_id(), src=src, dst=dst, corr=corr, ts=time.time())


def _pack(obj: dict[str, Any]) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def body_values(body: Body) -> dict[str, Any]:
    """The body as msgpack values: JSON-compatible, except its ``BINARY`` fields, which
    travel as raw bytes (msgpack bin), not as text."""
    if not body.BINARY:
        return body.model_dump(mode="json")
    values = body.model_dump(mode="json", exclude=set(body.BINARY))
    values.update({name: getattr(body, name) for name in body.BINARY})
    return values


def encode(header: Header, body: Body) -> list[bytes]:
    if header.type != body.TYPE:
        raise ValueError(f"header type {header.type!r} does not match body {body.TYPE!r}")
    frames = [_pack(header.model_dump()), _pack(body_values(body))]
    size = len(frames[0]) + len(frames[1])
    if size > MAX_MESSAGE_SIZE:
        raise ProtocolError(
            ErrorCode.OVERSIZE,
            f"message of {size} bytes exceeds the maximum of {MAX_MESSAGE_SIZE}",
            {"size": size, "max": MAX_MESSAGE_SIZE},
        )
    return frames


def encode_event(topic: str, header: Header, body: Body) -> list[bytes]:
    return [topic.encode(), *encode(header, body)]


def _unpack_map(frame: bytes, what: str) -> dict[str, Any]:
    try:
        obj = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(ErrorCode.DECODE_ERROR, f"{what} is not valid msgpack: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(
            ErrorCode.DECODE_ERROR, f"{what} must be a msgpack map, got {type(obj).__name__}"
        )
    return obj


def check_size(frames: Frames) -> None:
    size = sum(len(f) for f in frames)
    if size > MAX_MESSAGE_SIZE:
        raise ProtocolError(
            ErrorCode.OVERSIZE,
            f"message of {size} bytes exceeds the maximum of {MAX_MESSAGE_SIZE}",
            {"size": size, "max": MAX_MESSAGE_SIZE},
        )


def decode_header(frames: Frames) -> Header:
    """Check size, frame count, header shape, version and type; leave the body unparsed.

    This is all a router needs: it forwards the body frame untouched.
    """
    check_size(frames)
    if len(frames) != 2:
        raise ProtocolError(
            ErrorCode.DECODE_ERROR, f"expected 2 frames [header, body], got {len(frames)}"
        )
    raw = _unpack_map(frames[0], "header")
    version = raw.get("v")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            ErrorCode.VERSION_MISMATCH,
            f"protocol version {safe(version, 40)} is not supported; this peer speaks "
            f"{PROTOCOL_VERSION}",
            {"expected": PROTOCOL_VERSION, "got": version},
        )
    try:
        header = Header.model_validate(raw)
    except ValidationError as exc:
        raise ProtocolError(
            ErrorCode.VALIDATION_ERROR, f"invalid header: {_short(exc)}", {"errors": _errors(exc)}
        ) from None
    body_model(header.type)  # raises UNKNOWN_TYPE
    return header


def peek_header(frames: Frames) -> Header | None:
    """The header of a message whose body (or size) is bad, when it is readable at all,
    so the error reply can name the request it answers."""
    if not frames:
        return None
    try:
        raw = msgpack.unpackb(frames[0][:4096], raw=False) if len(frames[0]) <= 4096 else None
        return Header.model_validate(raw) if isinstance(raw, dict) else None
    except Exception:
        return None


def decode_body(header: Header, frame: bytes) -> Body:
    model = body_model(header.type)
    raw = _unpack_map(frame, "body")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ProtocolError(
            ErrorCode.VALIDATION_ERROR,
            f"invalid {header.type} body: {_short(exc)}",
            {"errors": _errors(exc)},
        ) from None


def decode(frames: Frames) -> Message:
    header = decode_header(frames)
    return Message(header, decode_body(header, frames[1]))


def decode_event(frames: Frames) -> tuple[str, Message]:
    if len(frames) != 3:
        raise ProtocolError(
            ErrorCode.DECODE_ERROR, f"expected 3 frames [topic, header, body], got {len(frames)}"
        )
    try:
        topic = bytes(frames[0]).decode()
    except UnicodeDecodeError:
        raise ProtocolError(ErrorCode.DECODE_ERROR, "event topic is not UTF-8") from None
    return topic, decode(frames[1:])


def _errors(exc: ValidationError) -> list[dict[str, str]]:
    return [
        {"loc": ".".join(str(p) for p in e["loc"]), "msg": e["msg"]} for e in exc.errors()[:10]
    ]


def _short(exc: ValidationError) -> str:
    return "; ".join(f"{e['loc']}: {e['msg']}" for e in _errors(exc)[:3])
