"""The watch's ordering rules and relist diff, without a server: events are fed to ``Watch._apply`` and lists come
from a scripted sequence of snapshots (the list request is the watch's only network step; the rest is exercised
here exactly as it runs)."""

from __future__ import annotations

import anyio
import anyio.lowlevel
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from bus.codec import encode
from bus.connection import Connection
from bus.live import EVENT_HEADER, REVISION_HEADER, event_header
from bus.models import Instance, Snapshot
from bus.subjects import Subjects
from bus.watch import Watch


def inst(iid: str, port: int = 80, **fields: object) -> Instance:
    return Instance(id=iid, address="10.0.0.1", port=port, **fields)  # type: ignore[arg-type]


def event(kind: str, iid: str, revision: int, *, port: int = 80, service: str = "api",
          tenant: str = "acme") -> Msg:
    """A write of the live view as the server republishes it on the live subject (bus.live)."""
    return Msg(NATS(), subject=f"disco.{tenant}.live.{service}.{iid}", data=encode(inst(iid, port)),
               headers={EVENT_HEADER: event_header(kind, "announce", "w1", 0.0), REVISION_HEADER: str(revision)})


def snap(revision: int, *instances: Instance, service: str = "api") -> Snapshot:
    return Snapshot(revision=revision, services={service: tuple(instances)} if instances else {})


class ListedWatch(Watch):
    """A :class:`Watch` whose lists are the given snapshots, in order (an unconnected client: nothing is sent)."""

    def __init__(self, *snapshots: Snapshot, include_initial: bool = False, buffer: int = 100) -> None:
        conn = Connection(NATS(), tenant="acme", subjects=Subjects())
        super().__init__(conn, "acme", None, include_initial=include_initial, resync_interval=None, buffer=buffer)
        self.snapshots = list(snapshots)

    async def _list(self) -> Snapshot:
        return self.snapshots.pop(0)

    def emitted(self) -> list[tuple[str, str, int, str]]:
        """(type, id, revision, reason) of every event queued so far, taken off the queue."""
        out = []
        while True:
            try:
                ev = self._out_recv.receive_nowait()
            except anyio.WouldBlock:
                return out
            out.append((ev.type.value, ev.instance.id, ev.revision, ev.reason.value))

    def ports(self) -> dict[str, int]:
        return {i.id: i.port for i in self.view.get("api", {}).values()}


async def listed(*snapshots: Snapshot, include_initial: bool = False) -> ListedWatch:
    w = ListedWatch(*snapshots, include_initial=include_initial)
    await w._relist()
    return w


async def test_events_at_or_below_the_list_revision_are_dropped() -> None:
    w = await listed(snap(10, inst("a")))
    await w._apply(event("added", "b", 9))
    await w._apply(event("added", "b", 10))
    assert w.emitted() == [] and w.ports() == {"a": 80}
    await w._apply(event("added", "b", 11))
    assert w.emitted() == [("added", "b", 11, "announce")]


async def test_an_out_of_order_update_of_an_instance_is_dropped() -> None:
    w = await listed(snap(10, inst("a")))
    await w._apply(event("updated", "a", 15, port=1500))
    await w._apply(event("updated", "a", 13, port=1300))  # published by a slower aggregator, older
    assert w.emitted() == [("updated", "a", 15, "announce")]
    assert w.ports() == {"a": 1500}


async def test_events_of_different_instances_interleave_freely() -> None:
    w = await listed(snap(10))
    await w._apply(event("added", "b", 14))
    await w._apply(event("added", "a", 12))  # older, but of another instance: applied
    assert [e[1] for e in w.emitted()] == ["b", "a"]


async def test_a_duplicate_event_is_emitted_once() -> None:
    w = await listed(snap(10))
    for _ in range(3):
        await w._apply(event("added", "a", 11))
    await w._apply(event("removed", "a", 12))
    await w._apply(event("removed", "a", 12))
    assert w.emitted() == [("added", "a", 11, "announce"), ("removed", "a", 12, "announce")]
    assert w.ports() == {}


async def test_an_add_older_than_a_seen_removal_does_not_resurrect_the_instance() -> None:
    w = await listed(snap(10, inst("a")))
    await w._apply(event("removed", "a", 20))
    await w._apply(event("added", "a", 18))  # the add was overtaken by its own removal
    await w._apply(event("updated", "a", 19))
    assert w.emitted() == [("removed", "a", 20, "announce")]
    assert w.ports() == {}
    await w._apply(event("added", "a", 21))  # a real re-announce after the removal
    assert w.emitted() == [("added", "a", 21, "announce")]


async def test_a_removal_seen_before_its_add_is_remembered() -> None:
    w = await listed(snap(10))
    await w._apply(event("removed", "a", 16))  # the add (rev 15) is still on its way
    await w._apply(event("added", "a", 15))
    assert w.emitted() == [] and w.ports() == {}


async def test_an_update_of_an_unknown_instance_is_an_add() -> None:
    w = await listed(snap(10))
    await w._apply(event("updated", "a", 11))
    assert w.emitted() == [("added", "a", 11, "announce")]


