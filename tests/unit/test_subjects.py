"""Names and subjects: every builder validates, every subject parses back, every invalid name is InvalidName."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from bus.errors import BadRequest, InvalidName
from bus.subjects import (
    ParsedSubject,
    Subjects,
    changes_stream_name,
    kv_key,
    parse_kv_key,
    validate_instance_id,
    validate_service,
    validate_tenant,
)

S = Subjects()

VALID_LABELS = ["a", "0", "acme", "team-7", "a-b-c", "9lives", "a" * 63, "a" + "-" * 61 + "z"]
INVALID_LABELS: list[Any] = [
    "", "A", "Acme", "-a", "a-", "-", "a_b", "a.b", "a b", " a", "a ", "a*", "*", ">", "a>", "a" * 64, "é", "ａ",
    "a\n", "a\x00", "a/b", None, 5, b"acme", ["acme"],
]
VALID_IDS = ["a", "A", "0", "_", "-", "billing-1", "Node_01-x", "9f2c1ab04e6d11ef", "x" * 64]
INVALID_IDS: list[Any] = ["", "x" * 65, "a.b", "a b", "a*", ">", "é", "a\n", "a/b", "a:b", None, 7, b"id"]


# ------------------------------------------------------------------------------------------------------------
# validators
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", VALID_LABELS)
def test_valid_labels_are_returned_unchanged(name: str) -> None:
    assert validate_tenant(name) == name
    assert validate_service(name) == name


@pytest.mark.parametrize("name", INVALID_LABELS, ids=repr)
def test_invalid_labels_are_refused(name: Any) -> None:
    with pytest.raises(InvalidName, match="invalid tenant name"):
        validate_tenant(name)
    with pytest.raises(InvalidName, match="invalid service name"):
        validate_service(name)


@pytest.mark.parametrize("iid", VALID_IDS)
def test_valid_instance_ids(iid: str) -> None:
    assert validate_instance_id(iid) == iid


@pytest.mark.parametrize("iid", INVALID_IDS, ids=repr)
def test_invalid_instance_ids_are_refused(iid: Any) -> None:
    with pytest.raises(InvalidName, match="invalid instance id"):
        validate_instance_id(iid)


def test_invalid_name_is_a_bad_request_and_a_value_error() -> None:
    with pytest.raises(BadRequest) as info:
        validate_tenant("UPPER")
    assert isinstance(info.value, ValueError)
    assert info.value.code == "invalid_name"
    assert "'UPPER'" in str(info.value)  # the message names the offending value


# ------------------------------------------------------------------------------------------------------------
# builders
# ------------------------------------------------------------------------------------------------------------
def test_builders_default_prefix() -> None:
    assert S.announce("acme", "billing") == "disco.acme.announce.billing"
    assert S.hb("acme", "billing") == "disco.acme.hb.billing"
    assert S.bye("acme", "billing") == "disco.acme.bye.billing"
    assert S.resolve("acme", "billing") == "disco.acme.resolve.billing"
    assert S.snapshot("acme") == "disco.acme.snapshot"
    assert S.changes("acme", "billing") == "disco.acme.changes.billing"
    assert S.changes("acme") == "disco.acme.changes.*"
    assert S.ctl("acme", "billing", "i-1") == "disco.acme.ctl.billing.i-1"
    assert S.live("acme", "billing", "i-1") == "disco.acme.live.billing.i-1"
    assert S.live("acme", "billing") == "disco.acme.live.billing.*"
    assert S.live("acme") == "disco.acme.live.*.*"
    assert S.live_republish() == "disco.{{wildcard(1)}}.live.{{wildcard(2)}}.{{wildcard(3)}}"
    assert S.dlq("acme", "mailer") == "disco.acme.dlq.mailer"
    assert S.tenant_root("acme") == "disco.acme.>"


def test_wildcards() -> None:
    s = Subjects("x.y")
    assert s.any("announce") == "x.y.*.announce.*"
    assert s.any("hb") == "x.y.*.hb.*"
    assert s.any("snapshot") == "x.y.*.snapshot"
    assert s.any("ctl") == "x.y.*.ctl.*.*"
    assert s.all_changes() == "x.y.*.changes.*"


@pytest.mark.parametrize("prefix", ["disco", "t123abc", "prod.disco", "A_b-C.d"])
def test_valid_prefixes(prefix: str) -> None:
    assert Subjects(prefix).announce("acme", "billing") == f"{prefix}.acme.announce.billing"


@pytest.mark.parametrize("prefix", ["", ".", "a.", ".a", "a..b", "a.*", "a.>", "a b", "é", "a\tb"])
def test_invalid_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(InvalidName, match="prefix"):
        Subjects(prefix)


@pytest.mark.parametrize("bad", INVALID_LABELS, ids=repr)
def test_every_builder_refuses_an_invalid_tenant_or_service(bad: Any) -> None:
    builders: list[Callable[[Any, Any], str]] = [
        lambda t, s: S.announce(t, s), lambda t, s: S.hb(t, s), lambda t, s: S.bye(t, s),
        lambda t, s: S.resolve(t, s), lambda t, s: S.changes(t, s), lambda t, s: S.ctl(t, s, "i1"),
        lambda t, s: kv_key(t, s, "i1"),
    ]
    for build in builders:
        with pytest.raises(InvalidName):
            build(bad, "billing")
        if bad is None and build is builders[4]:
            continue  # changes(t, None) is the wildcard over the tenant's services
        with pytest.raises(InvalidName):
            build("acme", bad)
    for one in (S.snapshot, S.tenant_root, S.changes, lambda t: changes_stream_name("DISCO", t)):
        with pytest.raises(InvalidName):
            one(bad)
    with pytest.raises(InvalidName, match="invalid tenant"):
        S.dlq(bad, "group")
    with pytest.raises(InvalidName, match="invalid group"):
        S.dlq("acme", bad)


@pytest.mark.parametrize("bad", INVALID_IDS, ids=repr)
def test_instance_builders_refuse_an_invalid_id(bad: Any) -> None:
    with pytest.raises(InvalidName, match="instance id"):
        S.ctl("acme", "billing", bad)
    with pytest.raises(InvalidName, match="instance id"):
        kv_key("acme", "billing", bad)


# ------------------------------------------------------------------------------------------------------------
# parser
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prefix", ["disco", "a.b.c"])
@pytest.mark.parametrize("tenant", ["acme", "a", "x" * 63])
def test_parse_round_trips_every_builder(prefix: str, tenant: str) -> None:
    s = Subjects(prefix)
    for kind in ("announce", "hb", "bye", "resolve", "changes"):
        subject = getattr(s, kind)(tenant, "billing")
        assert s.parse(subject) == ParsedSubject(tenant, kind, "billing")
    assert s.parse(s.snapshot(tenant)) == ParsedSubject(tenant, "snapshot")
    assert s.parse(s.ctl(tenant, "billing", "Node_1")) == ParsedSubject(tenant, "ctl", "billing", "Node_1")
    assert s.parse(s.live(tenant, "billing", "Node_1")) == ParsedSubject(tenant, "live", "billing", "Node_1")


@pytest.mark.parametrize(
    "subject",
    [
        "", ".", "disco", "disco.acme", "disco.acme.", "other.acme.announce.billing", "Disco.acme.announce.billing",
        "discox.acme.announce.billing", "disco.acme.announce", "disco.acme.announce.billing.extra",
        "disco.acme.unknown.billing", "disco.acme.snapshot.billing", "disco.acme.ctl.billing",
        "disco.acme.ctl.billing.i1.x", "disco.acme.hb.billing.i1", "disco.acme.dlq.group", "disco._sys.stats",
        "disco.ACME.announce.billing", "disco.acme.announce.Billing", "disco.acme.announce.*",
        "disco.*.announce.billing", "disco.acme.changes.*", "disco.acme.ctl.billing.a.b", "disco.acme.ctl.billing.*",
        "disco..announce.billing", "disco.acme.announce..", "disco.-a.resolve.x", "disco.acme.resolve.x-",
        "disco.acme.resolve." + "x" * 64, "disco.acme.ctl.billing." + "i" * 65, "disco.é.hb.x",
        "disco.acme.live.billing", "disco.acme.live.billing.*", "disco.acme.live.Billing.i1",
    ],
)
def test_parse_refuses_non_disco_subjects(subject: str) -> None:
    with pytest.raises(InvalidName):
        S.parse(subject)


def test_parse_needs_the_whole_prefix() -> None:
    s = Subjects("a.b")
    assert s.parse("a.b.acme.hb.x") == ParsedSubject("acme", "hb", "x")
    for subject in ("a.acme.hb.x", "a.c.acme.hb.x", "b.a.acme.hb.x", "a.b"):
        with pytest.raises(InvalidName):
            s.parse(subject)


# ------------------------------------------------------------------------------------------------------------
# KV keys and streams
# ------------------------------------------------------------------------------------------------------------
def test_kv_key_round_trip() -> None:
    key = kv_key("acme", "billing", "Node_1-a")
    assert key == "acme.billing.Node_1-a"
    assert parse_kv_key(key) == ("acme", "billing", "Node_1-a")


@pytest.mark.parametrize(
    "key", ["", "acme", "acme.billing", "acme.billing.i.x", "ACME.billing.i", "acme.Billing.i", "acme.billing.",
            "acme.billing.i*", ".."],
)
def test_parse_kv_key_refuses(key: str) -> None:
    with pytest.raises(InvalidName):
        parse_kv_key(key)


def test_changes_stream_name() -> None:
    assert changes_stream_name("DISCO_CHANGES", "acme") == "DISCO_CHANGES_acme"
