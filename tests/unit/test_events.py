"""The change event a KV write carries (services/aggregator/events.py): header round trip and the event built from
a value or a delete marker's body."""

from __future__ import annotations

from bus.codec import decode, encode
from bus.models import ChangeEvent, Instance
from bus.subjects import Subjects
from services.aggregator.eventdata import event_header, event_of_write, parse_event_header

SUBJECTS = Subjects("disco")
INST = Instance(id="i1", address="10.0.0.1", port=80, seq=3)


def test_header_round_trip() -> None:
    h = event_header("removed", "expired", "w1", at=1700000000.25)
    assert parse_event_header(h) == ("removed", "expired", 1700000000.25, "w1")
    assert parse_event_header("added announce") is None
    assert parse_event_header("added announce notatime w") is None


def test_event_of_a_value_and_of_a_delete_marker() -> None:
    added = event_of_write(SUBJECTS, "acme", "web", event_header("added", "announce", "w", 5.0), encode(INST), b"",
                           41)
    assert added is not None
    assert added.subject == "disco.acme.changes.web" and added.revision == 41 and added.key == "acme.web.i1"
    ev = decode(added.data, ChangeEvent)
    assert (ev.type, ev.reason, ev.revision, ev.instance.port, ev.at) == ("added", "announce", 41, 80, 5.0)
    removed = event_of_write(SUBJECTS, "acme", "web", event_header("removed", "bye", "w", 6.0), None, encode(INST),
                             42)
    assert removed is not None
    ev = decode(removed.data, ChangeEvent)
    assert (ev.type, ev.reason, ev.instance.id) == ("removed", "bye", "i1")


def test_no_event_without_header_or_with_an_unreadable_record() -> None:
    assert event_of_write(SUBJECTS, "acme", "web", None, encode(INST), b"", 1) is None
    assert event_of_write(SUBJECTS, "acme", "web", event_header("removed", "bye", "w"), None, b"\xc1", 2) is None


async def test_a_tenants_writer_waits_for_room_while_its_events_are_unstored_never_for_long_nor_for_others(
) -> None:
    """Backpressure (EventPublisher.room): with ``max_unstored`` of a tenant's own events not yet stored, that
    tenant's writer waits until one is stored; if none is (a stream without a leader), it goes on after its
    patience; another tenant's writer never waits for it."""
    import anyio

    from services.aggregator.events import EventPublisher
    from services.aggregator.metrics import Metrics

    pub = EventPublisher(None, SUBJECTS, Metrics(), "w", max_unstored=2)  # type: ignore[arg-type]  # no store needed
    await pub.room("acme")  # nothing unstored: no wait
    pub._unstored("acme")
    pub._unstored("acme")
    released = anyio.Event()

    async def writer() -> None:
        await pub.room("acme", patience=60.0)
        released.set()

    with anyio.fail_after(10):
        await pub.room("globex", patience=60.0)  # another tenant: no wait at all
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer)
            await anyio.wait_all_tasks_blocked()
            assert not released.is_set()  # blocked: two of acme's events unstored
            pub._stored("acme")  # one is stored: room again
            await released.wait()
    assert pub.unstored == 1 and pub._unstored_by == {"acme": 1}
    for _ in range(4):
        pub._unstored("acme")
    with anyio.fail_after(10):
        await pub.room("acme", patience=0.05)  # nothing gets stored: it goes on anyway
