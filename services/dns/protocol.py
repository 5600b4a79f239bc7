"""From a query's bytes to the answer's bytes (dnspython for the wire format), whatever the bytes are.

Promises:

- a packet shorter than a DNS header, or one that is itself a response (QR set), gets no answer (counted as
  dropped): answering either would let two servers loop, or make this one a reflector;
- a packet that does not parse, or asks other than exactly one question, gets ``FORMERR`` (with its ID); an opcode
  other than QUERY ``NOTIMP``; an EDNS version other than 0 ``BADVERS``; a class other than IN, a zone transfer, or a
  name outside the zone ``REFUSED``;
- answers are rendered by dnspython once and reused: for each question (the query's bytes but its ID, per
  transport) up to ``shuffles`` renderings are kept, each with its own weighted order, and every answer is one of
  them picked at random; all are dropped on any change of a view (:meth:`Responder.invalidate`), so an answer is
  never older than the view. ``shuffles=0`` renders every answer afresh;
- over UDP an answer is at most 512 bytes, or the EDNS(0) buffer size the query offers, capped by
  ``max_udp_size``; one that does not fit loses its additional section first, and then is sent empty with the TC
  bit, so the client asks again over TCP, where answers go up to 65,535 bytes.
"""

from __future__ import annotations

import struct

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype

from services.dns.metrics import Stats
from services.dns.zone import Zone

__all__ = ["TCP_MAX", "Responder"]

TCP_MAX = 65535
_MAX_RENDERED = 10_000
_HEADER = struct.Struct("!HHHHHH")
_REFUSED_TYPES = frozenset({dns.rdatatype.AXFR, dns.rdatatype.IXFR})


class Responder:
    """Answers queries for a :class:`~services.dns.zone.Zone` and counts them in :class:`Stats`."""

    def __init__(self, zone: Zone, stats: Stats, *, max_udp_size: int = 4096, shuffles: int = 8) -> None:
        self.zone = zone
        self.stats = stats
        self.max_udp_size = max_udp_size
        self.shuffles = shuffles
        self._rng = zone.rng
        #: (transport, query bytes after the ID) -> renderings: (answer bytes after the ID, counter key, truncated)
        self._rendered: dict[tuple[str, bytes], list[tuple[bytes, tuple[str, str, str], bool]]] = {}
        self._last: tuple[tuple[str, str, str], bool] | None = None

    def invalidate(self) -> None:
        """A view changed: forget every rendered answer."""
        self._rendered.clear()

    def respond(self, wire: bytes, transport: str) -> bytes | None:
        """The answer to ``wire`` received over ``transport`` (``"udp"`` or ``"tcp"``), or None to send nothing."""
        if not self.shuffles:
            return self._respond(wire, transport)
        key = (transport, wire[2:])
        kept = self._rendered.get(key)
        if kept is not None and len(kept) >= self.shuffles:
            body, counter, truncated = kept[self._rng.randrange(len(kept))]
            self.stats.queries[counter] += 1
            if truncated:
                self.stats.truncated[transport] += 1
            return wire[:2] + body
        self._last = None
        out = self._respond(wire, transport)
        if out is not None and self._last is not None:
            if kept is None:
                if len(self._rendered) >= _MAX_RENDERED:
                    self._rendered.clear()  # bounded: a flood of distinct questions cannot grow it
                kept = self._rendered[key] = []
            kept.append((out[2:], *self._last))
        return out

    def _respond(self, wire: bytes, transport: str) -> bytes | None:
        if len(wire) < _HEADER.size:
            self.stats.dropped["short"] += 1
            return None
        qid, flags = _HEADER.unpack_from(wire)[:2]
        if flags & dns.flags.QR:
            self.stats.dropped["response"] += 1
            return None
        try:
            query = dns.message.from_wire(wire, ignore_trailing=False)
        except dns.message.UnknownTSIGKey:
            return self._header_only(qid, flags, dns.rcode.REFUSED, transport)
        except Exception:  # dnspython raises many types for bad input (FormError, ValueError, UnicodeError...)
            return self._header_only(qid, flags, dns.rcode.FORMERR, transport)
        if query.opcode() != dns.opcode.QUERY:
            return self._header_only(qid, flags, dns.rcode.NOTIMP, transport)
        if len(query.question) != 1:
            return self._header_only(qid, flags, dns.rcode.FORMERR, transport)
        question = query.question[0]
        qtype = question.rdtype
        response = dns.message.make_response(query, our_payload=self.max_udp_size)
        if query.edns > 0:
            response.use_edns(0, payload=self.max_udp_size)
            response.set_rcode(dns.rcode.BADVERS)
            return self._finish(response, query, qtype, transport)
        if question.rdclass not in (dns.rdataclass.IN, dns.rdataclass.ANY) or qtype in _REFUSED_TYPES:
            response.set_rcode(dns.rcode.REFUSED)
            return self._finish(response, query, qtype, transport)
        answer = self.zone.lookup(question.name, qtype)
        response.set_rcode(dns.rcode.Rcode(answer.rcode))
        if answer.authoritative:
            response.flags |= dns.flags.AA
        response.answer = answer.answer
        response.authority = answer.authority
        response.additional = answer.additional
        return self._finish(response, query, qtype, transport)

    def _limit(self, query: dns.message.Message, transport: str) -> int:
        if transport != "udp":
            return TCP_MAX
        if query.edns < 0:
            return 512
        return max(512, min(query.payload, self.max_udp_size))

    def _finish(self, response: dns.message.Message, query: dns.message.Message, qtype: int, transport: str) -> bytes:
        limit = self._limit(query, transport)
        rcode = response.rcode()
        counter = self.stats.answered(transport, qtype, rcode)
        keep = rcode != dns.rcode.SERVFAIL  # a tenant not listed yet: its next answer differs, no change said so
        try:
            out: bytes = response.to_wire(max_size=limit, want_shuffle=False)
            self._last = (counter, False) if keep else None
            return out
        except dns.exception.TooBig:
            pass
        if response.additional:
            response.additional = []  # glue is optional: drop it before truncating the answer
            try:
                out = response.to_wire(max_size=limit, want_shuffle=False)
                self._last = (counter, False) if keep else None
                return out
            except dns.exception.TooBig:
                pass
        response.answer = []
        response.authority = []
        response.flags |= dns.flags.TC
        self.stats.truncated[transport] += 1
        self._last = (counter, True) if keep else None
        return response.to_wire(max_size=limit, want_shuffle=False)

    def _header_only(self, qid: int, flags: int, rcode: int, transport: str) -> bytes:
        """An answer with no sections (the query could not be read, or is not something to read further)."""
        opcode_bits = flags & 0x7800
        out_flags = dns.flags.QR | opcode_bits | (flags & dns.flags.RD) | (rcode & 0xF)
        self.stats.answered(transport, None, rcode)
        return _HEADER.pack(qid, out_flags, 0, 0, 0, 0)
