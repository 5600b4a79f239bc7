"""Bytes to models and back: msgpack, strict and bounded (DESIGN.md §5).

``decode`` turns any bytes into either a valid model or a :class:`~bus.errors.BadRequest` (or one of its
subclasses); it never raises anything else, whatever the input. The model does the validating; the codec only
bounds the work and moves bytes.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgpack
from pydantic import BaseModel, ValidationError

from bus.errors import BadRequest, DiscoError, InvalidName, PayloadTooLarge, UnsupportedVersion, error_for_code

__all__ = ["DEFAULT_MAX_PAYLOAD", "decode", "decode_map", "decode_reply", "encode", "encode_map"]

DEFAULT_MAX_PAYLOAD = 64 * 1024
SUPPORTED_VERSIONS = frozenset({1})

M = TypeVar("M", bound=BaseModel)


def encode(model: BaseModel) -> bytes:
    """The msgpack bytes of a model (enums as their strings, tuples as arrays)."""
    return encode_map(model.model_dump(mode="json"))


def encode_map(data: dict[str, Any]) -> bytes:
    """The msgpack bytes of an already plain map (hot paths that cache dumped models)."""
    out: bytes = msgpack.packb(data, use_bin_type=True)
    return out


def decode_map(data: bytes, max_size: int = DEFAULT_MAX_PAYLOAD) -> dict[str, Any]:
    """Unpack one msgpack map with bounded sizes, checking the version; raise BadRequest otherwise."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BadRequest("payload must be bytes")
    if len(data) > max_size:
        raise PayloadTooLarge(f"payload of {len(data)} bytes is over the limit of {max_size} bytes")
    if not data:
        raise BadRequest("empty payload: expected a msgpack map")
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            use_list=False,
            strict_map_key=True,
            max_str_len=max_size,
            max_bin_len=max_size,
            max_array_len=min(max_size, 10_000),
            max_map_len=min(max_size, 10_000),
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many types (ExtraData, FormatError, ValueError, RecursionError...)
        raise BadRequest(f"not a valid msgpack payload: {type(exc).__name__}") from None
    if not isinstance(obj, dict):
        raise BadRequest(f"payload must be a msgpack map, got {type(obj).__name__}")
    version = obj.get("v")
    if type(version) is not int or version not in SUPPORTED_VERSIONS:  # exact int: not bool, float or a map
        raise UnsupportedVersion(f"unsupported protocol version {version!r}: this side speaks v=1")
    return obj


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err["loc"]) or "payload"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def decode(data: bytes, cls: type[M], max_size: int = DEFAULT_MAX_PAYLOAD) -> M:
    """Decode ``data`` into ``cls``; raise BadRequest (or a subclass) for anything that is not a valid ``cls``."""
    obj = decode_map(data, max_size)
    try:
        return cls.model_validate(obj)
    except ValidationError as exc:
        error = InvalidName if any(e["type"] == "invalid_name" for e in exc.errors()) else BadRequest
        raise error(f"invalid {cls.__name__}: {_validation_message(exc)}") from None
    except (RecursionError, TypeError, ValueError) as exc:  # defensive: the model must never leak another type
        raise BadRequest(f"invalid {cls.__name__}: {type(exc).__name__}") from None


def decode_reply(data: bytes, cls: type[M], max_size: int = 16 * 1024 * 1024) -> M:
    """Decode a reply: an error reply becomes the DiscoError subclass of its code, raised."""
    obj = decode_map(data, max_size)
    if obj.get("ok") is False:
        code, text = obj.get("code"), obj.get("error")
        raise error_for_code(code if isinstance(code, str) else "internal", str(text))
    try:
        return cls.model_validate(obj)
    except ValidationError as exc:
        raise DiscoError(f"malformed {cls.__name__} reply: {_validation_message(exc)}") from None
