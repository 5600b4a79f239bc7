"""The live view in memory: tenant → service → instance, each with the KV revision of its last change.

Changes come from two places: this aggregator's own successful writes (applied at once, so a resolve right after
an acknowledged announce sees it) and the KV watch (every aggregator's writes, in revision order). Both go through
:meth:`LiveView.put` and :meth:`LiveView.delete`, which ignore anything not newer than what the view holds for
that key, so applying the same change twice, or out of order, is harmless.

Entries are compact (issue 11: ≤ 1 KiB of RSS per live instance): an :class:`Entry` holds the instance's
encoded record (the msgpack bytes the KV holds, which is what replies carry) and only the fields the filters read
(status, zone, tags; interned, so equal values are shared). ``instance`` and ``wire`` decode on demand (write path
and snapshots); resolve replies are spliced from the encoded records and cached per service.

``position`` is the revision up to which the watch has delivered everything: a snapshot taken at that revision
holds every change at or below it (and perhaps some newer ones, which watchers apply idempotently).
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass, field
from typing import Any

import msgpack

from bus.codec import encode, encode_map
from bus.models import Instance, ResolveRequest, SnapshotRequest, Status

__all__ = ["Entry", "LiveView", "reply_bytes"]

_CACHE_PER_SERVICE = 32
_TAGS: dict[tuple[str, ...], tuple[str, ...]] = {}


def _tags(tags: tuple[str, ...]) -> tuple[str, ...]:
    """One shared tuple per distinct tag set (a fleet has few)."""
    if not tags:
        return ()
    got = _TAGS.get(tags)
    if got is None:
        if len(_TAGS) > 100_000:
            _TAGS.clear()
        got = _TAGS[tags] = tuple(sys.intern(t) for t in tags)
    return got


class Entry:
    """One instance in the view: its encoded record at ``revision``, and what the filters read."""

    __slots__ = ("id", "raw", "revision", "status", "tags", "zone")

    def __init__(self, iid: str, raw: bytes, revision: int, status: Status, zone: str, tags: tuple[str, ...]) -> None:
        self.id = iid
        self.raw = raw
        self.revision = revision
        self.status = status
        self.zone = sys.intern(zone)
        self.tags = _tags(tags)

    @classmethod
    def of(cls, instance: Instance, revision: int) -> Entry:
        return cls(instance.id, encode(instance), revision, instance.status, instance.zone, instance.tags)

    @property
    def wire(self) -> dict[str, Any]:
        """The record as a plain map (what ``model_dump(mode="json")`` gives)."""
        out: dict[str, Any] = msgpack.unpackb(self.raw, raw=False)
        return out

    @property
    def instance(self) -> Instance:
        """The record as a model (decoded on each call: the write path's comparisons, not the read path)."""
        return Instance.model_validate(msgpack.unpackb(self.raw, raw=False, use_list=False))


def reply_bytes(revision: int, raws: list[bytes]) -> bytes:
    """The encoded ``{"v": 1, "ok": True, "revision": r, "instances": [...]}`` spliced from encoded records:
    byte for byte what ``encode_map`` gives for the same map."""
    packer = msgpack.Packer(use_bin_type=True)
    head: bytes = (packer.pack_map_header(4) + packer.pack("v") + packer.pack(1) + packer.pack("ok") + packer.pack(True)
            + packer.pack("revision") + packer.pack(revision) + packer.pack("instances")
            + packer.pack_array_header(len(raws)))
    return head + b"".join(raws)


@dataclass(slots=True)
class _Service:
    entries: dict[str, Entry] = field(default_factory=dict)
    revision: int = 0
    replies: dict[bytes, bytes] = field(default_factory=dict)


class LiveView:
    def __init__(self) -> None:
        self._tenants: dict[str, dict[str, _Service]] = {}
        self._tombstones: dict[tuple[str, str, str], int] = {}
        self.position = 0

    # -- reading ----------------------------------------------------------------------------------------------
    def get(self, tenant: str, service: str, iid: str) -> Entry | None:
        svc = self._tenants.get(tenant, {}).get(service)
        return None if svc is None else svc.entries.get(iid)

    def tombstone(self, tenant: str, service: str, iid: str) -> int:
        return self._tombstones.get((tenant, service, iid), 0)

    def tenants(self) -> list[str]:
        return list(self._tenants)

    def services(self, tenant: str) -> dict[str, list[Entry]]:
        return {name: list(s.entries.values()) for name, s in self._tenants.get(tenant, {}).items() if s.entries}

    def count(self, tenant: str) -> tuple[int, int]:
        """(services, instances) the tenant has now."""
        svcs = self._tenants.get(tenant, {})
        return sum(1 for s in svcs.values() if s.entries), sum(len(s.entries) for s in svcs.values())

    def service_instances(self, tenant: str, service: str) -> int:
        svc = self._tenants.get(tenant, {}).get(service)
        return 0 if svc is None else len(svc.entries)

    def all_keys(self) -> list[tuple[str, str, str]]:
        return [(t, s, i) for t, svcs in self._tenants.items() for s, svc in svcs.items() for i in svc.entries]

    def resolve_reply(self, tenant: str, service: str, raw_request: bytes, req: ResolveRequest) -> bytes:
        """The encoded ResolveReply for ``req``; cached per service until it changes (unless ``limit`` is set)."""
        svc = self._tenants.get(tenant, {}).get(service)
        if svc is None:
            return encode_map({"v": 1, "ok": True, "revision": self.tombstone_revision(tenant, service),
                               "instances": []})
        cached = svc.replies.get(raw_request)
        if cached is not None:
            return cached
        matching = [e.raw for e in svc.entries.values() if req.matches(e)]
        if req.limit is not None and len(matching) > req.limit:
            return reply_bytes(svc.revision, random.sample(matching, req.limit))
        data = reply_bytes(svc.revision, matching)
        if len(svc.replies) >= _CACHE_PER_SERVICE:
            svc.replies.clear()
        svc.replies[raw_request] = data
        return data

    def cached_reply(self, tenant: str, service: str, raw_request: bytes) -> bytes | None:
        svc = self._tenants.get(tenant, {}).get(service)
        return None if svc is None else svc.replies.get(raw_request)

    def tombstone_revision(self, tenant: str, service: str) -> int:
        svc = self._tenants.get(tenant, {}).get(service)
        return 0 if svc is None else svc.revision

    def snapshot_map(self, tenant: str, req: SnapshotRequest) -> dict[str, Any]:
        wanted = set(req.services)
        services: dict[str, list[dict[str, Any]]] = {}
        for name, svc in self._tenants.get(tenant, {}).items():
            if wanted and name not in wanted:
                continue
            insts = [e.wire for e in svc.entries.values() if req.matches(e)]
            if insts:
                services[name] = insts
        return {"v": 1, "ok": True, "revision": self.position, "services": services}

    # -- changing ---------------------------------------------------------------------------------------------
    def _svc(self, tenant: str, service: str) -> _Service:
        svcs = self._tenants.get(tenant)
        if svcs is None:
            svcs = self._tenants[tenant] = {}
        svc = svcs.get(service)
        if svc is None:
            svc = svcs[service] = _Service()
        return svc

    def put(self, tenant: str, service: str, instance: Instance, revision: int) -> Entry | bool | None:
        """Apply a write at ``revision``. Return False if it is not newer than what the view holds, else the
        previous entry (None when the instance is new)."""
        return self.put_entry(tenant, service, Entry.of(instance, revision))

    def put_entry(self, tenant: str, service: str, entry: Entry) -> Entry | bool | None:
        """:meth:`put` of an already built entry (the follower builds them from the KV's bytes)."""
        revision, iid = entry.revision, entry.id
        tombstones = self._tombstones
        key = (tenant, service, iid) if tombstones else None  # none at a start: no key tuple per entry
        if key is not None and tombstones.get(key, 0) >= revision:
            return False
        svc = self._svc(tenant, service)
        old = svc.entries.get(iid)
        if old is not None and old.revision >= revision:
            return False
        if key is not None:
            tombstones.pop(key, None)
        svc.entries[iid] = entry
        if revision > svc.revision:
            svc.revision = revision
        if svc.replies:
            svc.replies.clear()
        return old

    def delete(self, tenant: str, service: str, iid: str, revision: int) -> Entry | bool | None:
        """Apply a removal at ``revision``. Return False if not newer, else the removed entry (None if absent)."""
        key = (tenant, service, iid)
        if self._tombstones.get(key, 0) >= revision:
            return False
        svcs = self._tenants.get(tenant, {})
        svc = svcs.get(service)
        old = None if svc is None else svc.entries.get(iid)
        if old is not None and old.revision >= revision:
            return False
        self._tombstones[key] = revision
        if svc is not None:
            svc.revision = max(svc.revision, revision)
            svc.replies.clear()
            if old is not None:
                del svc.entries[iid]
        return old

    def drop(self, tenant: str, service: str, iid: str) -> Entry | None:
        """Remove an entry the bucket no longer has at all (its delete marker purged, revision unknown): the
        tombstone sits at the entry's own revision, so any later write of the key is taken."""
        svc = self._tenants.get(tenant, {}).get(service)
        old = None if svc is None else svc.entries.pop(iid, None)
        if svc is None or old is None:
            return None
        key = (tenant, service, iid)
        self._tombstones[key] = max(self._tombstones.get(key, 0), old.revision)
        svc.replies.clear()
        return old

    def clear_tombstone(self, tenant: str, service: str, iid: str) -> None:
        """Forget the removal of a key the bucket holds no message of (nothing older can come back from it)."""
        self._tombstones.pop((tenant, service, iid), None)

    def advance(self, revision: int) -> None:
        """The watch has delivered everything up to ``revision``; tombstones at or below it can go."""
        if revision <= self.position:
            return
        self.position = revision
        if len(self._tombstones) > 10_000:
            self._tombstones = {k: r for k, r in self._tombstones.items() if r > revision}
