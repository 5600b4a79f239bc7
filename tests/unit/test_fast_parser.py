"""The aggregator's faster protocol parser (services/aggregator/direct.py) against nats-py's own: any stream of
NATS server operations, cut into reads anywhere, gives the same calls in the same order, and the two can take over
from each other between any two reads."""

from __future__ import annotations

import itertools
import json
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.errors import ProtocolError
from nats.protocol.parser import Parser

from services.aggregator.direct import FastParser


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        assert type(subject) is bytes and type(reply) is bytes and type(data) is bytes
        self.calls.append(("msg", sid, subject, reply, data, headers))

    async def _process_ping(self) -> None:
        self.calls.append(("ping",))

    async def _process_pong(self) -> None:
        self.calls.append(("pong",))

    async def _process_info(self, info: dict[str, Any]) -> None:
        self.calls.append(("info", info))

    async def _process_err(self, err: str) -> None:
        self.calls.append(("err", err))


token = st.text("abcxyz0123._-$>*", min_size=1, max_size=12)
payload = st.binary(max_size=300)
header = st.builds(lambda k, v: b"NATS/1.0\r\n" + k.encode() + b": " + v.encode() + b"\r\n\r\n",
                   st.text("abcXYZ-", min_size=1, max_size=8), st.text("abc 012", max_size=10))


def _msg(subject: str, sid: int, reply: str | None, data: bytes) -> bytes:
    r = f" {reply}" if reply else ""
    return f"MSG {subject} {sid}{r} {len(data)}\r\n".encode() + data + b"\r\n"


def _hmsg(subject: str, sid: int, reply: str | None, hdr: bytes, data: bytes) -> bytes:
    r = f" {reply}" if reply else ""
    return f"HMSG {subject} {sid}{r} {len(hdr)} {len(hdr) + len(data)}\r\n".encode() + hdr + data + b"\r\n"


ops = st.one_of(
    st.builds(_msg, token, st.integers(1, 10**6), st.none() | token, payload),
    st.builds(_hmsg, token, st.integers(1, 10**6), st.none() | token, header, payload),
    st.sampled_from([b"PING\r\n", b"PONG\r\n", b"+OK\r\n", b"-ERR 'Stale Connection'\r\n"]),
    st.builds(lambda port: b"INFO " + json.dumps({"server_id": "x", "port": port}).encode() + b"\r\n",
              st.integers(1, 65535)),
)


def _feed(parsers: list[Any], stream: bytes, cuts: list[int]) -> None:
    async def main() -> None:
        points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
        for k, (a, b) in enumerate(itertools.pairwise(points)):
            await parsers[k % len(parsers)].parse(stream[a:b])

    anyio.run(main)


@settings(max_examples=300, deadline=None)
@given(st.lists(ops, max_size=40), st.lists(st.integers(0, 20_000), max_size=30), st.booleans())
def test_same_calls_as_nats_py_whatever_the_reads(items: list[bytes], cuts: list[int], alternate: bool) -> None:
    stream = b"".join(items)
    ref, fast = Recorder(), Recorder()
    _feed([Parser(ref)], stream, cuts)
    if alternate:  # one parser object whose class changes between reads: state carries over both ways
        p = Parser(fast)

        class Switching:
            async def parse(self, data: bytes) -> None:
                p.__class__ = FastParser if p.__class__ is Parser else Parser
                await p.parse(data)

        _feed([Switching()], stream, cuts)
    else:
        _feed([FastParser(fast)], stream, cuts)
    assert fast.calls == ref.calls


def test_a_malformed_message_line_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        anyio.run(FastParser(Recorder()).parse, b"MSG a b 3\r\nabc\r\n")
    with pytest.raises(ProtocolError):
        anyio.run(FastParser(Recorder()).parse, b"HMSG a 1 x y z w 3\r\nabc\r\n")
