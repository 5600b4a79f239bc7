"""Sharding aggregators by tenant with the NATS server's deterministic subject partitioning (issue 11).

For tenants beyond one process's reach, N groups of aggregators each serve one shard of the tenants. The routing
is the server's, not ours: a subject mapping in the server's configuration (:func:`server_config`) rewrites what
clients publish, unchanged, on ``<prefix>.<t>.announce.<svc>`` (and ``hb``, ``bye``, ``resolve``, ``snapshot``)
to ``<prefix>.<t>.announce.<svc>.<k>``, where ``k = partition(N, <t>)`` is the FNV-1a (32 bit) hash of the tenant
token modulo N (nats-server's ``{{partition(N,1)}}``, server/subject_transform.go). The reply subject is kept, so
request-reply works as before. An aggregator of shard K (``--shard K/N``):

- subscribes to the mapped subjects ending in ``.K`` only (:meth:`Shard.listen`), and strips that token before
  parsing (:meth:`Shard.unmap`); a message of a tenant of another shard (published straight to a mapped subject)
  is refused, so a shard's view holds only its own tenants;
- keeps its shard's live view in a bucket of its own, ``<bucket>_s<K>of<N>`` (:meth:`Shard.bucket`), which it
  follows as today: loads verified complete, events derived from the writes, takeover between the aggregators of
  the same shard — every guarantee of one unsharded group holds inside a shard;
- publishes change events as today: change subjects and per-tenant change streams are per tenant already;
- checks at start that the server maps subjects for N shards as it computes them (:func:`check_mapping`): probe
  subjects ``<prefix>.<probe>._shard`` are mapped (by the same configuration) to ``….<k>``, and every probe must
  come back with ``fnv1a(probe) % N``; a server without the mapping, or with another N, is a clear error at start
  rather than an aggregator that silently hears nothing. An aggregator without ``--shard`` makes the same check
  the other way round: on a server that partitions the subjects it would hear nothing either.

``ctl`` messages flow from an aggregator to an instance and are not mapped: only the shard that hears an
instance's heartbeats asks it to re-announce. Changing N moves tenants between shards: the new shards start
with empty buckets, and every instance re-announces when its next heartbeat is answered by a reannounce request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import anyio
from nats.aio.msg import Msg

from bus.connection import Connection

__all__ = [
    "MAPPED_KINDS",
    "PROBE_KIND",
        "Shard",
    "ShardMismatch",
    "check_mapping",
    "mappings",
    "partition",
    "probe_names",
    "probe_partition",
    "server_config",
]

#: the request kinds the server partitions (what clients send to aggregators)
MAPPED_KINDS = ("announce", "hb", "bye", "resolve", "snapshot")
#: the kind of the start-up probe subject ``<prefix>.<probe>._shard`` (mapped too; no aggregator serves it)
PROBE_KIND = "_shard"
#: the most shards a deployment may have
MAX_SHARDS = 1024
_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193


def partition(tenant: str, count: int) -> int:
    """The shard of ``tenant`` among ``count``: FNV-1a 32 of the token's bytes modulo ``count``, exactly as
    nats-server computes ``{{partition(count,1)}}`` on it (checked against the server at start and in tests)."""
    h = _FNV_OFFSET
    for b in tenant.encode():
        h = ((h ^ b) * _FNV_PRIME) & 0xFFFFFFFF
    return h % count


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard ``index`` of ``count`` (``0 <= index < count``)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS:
            raise ValueError(f"the number of shards must be between 1 and {MAX_SHARDS}, not {self.count}")
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index} does not exist among {self.count}: use 0 to {self.count - 1}")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"K/N"`` -> Shard(K, N); a ValueError saying what is wrong otherwise."""
        m = _SPEC.fullmatch(text)
        if m is None:
            raise ValueError(f"invalid shard {text!r}: use K/N, e.g. 0/2 (shard K of N, counted from 0)")
        return cls(int(m.group(1)), int(m.group(2)))

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, tenant: str) -> bool:
        """Whether ``tenant`` belongs to this shard."""
        return partition(tenant, self.count) == self.index

    def listen(self, pattern: str) -> str:
        """The subject this shard subscribes to for the client-facing subject ``pattern`` (wildcards allowed)."""
        return f"{pattern}.{self.index}"

    def unmap(self, subject: str) -> str:
        """The subject a client published, from the mapped subject this shard received (its last token dropped);
        a ValueError when it does not end in this shard's token."""
        base, _, token = subject.rpartition(".")
        if token != str(self.index) or not base:
            raise ValueError(f"{subject!r} is not a subject of shard {self.label}")
        return base

    def bucket(self, base: str) -> str:
        """The KV bucket holding this shard's live view: ``<base>_s<K>of<N>`` (N in the name: a change of N
        starts new buckets instead of mixing tenants of another partitioning)."""
        return f"{base}_s{self.index}of{self.count}"


