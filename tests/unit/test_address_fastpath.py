"""The address validator's IPv4 fast path accepts exactly what ``ipaddress`` accepts (issue 11: no exception and
no address object per announce), and the validator as a whole keeps its old verdicts."""

from __future__ import annotations

import ipaddress
import itertools

import pytest
from pydantic import ValidationError

from bus.models import _IPV4, Instance

PARTS = ["0", "00", "01", "1", "9", "10", "99", "099", "100", "199", "255", "256", "260", "1000", "-1", "+1", " 1",
         "a", "\u0661"]


def ipv4(value: str) -> bool:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return False
    return True


def test_fast_path_is_exactly_ipaddress() -> None:
    candidates = [".".join(p) for p in itertools.product(PARTS, repeat=4)]
    candidates += ["1.2.3", "1.2.3.4.5", "1.2.3.4\n", "", "1..2.3"]
    assert [c for c in candidates if bool(_IPV4.fullmatch(c)) != ipv4(c)] == []


@pytest.mark.parametrize("address", ["10.0.0.1", "0.0.0.0", "255.255.255.255", "::1", "fe80::1", "db-1.internal",
                                     "1.2.3.256", "host."])
def test_addresses_taken(address: str) -> None:
    assert Instance(id="i", address=address, port=1).address == address


@pytest.mark.parametrize("address", ["-bad", "a..b", "1.2.3.4\n", "\u0661.2.3.4", "under_score", "x" * 64 + ".io"])
def test_addresses_refused(address: str) -> None:
    with pytest.raises(ValidationError):
        Instance(id="i", address=address, port=1)
