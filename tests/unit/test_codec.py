"""The codec: round trips, and every kind of bad input mapped to the right BadRequest subclass; decode_reply raises
the error class of the reply's code; the examples in bus/PROTOCOL.md are exactly what the code produces."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import msgpack
import pytest
from pydantic import BaseModel

from bus.codec import DEFAULT_MAX_PAYLOAD, decode, decode_map, decode_reply, encode, encode_map
from bus.errors import (
    BadRequest,
    DiscoError,
    InvalidName,
    NoAggregator,
    Overloaded,
    PayloadTooLarge,
    QuotaExceeded,
    UnsupportedVersion,
    error_for_code,
)
from bus.models import (
    AnnounceAck,
    Bye,
    ChangeEvent,
    ChangeReason,
    ChangeType,
    Control,
    ErrorReply,
    Heartbeat,
    Instance,
    ResolveReply,
    ResolveRequest,
    Snapshot,
    SnapshotRequest,
    Status,
)

ROOT = Path(__file__).resolve().parents[2]


def _load_examples_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("protocol_examples", ROOT / "scripts" / "protocol_examples.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("protocol_examples", module)
    spec.loader.exec_module(module)
    return module


FULL = Instance(
    id="billing-1", address="10.0.0.5", port=8080, protocol="http", version="1.2", tags=("eu", "a"),
    meta={"k": "v", "é": "ü"}, weight=7, zone="eu-1", status=Status.maintenance, ttl=2.5, seq=2**63,
)
MESSAGES: list[BaseModel] = [
    FULL,
    Instance(id="i", address="::1", port=1),
    Heartbeat(id="i", seq=3, status=Status.critical),
    Heartbeat(ids=("a", "b")),
    Bye(id="i"),
    ResolveRequest(),
    ResolveRequest(tags=("x",), zone="", status=(Status.warning,), limit=3),
    SnapshotRequest(services=("billing",), tags=("x",)),
    ResolveReply(revision=9, instances=(FULL,)),
    Snapshot(revision=10, services={"billing": (FULL,), "auth": ()}),
    AnnounceAck(revision=5, changed=False),
    ErrorReply(code="quota_exceeded", error="too many"),
    ChangeEvent(type=ChangeType.removed, reason=ChangeReason.expired, tenant="acme", service="billing",
                instance=FULL, revision=11, at=1718000000.5),
    Control(op="reannounce", id="i"),
]
VALID_ANNOUNCE = encode(FULL)


# ------------------------------------------------------------------------------------------------------------
# round trips
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(msg: BaseModel) -> None:
    data = encode(msg)
    back = decode(data, type(msg))
    assert back == msg
    assert encode(back) == data  # the wire form is canonical


def test_encoding_is_a_plain_msgpack_map_with_string_keys() -> None:
    raw = msgpack.unpackb(encode(FULL), raw=True)
    assert isinstance(raw, dict) and all(isinstance(k, bytes) for k in raw)  # msgpack str, not bin
    obj = msgpack.unpackb(encode(FULL), raw=False)
    assert obj["v"] == 1 and obj["status"] == "maintenance" and obj["tags"] == ["eu", "a"]
    assert list(obj) == list(Instance.model_fields)  # keys in declaration order
    assert encode_map({"v": 1, "id": "i"}) == encode(Bye(id="i"))


def test_error_to_wire_is_an_error_reply() -> None:
    err = QuotaExceeded("too many")
    assert encode_map(err.to_wire()) == encode(ErrorReply(code="quota_exceeded", error="too many"))


def test_accepts_bytearray_and_memoryview() -> None:
    assert decode(bytearray(VALID_ANNOUNCE), Instance) == FULL  # type: ignore[arg-type]
    assert decode(memoryview(VALID_ANNOUNCE), Instance) == FULL  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------------------
# bad input → the right BadRequest subclass
# ------------------------------------------------------------------------------------------------------------
def exact(exc_type: type[DiscoError], data: Any, cls: type[BaseModel] = Instance, **kw: Any) -> DiscoError:
    with pytest.raises(DiscoError) as info:
        decode(data, cls, **kw)
    assert type(info.value) is exc_type, f"{type(info.value).__name__}: {info.value}"
    return info.value


def test_oversized_payload() -> None:
    big = encode_map({"v": 1, "id": "i", "address": "h", "port": 1, "meta": {"k": "x" * 500}})
    err = exact(PayloadTooLarge, big, max_size=len(big) - 1)
    assert str(len(big)) in str(err) and err.code == "payload_too_large"
    assert decode(big, Instance, max_size=len(big)).id == "i"  # exactly the limit is fine
    junk = b"\xc1" * (DEFAULT_MAX_PAYLOAD + 1)
    exact(PayloadTooLarge, junk)  # the size is checked before anything is parsed
    exact(BadRequest, b"\xc1" * DEFAULT_MAX_PAYLOAD)


@pytest.mark.parametrize("cls", [type(m) for m in MESSAGES])
def test_empty_payload(cls: type[BaseModel]) -> None:
    assert "empty" in str(exact(BadRequest, b"", cls))


@pytest.mark.parametrize("value", [[1, 2], (), 1, -1, 1.5, "v", b"v", None, True, False])
def test_not_a_map(value: Any) -> None:
    assert "must be a msgpack map" in str(exact(BadRequest, msgpack.packb(value)))


@pytest.mark.parametrize(
    "version",
    [None, 0, 2, -1, "1", b"\x01", True, [1], 2**64 - 1, {"1": 1},
     [{}], 1.0],
    ids=repr,
)
def test_bad_version(version: Any) -> None:
    obj: dict[str, Any] = {"id": "i", "address": "h", "port": 1}
    if version is not None:
        obj["v"] = version
    err = exact(UnsupportedVersion, msgpack.packb(obj))
    assert err.code == "unsupported_version"


@pytest.mark.parametrize("cut", range(1, len(VALID_ANNOUNCE)))
def test_truncated(cut: int) -> None:
    exact(BadRequest, VALID_ANNOUNCE[:cut])


@pytest.mark.parametrize("tail", [b"\x00", b"\xc0", VALID_ANNOUNCE, b"\xc1"])
def test_trailing_bytes(tail: bytes) -> None:
    exact(BadRequest, VALID_ANNOUNCE + tail)


@pytest.mark.parametrize("depth", [100, 1000, 5000, 60000])
def test_deep_nesting(depth: int) -> None:
    arrays = b"\x91" * depth + b"\x01"
    exact(BadRequest, arrays)
    maps = b"\x82\xa1v\x01\xa1x" + b"\x81\xa1a" * depth + b"\x01"  # {"v":1,"x":{"a":{"a":...}}}
    exact(BadRequest, maps, max_size=len(maps))


@pytest.mark.parametrize(
    "data",
    [
        b"\xc1",  # never-used byte
        b"\xff\xfe\xfd",  # negative fixints: not a map
        msgpack.packb({1: 2}),  # non-string key
        msgpack.packb({"v": 1, "id": msgpack.ExtType(1, b"x")}),  # ext types are refused
        msgpack.packb({"v": 1, "a": [0] * 10_001}),  # over the array bound
        b"\xdd\xff\xff\xff\xff",  # array32 claiming 4 billion items
        b"\xdb\xff\xff\xff\xff",  # str32 claiming 4 GB
        b"\x81\xa1v\xd9\x05\xff\xfe\xfd\xfc\xfb",  # invalid UTF-8 in a str
    ],
)
def test_malformed_msgpack(data: bytes) -> None:
    exact(BadRequest, data)


def test_not_bytes() -> None:
    exact(BadRequest, "a string")
    exact(BadRequest, None)


@pytest.mark.parametrize(
    "obj",
    [
        {"v": 1, "address": "h", "port": 1},  # missing id
        {"v": 1, "id": "i", "address": "h", "port": "1"},  # wrong type
        {"v": 1, "id": "i", "address": "h", "port": 1, "tenant": "acme"},  # unknown field
        {"v": 1, "id": "i", "address": "h", "port": 1, "tags": ["t"] * 33},
        {"v": 1, "id": "i", "address": "h", "port": 1, "meta": {str(i): "" for i in range(65)}},
        {"v": 1, "id": "i", "address": b"h", "port": 1},  # bin where str is expected
    ],
)
def test_schema_errors_are_bad_request(obj: dict[str, Any]) -> None:
    err = exact(BadRequest, msgpack.packb(obj, use_bin_type=True))
    assert str(err).startswith("invalid Instance:")


@pytest.mark.parametrize(
    ("cls", "obj"),
    [
        (Instance, {"v": 1, "id": "not valid", "address": "h", "port": 1}),
        (Bye, {"v": 1, "id": "a.b"}),
        (Heartbeat, {"v": 1, "ids": ["ok", "x" * 65]}),
        (Control, {"v": 1, "op": "reannounce", "id": "*"}),
    ],
)
def test_invalid_instance_id_is_invalid_name(cls: type[BaseModel], obj: dict[str, Any]) -> None:
    assert exact(InvalidName, msgpack.packb(obj), cls).code == "invalid_name"


def test_validation_message_is_bounded() -> None:
    obj = {"v": 1, "a": 1, "b": 2, "c": 3, "d": 4, "e": 5}
    err = exact(BadRequest, msgpack.packb(obj))
    assert "(and " in str(err) and len(str(err)) < 400


# ------------------------------------------------------------------------------------------------------------
# replies
# ------------------------------------------------------------------------------------------------------------
def all_error_classes() -> list[type[DiscoError]]:
    out: list[type[DiscoError]] = []
    todo: list[type[DiscoError]] = [DiscoError]
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo.extend(cls.__subclasses__())
    return out


def test_error_codes_are_unique() -> None:
    codes = [c.code for c in all_error_classes()]
    assert len(codes) == len(set(codes)) == 16


@pytest.mark.parametrize("cls", all_error_classes(), ids=lambda c: c.code)
def test_decode_reply_raises_the_class_of_the_code(cls: type[DiscoError]) -> None:
    data = encode(ErrorReply(code=cls.code, error="the text"))
    with pytest.raises(DiscoError) as info:
        decode_reply(data, ResolveReply)
    assert type(info.value) is cls
    assert info.value.message == "the text"
    assert type(error_for_code(cls.code, "m")) is cls


def test_decode_reply_unknown_code() -> None:
    with pytest.raises(DiscoError) as info:
        decode_reply(encode_map({"v": 1, "ok": False, "code": "brand_new", "error": "from a newer peer"}),
                     AnnounceAck)
    assert type(info.value) is DiscoError and "brand_new" in str(info.value)
    with pytest.raises(DiscoError) as info:
        decode_reply(encode_map({"v": 1, "ok": False, "code": 5}), AnnounceAck)
    assert type(info.value) is DiscoError


def test_decode_reply_success_and_malformed() -> None:
    assert decode_reply(encode(AnnounceAck(revision=3)), AnnounceAck).revision == 3
    big = ResolveReply(revision=1, instances=tuple(FULL.model_copy(update={"id": f"i{n}"}) for n in range(600)))
    assert len(encode(big)) > DEFAULT_MAX_PAYLOAD
    assert len(decode_reply(encode(big), ResolveReply).instances) == 600  # replies may exceed 64 KiB
    with pytest.raises(DiscoError, match="malformed ResolveReply") as info:
        decode_reply(encode_map({"v": 1, "ok": True}), ResolveReply)
    assert type(info.value) is DiscoError
    with pytest.raises(BadRequest):
        decode_reply(b"\xc1", ResolveReply)
    with pytest.raises(UnsupportedVersion):
        decode_reply(encode_map({"v": 2, "ok": True, "revision": 1}), ResolveReply)


def test_error_classes_share_the_bad_request_parent() -> None:
    for cls in (PayloadTooLarge, UnsupportedVersion, InvalidName):
        assert issubclass(cls, BadRequest)
    assert not issubclass(Overloaded, BadRequest) and not issubclass(NoAggregator, BadRequest)


def test_decode_map_returns_the_map() -> None:
    assert decode_map(encode_map({"v": 1, "x": [1, 2]})) == {"v": 1, "x": (1, 2)}


# ------------------------------------------------------------------------------------------------------------
# PROTOCOL.md cannot drift from the code
# ------------------------------------------------------------------------------------------------------------
def test_protocol_examples_appear_verbatim() -> None:
    pe = _load_examples_script()
    document = (ROOT / "bus" / "PROTOCOL.md").read_text(encoding="utf-8")
    examples = pe.examples()
    assert {e.cls for e in examples if e.cls is not None} == {type(m) for m in MESSAGES}  # every message shown
    for ex in examples:
        pe.check(ex)
        block = pe.hexdump(ex.data)
        assert f"```text\n{block}\n```" in document, (
            f"the bytes of example {ex.title!r} are not in bus/PROTOCOL.md: run "
            "`python scripts/protocol_examples.py --write`"
        )
    assert pe.render() in document


def test_hexdump_layout() -> None:
    pe = _load_examples_script()
    dump = pe.hexdump(bytes(range(0x3E, 0x3E + 18)))
    assert dump.splitlines() == [
        "00000000  3e 3f 40 41 42 43 44 45  46 47 48 49 4a 4b 4c 4d  |>?@ABCDEFGHIJKLM|",
        "00000010  4e 4f                                             |NO|",
        "00000012",
    ]


def test_protocol_documents_every_error_code() -> None:
    document = (ROOT / "bus" / "PROTOCOL.md").read_text(encoding="utf-8")
    for cls in all_error_classes():
        assert f"| `{cls.code}` | `{cls.__name__}` |" in document, cls.code
