"""Property tests: no input makes the decoder or the subject parser raise anything but their documented errors.

``decode(any bytes, Cls)`` returns a valid instance or raises BadRequest (or a subclass); msgpack-packed random
maps shaped like the real messages do the same, and whatever decodes survives an encode/decode round trip;
``Subjects.parse(any text)`` raises only InvalidName, and what it accepts rebuilds into the same subject.
Example counts are kept moderate so the whole module runs in a few seconds.
"""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from bus.codec import decode, encode
from bus.errors import BadRequest, InvalidName
from bus.models import (
    AnnounceAck,
    Bye,
    ChangeEvent,
    Control,
    ErrorReply,
    Heartbeat,
    Instance,
    ResolveReply,
    ResolveRequest,
    Snapshot,
    SnapshotRequest,
)
from bus.subjects import Subjects

CLASSES: list[type[BaseModel]] = [
    Instance, Heartbeat, Bye, ResolveRequest, SnapshotRequest, ResolveReply, Snapshot, AnnounceAck, ErrorReply,
    ChangeEvent, Control,
]
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decode_or_refuse(data: bytes, cls: type[BaseModel]) -> BaseModel | None:
    """The property itself: a valid instance of ``cls``, or None for a BadRequest; anything else fails."""
    try:
        msg = decode(data, cls)
    except BadRequest:
        return None
    assert isinstance(msg, cls)
    assert decode(encode(msg), cls) == msg  # what was accepted is a valid message
    return msg


# ------------------------------------------------------------------------------------------------------------
# raw bytes
# ------------------------------------------------------------------------------------------------------------
@FAST
@given(cls=st.sampled_from(CLASSES), data=st.binary(max_size=512))
@example(cls=Instance, data=b"")
@example(cls=Instance, data=b"\x91" * 2000 + b"\x01")
@example(cls=Heartbeat, data=b"\x81\xa1v\x01" + b"\xc1")
def test_decode_any_bytes(cls: type[BaseModel], data: bytes) -> None:
    decode_or_refuse(data, cls)


MSGPACK_PREFIXES = st.sampled_from([b"\x80", b"\x81\xa1v\x01", b"\x82\xa1v\x01\xa2id", b"\xde\x00\x03", b"\x91"])


@FAST
@given(cls=st.sampled_from(CLASSES), head=MSGPACK_PREFIXES, tail=st.binary(max_size=256))
def test_decode_bytes_that_start_like_a_map(cls: type[BaseModel], head: bytes, tail: bytes) -> None:
    decode_or_refuse(head + tail, cls)


@FAST
@given(cls=st.sampled_from(CLASSES), data=st.data())
def test_decode_mutated_valid_messages(cls: type[BaseModel], data: st.DataObject) -> None:
    """Flip, cut and insert bytes of a real message of the class: the closest inputs to valid ones."""
    valid = bytearray(encode(_SAMPLES[cls]))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = data.draw(st.integers(0, max(len(valid) - 1, 0)))
        if op == "flip" and valid:
            valid[pos] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del valid[pos:pos + data.draw(st.integers(1, 8))]
        else:
            valid[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    decode_or_refuse(bytes(valid), cls)


_INST: dict[str, Any] = {"id": "i-1", "address": "10.0.0.1", "port": 80}
_SAMPLES: dict[type[BaseModel], BaseModel] = {
    Instance: Instance.model_validate({**_INST, "tags": ("a",), "meta": {"k": "v"}, "zone": "z"}),
    Heartbeat: Heartbeat(id="i-1", ids=("a", "b"), seq=5, status="warning"),  # type: ignore[arg-type]
    Bye: Bye(id="i-1"),
    ResolveRequest: ResolveRequest(tags=("a",), zone="z", limit=4),
    SnapshotRequest: SnapshotRequest(services=("billing",)),
    ResolveReply: ResolveReply.model_validate({"revision": 3, "instances": (_INST,)}),
    Snapshot: Snapshot.model_validate({"revision": 3, "services": {"billing": (_INST,)}}),
    AnnounceAck: AnnounceAck(revision=3),
    ErrorReply: ErrorReply(code="bad_request", error="x"),
    ChangeEvent: ChangeEvent.model_validate({"type": "added", "reason": "announce", "tenant": "acme",
                                             "service": "billing", "instance": _INST, "revision": 3, "at": 1.0}),
    Control: Control(op="reannounce", id="i-1"),
}


# ------------------------------------------------------------------------------------------------------------
# structured: msgpack maps shaped like the messages, with random values
# ------------------------------------------------------------------------------------------------------------
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=True),
    st.text(max_size=20), st.binary(max_size=10),
    st.sampled_from(["passing", "warning", "critical", "maintenance", "i-1", "10.0.0.1", "", "a" * 300]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=8), inner, max_size=5)),
    max_leaves=20,
)
PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "id": st.sampled_from(["i-1", "", "a b", "x" * 65, "Z_9"]),
    "address": st.sampled_from(["10.0.0.1", "::1", "h-", "host.example", "a..b", "1.2.3.4.5"]),
    "port": st.integers(-1, 70000), "ttl": st.one_of(st.floats(0, 400), st.integers(0, 400)),
    "weight": st.integers(-1, 1002), "seq": st.integers(-2, 2**64 - 1), "limit": st.integers(-1, 10001),
    "ids": st.lists(st.sampled_from(["a", "b", "", "*", "x" * 64]), max_size=3),
    "status": st.one_of(st.sampled_from(["passing", "warning", "nope", None]),
                        st.lists(st.sampled_from(["passing", "critical", "x"]), max_size=5)),
    "tags": st.lists(st.text(max_size=3), max_size=34), "zone": st.sampled_from(["", "eu-1", "a b", None]),
    "meta": st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=3),
    "protocol": st.sampled_from(["tcp", "HTTP", "", "h2c"]), "version": st.text(max_size=70),
}