async def test_an_event_the_list_already_showed_is_not_emitted_again() -> None:
    # a snapshot may hold writes newer than its revision: the event of such a write changes nothing
    w = await listed(snap(10, inst("a", 81)))
    await w._apply(event("updated", "a", 12, port=81))
    assert w.emitted() == []
    await w._apply(event("updated", "a", 11, port=99))  # older than the held revision 12 now
    assert w.ports() == {"a": 81}


async def test_events_of_another_tenant_and_garbage_are_dropped() -> None:
    w = await listed(snap(10))
    await w._apply(event("added", "a", 11, tenant="other"))
    garbage = event("added", "a", 12)
    garbage.data = b"\xc1 not msgpack"
    await w._apply(garbage)
    no_header = event("added", "a", 13)
    no_header.headers = {REVISION_HEADER: "13"}  # a write without its change (the purge of delete markers)
    await w._apply(no_header)
    wrong_id = event("added", "a", 14)
    wrong_id.subject = "disco.acme.live.api.b"  # the record is not the subject's instance
    await w._apply(wrong_id)
    assert w.emitted() == [] and w.view == {}
    await w._apply(event("added", "a", 15))  # the same, well formed, is applied
    assert w.emitted() == [("added", "a", 15, "announce")]


async def test_the_first_list_is_emitted_only_when_asked() -> None:
    w = await listed(snap(5, inst("a"), inst("b")))
    assert w.emitted() == [] and w.lists == 1 and w.revision == 5
    w2 = await listed(snap(5, inst("a"), inst("b")), include_initial=True)
    assert sorted(w2.emitted()) == [("added", "a", 5, "initial"), ("added", "b", 5, "initial")]


async def test_a_relist_emits_the_difference_removed_updated_added() -> None:
    w = await listed(snap(10, inst("gone"), inst("same"), inst("changed", 80)),
                     snap(30, inst("same"), inst("changed", 8080), inst("new")))
    await w._relist()
    assert sorted(w.emitted()) == [
        ("added", "new", 30, "resync"), ("removed", "gone", 30, "resync"), ("updated", "changed", 30, "resync"),
    ]
    assert w.ports() == {"same": 80, "changed": 8080, "new": 80}
    assert w.revision == 30 and w.lists == 2


async def test_a_relist_forgets_tombstones_below_its_revision_and_drops_older_events() -> None:
    w = await listed(snap(10, inst("a")), snap(30, inst("a", 90)))
    await w._apply(event("removed", "a", 20))
    w.emitted()
    await w._relist()  # the list at 30 shows "a" again (re-announced at 25, its event lost)
    assert w.emitted() == [("added", "a", 30, "resync")]
    await w._apply(event("added", "a", 25, port=90))
    assert w.emitted() == [] and w.ports() == {"a": 90}


async def test_a_relist_older_than_applied_events_does_not_undo_them() -> None:
    """A list served by an aggregator whose view lags (its KV watch being re-created while a cluster node restarts)
    can be older than events the watcher already applied: they stay applied, adds and removals alike."""
    w = await listed(snap(10, inst("a"), inst("gone")), snap(8, inst("a"), inst("gone"), inst("old")))
    await w._apply(event("added", "b", 12))
    await w._apply(event("removed", "gone", 13))
    assert w.emitted() == [("added", "b", 12, "announce"), ("removed", "gone", 13, "announce")]
    await w._relist()
    assert w.emitted() == [("added", "old", 8, "resync")]  # what the list adds that the watcher had not seen
    assert sorted(w.ports()) == ["a", "b", "old"]
    await w._apply(event("added", "gone", 11))  # older than its removal: still dropped
    assert w.emitted() == [] and "gone" not in w.ports()


async def test_an_overflowing_buffer_relists_and_repairs_the_view() -> None:
    # buffer 2: the third queued event while the loop is busy overflows; the dropped events are repaired by a
    # relist whose diff the consumer sees
    w = ListedWatch(snap(10, inst("a")), snap(40, inst("b"), inst("c"), inst("d")), buffer=2)
    async with anyio.create_task_group() as tg:
        tg.start_soon(w._run)
        await w.ready.wait()
        for n, iid in enumerate(["b", "c", "d"]):  # no await that yields: the loop cannot take them meanwhile
            await w._on_msg(event("added", iid, 11 + n))
        await w._on_msg(event("removed", "a", 14))  # overflows: lost
        assert w._relist_pending
        with anyio.fail_after(10):
            while w.lists < 2:
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    got = w.emitted()
    assert ("removed", "a", 40, "resync") in got
    assert sorted(w.ports()) == ["b", "c", "d"]
    assert w.lists == 2 and w.revision == 40


async def test_a_requested_relist_runs_once_for_many_requests() -> None:
    w = ListedWatch(snap(10), snap(20, inst("x")), buffer=4)
    async with anyio.create_task_group() as tg:
        tg.start_soon(w._run)
        await w.ready.wait()
        for _ in range(5):  # reconnect and slow-consumer callbacks may fire repeatedly
            w.request_relist()
        with anyio.fail_after(10):
            while w.lists < 2:
                await anyio.sleep(0.01)
        for _ in range(10):  # let a second relist run, if one was (wrongly) queued: its list would fail
            await anyio.lowlevel.checkpoint()
        tg.cancel_scope.cancel()
    assert w.lists == 2 and w.snapshots == []
    assert w.emitted() == [("added", "x", 20, "resync")]
