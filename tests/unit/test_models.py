"""The models are the schema: bounds at their edges, strict types, unknown fields refused, enums from strings."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

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

BASE: dict[str, Any] = {"id": "i-1", "address": "10.0.0.1", "port": 8080}


def inst(**kw: Any) -> Instance:
    return Instance.model_validate({**BASE, **kw})


def refused(cls: type[BaseModel], data: dict[str, Any]) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        cls.model_validate(data)
    return info.value


# a valid example of every message (python-side values: tuples for arrays)
VALID: dict[type[BaseModel], dict[str, Any]] = {
    Instance: dict(BASE),
    Heartbeat: {"id": "i-1"},
    Bye: {"id": "i-1"},
    ResolveRequest: {},
    SnapshotRequest: {},
    ResolveReply: {"revision": 1},
    Snapshot: {"revision": 1},
    AnnounceAck: {"revision": 1},
    ErrorReply: {"code": "bad_request", "error": "x"},
    ChangeEvent: {"type": "added", "reason": "announce", "tenant": "acme", "service": "billing",
                  "instance": dict(BASE), "revision": 1, "at": 1.5},
    Control: {"op": "reannounce", "id": "i-1"},
}


def test_instance_defaults() -> None:
    i = inst()
    assert (i.v, i.protocol, i.version, i.tags, i.meta, i.weight, i.zone, i.status, i.ttl, i.seq) == (
        1, "tcp", "", (), {}, 100, "", Status.passing, 10.0, 0
    )


# ------------------------------------------------------------------------------------------------------------
# bounds, each at its edges
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "ok", "bad"),
    [
        ("port", [1, 80, 65535], [0, -1, 65536]),
        ("weight", [1, 100, 1000], [0, -5, 1001]),
        ("ttl", [1, 1.0, 10.5, 300, 300.0], [0.999, 0, -1, 300.001, float("nan"), float("inf")]),
        ("seq", [0, 1, 2**63, 2**64 - 1], [-1]),
        ("id", ["a", "A_b-9", "x" * 64], ["", "x" * 65, "a.b", "a b", "é", "a*"]),
        ("protocol", ["tcp", "http", "h2c", "grpc+tls", "x.y-z", "p" * 16], ["", "TCP", "p" * 17, "a b", "a_b"]),
        ("version", ["", "1.2.3", "v" * 64, "any text é"], ["v" * 65]),
        ("zone", ["", "eu-west-1a", "A_b.c", "z" * 64], ["z" * 65, "a b", "eu/west", "é"]),
        ("address", ["10.0.0.1", "::1", "fe80::1%eth0", "2001:db8::1", "host", "a.example.com",
                     "a.example.com.", "x-1.y", "a" * 63, ".".join(["a" * 63] * 3) + ".b" * 31],
         ["", "a b", "-a", "a-", "a..b", "a" * 64, "x_y.com", "a" * 254, "http://a", "a:80", "é.com"]),
    ],
)
def test_instance_field_bounds(field: str, ok: list[Any], bad: list[Any]) -> None:
    for value in ok:
        assert getattr(inst(**{field: value}), field) == value
    for value in bad:
        err = refused(Instance, {**BASE, field: value})
        assert err.errors()[0]["loc"][0] == field, value


def test_tags_bounds() -> None:
    assert len(inst(tags=tuple(f"t{i}" for i in range(32))).tags) == 32
    assert inst(tags=("x" * 128,)).tags == ("x" * 128,)
    refused(Instance, {**BASE, "tags": tuple(f"t{i}" for i in range(33))})
    refused(Instance, {**BASE, "tags": ("",)})
    refused(Instance, {**BASE, "tags": ("x" * 129,)})


def test_meta_bounds() -> None:
    assert len(inst(meta={f"k{i}": "v" for i in range(64)}).meta) == 64
    assert inst(meta={"k" * 128: "v" * 512}).meta == {"k" * 128: "v" * 512}
    assert inst(meta={"k": ""}).meta == {"k": ""}
    for meta in ({f"k{i}": "v" for i in range(65)}, {"": "v"}, {"k" * 129: "v"}, {"k": "v" * 513}):
        refused(Instance, {**BASE, "meta": meta})


def test_required_fields() -> None:
    for field in ("id", "address", "port"):
        data = {k: v for k, v in BASE.items() if k != field}
        err = refused(Instance, data)
        assert err.errors()[0]["type"] == "missing"


def test_filter_bounds() -> None:
    assert ResolveRequest(limit=1).limit == 1
    assert ResolveRequest(limit=10000).limit == 10000
    for data in ({"limit": 0}, {"limit": 10001}, {"tags": tuple(f"t{i}" for i in range(33))}, {"tags": ("",)},
                 {"zone": "z" * 65}, {"status": ("passing",) * 5}):
        refused(ResolveRequest, data)
    assert len(SnapshotRequest(services=("s",) * 1000).services) == 1000
    refused(SnapshotRequest, {"services": ("s",) * 1001})


def test_heartbeat_needs_an_id_and_bounds_ids() -> None:
    assert Heartbeat(id="a").all_ids() == ("a",)
    assert Heartbeat(ids=("a", "b")).all_ids() == ("a", "b")
    assert Heartbeat(id="a", ids=("b",)).all_ids() == ("a", "b")
    assert len(Heartbeat(ids=tuple(f"i{n}" for n in range(1000))).ids) == 1000
    for data in ({}, {"ids": ()}, {"id": None}, {"ids": tuple(f"i{n}" for n in range(1001))}, {"ids": ("a b",)},
                 {"id": "a", "seq": -1}):
        refused(Heartbeat, data)


# ------------------------------------------------------------------------------------------------------------
# strictness
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("port", "8080"), ("port", 8080.0), ("port", True), ("port", None),
        ("weight", "100"), ("weight", 1.5), ("weight", False),
        ("ttl", "10"), ("ttl", True), ("ttl", None),
        ("seq", 1.0), ("seq", "1"), ("seq", True),
        ("id", 5), ("id", b"i-1"), ("id", None),
        ("address", b"10.0.0.1"), ("address", 167772161),
        ("tags", "a,b"), ("tags", ("a", 1)), ("tags", {"a": 1}), ("tags", None),
        ("meta", (("k", "v"),)), ("meta", {"k": 1}), ("meta", {"k": b"v"}), ("meta", {1: "v"}),
        ("zone", None), ("version", 1), ("protocol", None),
        ("status", 1), ("status", None), ("status", "PASSING"), ("status", "ok"),
        ("v", 2), ("v", 0), ("v", "1"), ("v", None),
    ],
)
def test_instance_wrong_types_are_refused(field: str, value: Any) -> None:
    err = refused(Instance, {**BASE, field: value})
    assert err.errors()[0]["loc"][0] == field


@pytest.mark.parametrize("cls", list(VALID))
def test_every_message_refuses_unknown_fields(cls: type[BaseModel]) -> None:
    cls.model_validate(VALID[cls])  # the base example is valid
    for extra in ("tenant", "service", "x", "V", "Id"):
        if extra in cls.model_fields:
            continue
        err = refused(cls, {**VALID[cls], extra: "acme"})
        assert err.errors()[0]["type"] == "extra_forbidden"


@pytest.mark.parametrize("cls", list(VALID))
def test_every_message_is_version_1_and_frozen(cls: type[BaseModel]) -> None:
    msg = cls.model_validate(VALID[cls])
    assert msg.v == 1  # type: ignore[attr-defined]
    refused(cls, {**VALID[cls], "v": 2})
    with pytest.raises(ValidationError):
        msg.v = 2  # type: ignore[attr-defined]


def test_replies_have_a_fixed_ok() -> None:
    assert AnnounceAck(revision=3).ok is True and AnnounceAck(revision=3).changed is True
    assert ErrorReply(code="x", error="y").ok is False
    refused(AnnounceAck, {"revision": 1, "ok": False})
    refused(ResolveReply, {"revision": 1, "ok": False})
    refused(Snapshot, {"revision": 1, "ok": False})
    refused(ErrorReply, {"code": "x", "error": "y", "ok": True})
    refused(AnnounceAck, {})
    refused(ErrorReply, {"code": "x"})


def test_nested_instances_are_validated() -> None:
    refused(ResolveReply, {"revision": 1, "instances": ({**BASE, "port": 0},)})
    refused(Snapshot, {"revision": 1, "services": {"billing": ({**BASE, "x": 1},)}})
    refused(ChangeEvent, {**VALID[ChangeEvent], "instance": {**BASE, "weight": 0}})
    snap = Snapshot.model_validate({"revision": 1, "services": {"billing": (dict(BASE),)}})
    assert snap.services["billing"][0].id == "i-1"


# ------------------------------------------------------------------------------------------------------------
# enums travel as strings
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("status", list(Status))
def test_status_from_its_string(status: Status) -> None:
    assert inst(status=status.value).status is status
    assert Heartbeat(id="a", status=status.value).status is status  # type: ignore[arg-type]
    assert ResolveRequest.model_validate({"status": (status.value,)}).status == (status,)


def test_change_event_enums_from_strings() -> None:
    for t in ChangeType:
        for r in ChangeReason:
            ev = ChangeEvent.model_validate({**VALID[ChangeEvent], "type": t.value, "reason": r.value})
            assert (ev.type, ev.reason) == (t, r)
    refused(ChangeEvent, {**VALID[ChangeEvent], "type": "created"})
    refused(ChangeEvent, {**VALID[ChangeEvent], "reason": "timeout"})
    refused(Control, {"op": "stop", "id": "a"})


def test_enums_dump_as_strings() -> None:
    dumped = inst(status="warning").model_dump(mode="json")
    assert dumped["status"] == "warning" and type(dumped["status"]) is str
    assert SnapshotRequest().model_dump(mode="json")["status"] == [s.value for s in Status]


# ------------------------------------------------------------------------------------------------------------
# behaviour
# ------------------------------------------------------------------------------------------------------------
def test_same_registration_ignores_only_seq() -> None:
    a = inst(seq=1)
    assert a.same_registration(inst(seq=99))
    assert not a.same_registration(inst(seq=1, weight=5))
    assert not a.same_registration(inst(seq=1, status="critical"))
    assert not a.same_registration(inst(seq=1, ttl=11))


def test_filters_match() -> None:
    eu = inst(tags=("eu", "primary"), zone="eu-1", status="passing")
    warn = inst(tags=("eu",), zone="", status="warning")
    crit = inst(status="critical")
    default = ResolveRequest()
    assert default.matches(eu) and default.matches(warn) and not default.matches(crit)
    assert not default.matches(inst(status="maintenance"))
    assert ResolveRequest(tags=("eu", "primary")).matches(eu)
    assert not ResolveRequest(tags=("eu", "primary")).matches(warn)
    assert ResolveRequest(zone="eu-1").matches(eu) and not ResolveRequest(zone="eu-1").matches(warn)
    assert ResolveRequest(zone="").matches(warn) and not ResolveRequest(zone="").matches(eu)
    assert ResolveRequest(status=(Status.critical,)).matches(crit)
    assert not ResolveRequest(status=()).matches(eu)
    assert all(SnapshotRequest().matches(i) for i in (eu, warn, crit, inst(status="maintenance")))