@st.composite
def message_maps(draw: st.DrawFn, cls: type[BaseModel]) -> dict[str, Any]:
    """A valid message of ``cls`` as a plain map, with some fields replaced by random (often plausible) values or
    dropped, sometimes unknown keys added and ``v`` changed: a mix of valid and invalid messages."""
    obj: dict[str, Any] = _SAMPLES[cls].model_dump(mode="json")
    fields = [f for f in cls.model_fields if f != "v"]
    for field in draw(st.lists(st.sampled_from(fields), max_size=len(fields), unique=True)):
        if draw(st.integers(0, 4)) == 0:
            obj.pop(field, None)
        else:
            obj[field] = draw(st.one_of(PLAUSIBLE.get(field, VALUES), VALUES))
    if draw(st.integers(0, 4)) == 0:
        obj.update(draw(st.dictionaries(st.text(max_size=6), VALUES, min_size=1, max_size=2)))
    if draw(st.integers(0, 4)) == 0:
        # only hashable values: an unhashable "v" (a map) makes bus/codec.py's decode_map raise TypeError, a known
        # defect pinned by strict xfails in test_codec.py (draw from VALUES here once it is fixed)
        version = draw(SCALARS)
        if version is None:
            obj.pop("v", None)
        else:
            obj["v"] = version
    return obj


def _structured(cls: type[BaseModel], obj: dict[str, Any]) -> None:
    decode_or_refuse(msgpack.packb(obj, use_bin_type=True), cls)


@FAST
@given(obj=message_maps(Instance))
def test_structured_instance(obj: dict[str, Any]) -> None:
    _structured(Instance, obj)


@FAST
@given(obj=message_maps(Heartbeat))
def test_structured_heartbeat(obj: dict[str, Any]) -> None:
    _structured(Heartbeat, obj)


@FAST
@given(obj=message_maps(ResolveRequest))
def test_structured_resolve_request(obj: dict[str, Any]) -> None:
    _structured(ResolveRequest, obj)


@FAST
@given(cls=st.sampled_from(CLASSES), obj=VALUES)
def test_any_msgpack_value(cls: type[BaseModel], obj: Any) -> None:
    decode_or_refuse(msgpack.packb(obj, use_bin_type=True), cls)


def test_structured_fuzz_reaches_valid_messages() -> None:
    """The generators are neither all noise nor all valid (guards the strategies)."""
    accepted: list[BaseModel] = []
    refused: list[dict[str, Any]] = []

    @settings(max_examples=150, deadline=None, database=None)
    @given(obj=message_maps(Heartbeat))
    def collect(obj: dict[str, Any]) -> None:
        msg = decode_or_refuse(msgpack.packb(obj, use_bin_type=True), Heartbeat)
        if msg is not None:
            accepted.append(msg)
        else:
            refused.append(obj)

    collect()
    assert len(accepted) >= 10, "structured heartbeats are almost never valid: the strategy tests only refusals"
    assert len(refused) >= 10, "structured heartbeats are almost always valid: the strategy tests no refusals"


# ------------------------------------------------------------------------------------------------------------
# subjects
# ------------------------------------------------------------------------------------------------------------
SUBJECT_TOKENS = st.sampled_from(
    ["disco", "acme", "announce", "hb", "bye", "resolve", "snapshot", "changes", "ctl", "dlq", "billing", "i-1",
     "*", ">", "", "ACME", "a_b", "x" * 64, "_sys", "-a"]
)
SUBJECTS = st.one_of(
    st.text(max_size=80),
    st.lists(st.one_of(SUBJECT_TOKENS, st.text(max_size=6)), max_size=7).map(".".join),
    st.lists(SUBJECT_TOKENS, min_size=1, max_size=6).map(lambda ts: ".".join(["disco", *ts])),
)


@settings(max_examples=400, deadline=None)
@given(subject=SUBJECTS)
@example(subject="disco.acme.ctl.billing.i-1")
@example(subject="disco.acme.snapshot")
def test_parse_raises_only_invalid_name(subject: str) -> None:
    s = Subjects()
    try:
        p = s.parse(subject)
    except InvalidName:
        return
    if p.kind == "snapshot":
        rebuilt = s.snapshot(p.tenant)
    elif p.kind == "ctl":
        rebuilt = s.ctl(p.tenant, p.service or "", p.instance_id or "")
    else:
        rebuilt = getattr(s, p.kind)(p.tenant, p.service)
    assert rebuilt == subject