def mappings(prefix: str, count: int) -> dict[str, str]:
    """The server's subject mappings for ``count`` shards under ``prefix`` (source -> destination)."""
    Shard(0, count)  # validates count
    part = f"{{{{partition({count},1)}}}}"
    out: dict[str, str] = {}
    for kind in MAPPED_KINDS:
        if kind == "snapshot":
            out[f"{prefix}.*.snapshot"] = f"{prefix}.{{{{wildcard(1)}}}}.snapshot.{part}"
        else:
            out[f"{prefix}.*.{kind}.*"] = f"{prefix}.{{{{wildcard(1)}}}}.{kind}.{{{{wildcard(2)}}}}.{part}"
    out[f"{prefix}.*.{PROBE_KIND}"] = f"{prefix}.{{{{wildcard(1)}}}}.{PROBE_KIND}.{part}"
    return out


def server_config(prefix: str, count: int, indent: str = "") -> str:
    """The ``mappings`` block of a nats-server configuration for ``count`` shards (at the top level it applies to
    the global account; inside an ``accounts { X { … } }`` block, to account X)."""
    lines = [f"{indent}# disco: {count} aggregator shards by tenant (prefix {prefix})", f"{indent}mappings = {{"]
    lines += [f'{indent}  "{src}": "{dst}"' for src, dst in mappings(prefix, count).items()]
    lines.append(f"{indent}}}")
    return "\n".join(lines) + "\n"


class ShardMismatch(Exception):
    """The server partitions the subjects otherwise than this aggregator's ``--shard`` says (or not at all, or
    does partition them while the aggregator serves every tenant). Not a protocol error (no wire code): the
    aggregator does not start."""


def probe_names(count: int, per_shard: int = 2) -> list[str]:
    """Probe tokens covering every shard ``per_shard`` times (deterministic)."""
    names: list[str] = []
    seen = [0] * count
    i = 0
    while min(seen) < per_shard:
        name = f"probe-{i}"
        k = partition(name, count)
        if seen[k] < per_shard:
            seen[k] += 1
            names.append(name)
        i += 1
    return names


async def probe_partition(conn: Connection, names: list[str], timeout: float) -> dict[str, str]:
    """Publish ``<prefix>.<name>._shard`` for each name; return where each came back: the shard token the server
    mapped it to, or "" when it came back unmapped (names missing: nothing came back within ``timeout``)."""
    prefix = conn.subjects.prefix
    plen = prefix.count(".") + 1
    got: dict[str, str] = {}
    done = anyio.Event()
    nc = conn.nc

    async def cb(msg: Msg) -> None:
        tokens = msg.subject.split(".")
        got[tokens[plen]] = tokens[plen + 2] if len(tokens) > plen + 2 else ""
        if all(n in got for n in names):
            done.set()

    subs = [await nc.subscribe(f"{prefix}.*.{PROBE_KIND}", cb=cb),
            await nc.subscribe(f"{prefix}.*.{PROBE_KIND}.*", cb=cb)]
    # a connection without echo (an aggregator's) would not hear its own probes: they leave from another one
    sender = await conn.clone(name="disco-shard-probe") if nc.options.get("no_echo") else conn
    try:
        await nc.flush()
        for name in names:
            await sender.nc.publish(f"{prefix}.{name}.{PROBE_KIND}", b"")
        await sender.nc.flush()
        with anyio.move_on_after(timeout):
            await done.wait()
    finally:
        for sub in subs:
            try:
                await sub.unsubscribe()
            except Exception:
                pass
        if sender is not conn:
            await sender.close()
    return got


async def check_mapping(conn: Connection, shard: Shard | None, timeout: float = 3.0) -> None:
    """Raise :class:`ShardMismatch` unless the server partitions the subjects as ``shard`` expects: for a shard,
    mapped to ``….<k>`` with the same partition of the same N as :func:`partition` (a few probe tenants, each
    shard's among them); for an aggregator of every tenant (None), not mapped at all."""
    prefix = conn.subjects.prefix
    if shard is None:
        got = await probe_partition(conn, ["probe-0"], min(timeout, 1.0))
        if got.get("probe-0"):  # nothing back (a permission?) proves nothing: no verdict then
            raise ShardMismatch(
                f"the NATS server partitions the subjects of prefix {prefix!r} by tenant (a probe went to shard "
                f"{got['probe-0']}): start this aggregator with --shard K/N (N as in the server's mappings)"
            )
        return
    names = probe_names(shard.count) if shard.count <= 64 else [f"probe-{i}" for i in range(64)]
    got = await probe_partition(conn, names, timeout)
    hint = f"put the mappings of `disco shard config {shard.count} --prefix {prefix}` in the server's configuration"
    if not got:
        raise ShardMismatch(f"cannot check that the NATS server partitions the subjects of prefix {prefix!r}: "
                            f"no probe came back within {timeout:g} s")
    if any(v == "" for v in got.values()):
        raise ShardMismatch(f"the NATS server does not partition the subjects of prefix {prefix!r} for shards: {hint}")
    wrong = [(n, got.get(n)) for n in names if got.get(n) != str(partition(n, shard.count))]
    if wrong:
        name, seen = wrong[0]
        raise ShardMismatch(
            f"the NATS server partitions the subjects of prefix {prefix!r} differently from {shard.count} shards "
            f"(tenant {name!r} went to shard {seen}, expected {partition(name, shard.count)}): {hint}"
        )
