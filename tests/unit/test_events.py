"""The change event a KV write carries (services/aggregator/events.py): header round trip and the event built from
a value or a delete marker's body."""

from __future__ import annotations

from bus.codec import decode, encode
from bus.models import ChangeEvent, Instance
from bus.subjects import Subjects
from services.aggregator.events import event_header, event_of_write, parse_event_header

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
