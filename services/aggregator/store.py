"""The durable side of the view: the JetStream KV bucket and the change-event stream.

Writes are compare-and-set on the key's last revision (``Nats-Expected-Last-Subject-Sequence``) so that several
aggregators can write at once and each state change happens exactly once; they are done as raw JetStream
publishes on ``$KV.<bucket>.<key>`` because a delete's revision is needed for its change event (nats-py's
``kv.delete`` does not return it). A lost race raises :class:`Conflict`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue

from bus.streams import changes_stream_config, dlq_stream_config
from bus.subjects import Subjects, changes_stream_name

log = logging.getLogger("disco.aggregator.store")

__all__ = ["Conflict", "KvChange", "ViewStore"]

_WRONG_LAST = (10071, 10164)
_KV_OP = "KV-Operation"


class Conflict(Exception):
    """Another writer changed the key first; re-read and decide again."""


@dataclass(frozen=True, slots=True)
class KvChange:
    key: str
    value: bytes | None  # None for a delete or purge
    revision: int


class ViewStore:
    def __init__(self, js: JetStreamContext, bucket: str, subjects: Subjects, stream_prefix: str) -> None:
        self.js = js
        self.bucket = bucket
        self.kv_stream = f"KV_{bucket}"
        self.subjects = subjects
        self.stream_prefix = stream_prefix
        self._pre = f"$KV.{bucket}."
        self._kv: KeyValue | None = None
        self._streams_ready: set[str] = set()
        #: streams being made ready: later callers wait for the first (in order), none overtakes it
        self._streams_pending: dict[str, anyio.Event] = {}
        self._replicas = 1
        self._max_age = 7 * 24 * 3600.0

    async def open(self, *, replicas: int, changes_max_age: float) -> None:
        """Create (or bind to) the bucket; safe to call from every aggregator at once."""
        self._replicas, self._max_age = replicas, changes_max_age
        try:
            self._kv = await self.js.key_value(self.bucket)
        except nats.js.errors.BucketNotFoundError:
            try:
                self._kv = await self.js.create_key_value(
                    bucket=self.bucket, history=1, replicas=replicas, storage=api.StorageType.FILE,
                    description="disco live view",
                )
            except nats.js.errors.APIError:
                self._kv = await self.js.key_value(self.bucket)  # created by another aggregator meanwhile

    async def ensure_changes_stream(self, tenant: str) -> None:
        """Create the tenant's change stream (``<prefix>_<tenant>`` capturing ``disco.<t>.changes.*``) once.

        One stream per tenant, not one for all: each tenant's durable workers then need JetStream permissions on
        their own stream only (DESIGN.md §7), and one tenant's retention cannot evict another's events.
        """
        name = changes_stream_name(self.stream_prefix, tenant)
        if name in self._streams_ready:
            return
        pending = self._streams_pending.get(name)
        if pending is not None:  # another publish is making it ready: wait behind it, so as not to overtake it
            await pending.wait()
            return
        pending = self._streams_pending[name] = anyio.Event()
        try:
            cfg = changes_stream_config(self.subjects, self.stream_prefix, tenant, replicas=self._replicas,
                                        max_age=self._max_age)
            try:
                await self.js.stream_info(name)
            except nats.js.errors.NotFoundError:
                try:
                    await self.js.add_stream(cfg)
                except nats.js.errors.APIError as exc:
                    log.debug("change stream %s created concurrently: %s", name, exc)
            try:  # the tenant's dead letters, with its change stream (same replicas; idempotent)
                await self.js.add_stream(dlq_stream_config(self.subjects, self.stream_prefix, tenant,
                                                           replicas=self._replicas))
            except (nats.errors.Error, TimeoutError) as exc:
                log.debug("dead-letter stream of %s not created: %s", tenant, exc)
            self._streams_ready.add(name)
        finally:
            del self._streams_pending[name]
            pending.set()

    @property
    def kv(self) -> KeyValue:
        assert self._kv is not None, "open() first"
        return self._kv

    async def _publish(self, key: str, value: bytes, headers: dict[str, str]) -> int:
        try:
            ack = await self.js.publish(self._pre + key, value, headers=headers)
        except nats.js.errors.APIError as exc:
            if exc.err_code in _WRONG_LAST:
                raise Conflict(key) from None
            raise
        return int(ack.seq)

    async def create(self, key: str, value: bytes, last: int = 0) -> int:
        """Write a key that the view does not hold; ``last`` is its delete marker's revision, if known."""
        return await self._publish(key, value, {api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE: str(last)})

    async def update(self, key: str, value: bytes, last: int) -> int:
        return await self._publish(key, value, {api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE: str(last)})

    async def delete(self, key: str, last: int) -> int:
        """Place a delete marker if the key is still at revision ``last``; return the marker's revision."""
        return await self._publish(
            key, b"", {_KV_OP: "DEL", api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE: str(last)}
        )

    async def latest(self, key: str) -> KvChange | None:
        """The newest message of ``key`` (a value or a delete marker), or None if the key never existed."""
        try:
            msg = await self.js.get_last_msg(self.kv_stream, self._pre + key)
        except nats.js.errors.NotFoundError:
            return None
        headers = msg.headers or {}
        deleted = headers.get(_KV_OP) in ("DEL", "PURGE") or "Nats-Marker-Reason" in headers
        return KvChange(key, None if deleted else (msg.data or b""), int(msg.seq or 0))

    async def follow(self) -> AsyncIterator[KvChange | None]:
        """Every key's current value, then ``None`` (initial load done), then every change as it happens."""
        watcher = await self.kv.watchall()
        try:
            async for entry in watcher:
                if entry is None:
                    yield None
                    continue
                deleted = entry.operation in ("DEL", "PURGE")
                yield KvChange(entry.key, None if deleted else (entry.value or b""), int(entry.revision or 0))
        finally:
            try:
                await watcher.stop()  # type: ignore[no-untyped-call]
            except Exception:
                pass

    async def publish_event(self, tenant: str, subject: str, data: bytes, revision: int) -> None:
        """Publish a change event, captured by the tenant's change stream; the revision de-duplicates retries."""
        await self.ensure_changes_stream(tenant)
        try:
            await self.js.publish(subject, data, headers={"Nats-Msg-Id": str(revision)})
        except nats.errors.NoRespondersError:
            self._streams_ready.discard(changes_stream_name(self.stream_prefix, tenant))  # deleted: re-create
            raise

    async def purge_deletes(self, older_than: float) -> None:
        await self.kv.purge_deletes(olderthan=int(older_than))
