"""The pieces of a fast start (issue 11): ack positions read from the reply subject as nats-py reads them, the
collector paused for a load and resumed after it whatever happens, and memory trimmed once a burst is over."""

from __future__ import annotations

import gc

import pytest
from nats.aio.msg import Msg
from nats.errors import NotJSMessageError

from services.aggregator import memory
from services.aggregator.kvwatch import ack_position
from services.aggregator.memory import BulkLoad, Trimmer

V1 = "$JS.ACK.KV_view.ORDER123.1.4711.42.1700000000000000000.9"
V2 = "$JS.ACK.hub.ACCHASH.KV_view.ORDER123.1.4711.42.1700000000000000000.9.rand"


@pytest.mark.parametrize("reply", [V1, V2])
def test_ack_position_reads_what_the_metadata_reads(reply: str) -> None:
    meta = Msg.Metadata._from_reply(reply)
    assert ack_position(reply) == (meta.sequence.stream, meta.num_pending) == (4711, 9)


def test_ack_position_of_a_plain_reply_is_an_error() -> None:
    with pytest.raises(NotJSMessageError):
        ack_position("_INBOX.abc.def")


def test_the_collector_is_paused_for_a_load_and_resumed_after_it() -> None:
    assert gc.isenabled()
    with BulkLoad() as outer:
        assert not gc.isenabled()
        with BulkLoad() as inner:  # a second follower of the same process
            assert not gc.isenabled()
            inner.done(10)
        assert not gc.isenabled()  # the outer load still runs
        outer.done(10)
        assert gc.isenabled()
        outer.done(10)  # a second call changes nothing
        assert gc.isenabled()
    assert gc.isenabled()


def test_a_failed_load_resumes_the_collector() -> None:
    with pytest.raises(RuntimeError), BulkLoad():
        raise RuntimeError("the watch broke")
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off() -> None:
    gc.disable()
    try:
        with BulkLoad() as load:
            load.done(10)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_large_load_is_frozen_out_of_collections() -> None:
    before = gc.get_freeze_count()
    keep = [[k] for k in range(1000)]  # objects the collector tracks
    try:
        with BulkLoad() as load:
            load.done(BulkLoad.FREEZE_FROM)
        assert gc.get_freeze_count() >= before + len(keep)
    finally:
        gc.unfreeze()


def test_the_trimmer_waits_for_the_burst_to_end(monkeypatch: pytest.MonkeyPatch) -> None:
    trims: list[int] = []
    monkeypatch.setattr(memory, "trim", lambda: trims.append(1) or True)
    t = Trimmer(every=5_000, calm=1_000.0)
    now = 0.0
    for _ in range(10):  # 4,000 changes a second: a burst, no trim however many
        now += 0.5
        t.note(2_000, now)
    assert trims == []
    now += 3.0
    t.note(10, now)  # calm again: trimmed once
    assert trims == [1] and t.trims == 1
    now += 1.0
    t.note(10, now)
    t.quiet()  # too little since the last trim
    assert trims == [1]
    t.note(6_000, now + 0.1)
    t.quiet()  # a quiet moment after enough changes
    assert trims == [1, 1]


def test_trim_answers_whether_it_could_trim() -> None:
    assert memory.trim() in (True, False)
