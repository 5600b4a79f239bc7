"""Shard specs, the partition function and the server configuration (services/aggregator/shard.py); the partition is
checked against the real server in tests/integration/test_shards.py."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.aggregator.settings import AggregatorSettings
from services.aggregator.shard import MAPPED_KINDS, PROBE_KIND, Shard, mappings, partition, probe_names, server_config


def test_partition_is_fnv1a_32() -> None:
    # FNV-1a 32 reference values: "" 0x811c9dc5, "a" 0xe40c292c, "foobar" 0xbf9cf968
    assert partition("", 1 << 32) == 0x811C9DC5
    assert partition("a", 1 << 32) == 0xE40C292C
    assert partition("foobar", 1 << 32) == 0xBF9CF968
    assert partition("foobar", 7) == 0xBF9CF968 % 7


@pytest.mark.parametrize(("text", "index", "count"), [("0/2", 0, 2), ("1/2", 1, 2), (" 3 / 4 ", 3, 4), ("0/1", 0, 1)])
def test_parse(text: str, index: int, count: int) -> None:
    s = Shard.parse(text)
    assert (s.index, s.count, s.label) == (index, count, f"{index}/{count}")


@pytest.mark.parametrize(("text", "says"), [
    ("2/2", "does not exist among 2"), ("1/0", "between 1 and"), ("0/5000", "between 1 and"), ("a/b", "use K/N"),
    ("-1/2", "use K/N"), ("1", "use K/N"), ("", "use K/N"), ("1/2/3", "use K/N"),
])
def test_parse_refuses(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        Shard.parse(text)


def test_subjects_and_bucket() -> None:
    s = Shard(1, 3)
    assert s.listen("disco.*.announce.*") == "disco.*.announce.*.1"
    assert s.unmap("disco.acme.announce.web.1") == "disco.acme.announce.web"
    for other in ("disco.acme.announce.web.2", "disco.acme.announce.web", "1"):
        with pytest.raises(ValueError, match="not a subject of shard 1/3"):
            s.unmap(other)
    assert s.bucket("disco_view") == "disco_view_s1of3"
    owned = [t for t in ("acme", "beta", "gamma", "delta", "t0", "t1") if s.owns(t)]
    assert owned == [t for t in ("acme", "beta", "gamma", "delta", "t0", "t1") if partition(t, 3) == 1]


def test_mappings_and_config() -> None:
    m = mappings("a.b", 4)
    assert m["a.b.*.announce.*"] == "a.b.{{wildcard(1)}}.announce.{{wildcard(2)}}.{{partition(4,1)}}"
    assert m["a.b.*.snapshot"] == "a.b.{{wildcard(1)}}.snapshot.{{partition(4,1)}}"
    assert m[f"a.b.*.{PROBE_KIND}"] == f"a.b.{{{{wildcard(1)}}}}.{PROBE_KIND}.{{{{partition(4,1)}}}}"
    assert len(m) == len(MAPPED_KINDS) + 1
    text = server_config("a.b", 4)
    assert text.splitlines()[1] == "mappings = {" and text.endswith("}\n")
    assert all(f'"{k}": "{v}"' in text for k, v in m.items())
    with pytest.raises(ValueError):
        mappings("disco", 0)


def test_probes_cover_every_shard() -> None:
    for n in (1, 2, 5, 64):
        names = probe_names(n)
        assert sorted(partition(x, n) for x in names) == sorted(list(range(n)) * 2)


def test_settings() -> None:
    s = AggregatorSettings(shard=" 1/2")
    assert (s.shard, s.view_bucket, s.shard_spec) == ("1/2", "disco_view_s1of2", Shard(1, 2))
    plain = AggregatorSettings()
    assert (plain.shard_spec, plain.view_bucket) == (None, "disco_view")
    with pytest.raises(ValidationError, match="does not exist"):
        AggregatorSettings(shard="2/2")
    with pytest.raises(ValidationError, match=r"shard\n.*not supported with tenant isolation"):
        AggregatorSettings(shard="0/2", strict_replies=True)
