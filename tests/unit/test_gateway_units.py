"""The gateway's pure parts: outlier ejection (with a fake clock), routing, route options, wait durations."""

from __future__ import annotations

import pytest

from bus.balancing import Strategy
from services.gateway.catalog import parse_wait
from services.gateway.outlier import OutlierDetector
from services.gateway.routing import Router, RouteSettings, parse_route_option


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_ejection_after_consecutive_failures_grows_and_ends() -> None:
    clock = Clock()
    od = OutlierDetector(consecutive=3, base_time=2.0, max_time=5.0, clock=clock)
    key = ("acme", "web", "i1")
    assert not od.failure(key) and not od.failure(key)
    od.success(key)  # a success resets the run of failures
    assert not od.failure(key) and not od.failure(key)
    assert od.failure(key) and od.ejected(key) and od.ejected_count() == 1
    assert not od.failure(key)  # failures while out do not count again
    clock.now += 2.01
    assert not od.ejected(key)  # back on its own after base_time
    for _ in range(2):
        od.failure(key)
    assert od.failure(key)
    clock.now += 3.99
    assert od.ejected(key)  # second ejection: 2 x base_time
    clock.now += 0.02
    assert not od.ejected(key)
    for _ in range(2):
        for _ in range(3):
            od.failure(key)
        clock.now += 10
    assert od.ejections_total == 4
    od.forget(key)
    assert not od.ejected(key) and od.ejected_count() == 0
    with pytest.raises(ValueError):
        OutlierDetector(consecutive=0)


def test_routes_by_host_and_path() -> None:
    r = Router("svc.example.com")
    route = r.by_host("billing.acme.svc.example.com:8080", "/x?y=1")
    assert route is not None and (route.tenant, route.service, route.path, route.by_host) == (
        "acme", "billing", "/x?y=1", True)
    assert r.by_host("BILLING.Acme.svc.example.com.", "/") is not None
    for host in ("svc.example.com", "acme.svc.example.com", "a.b.acme.svc.example.com", "x.y.other.com",
                 "bad_name.acme.svc.example.com"):
        assert r.by_host(host, "/") is None, host
    assert Router(None).by_host("billing.acme.svc.example.com", "/") is None

    route = r.by_path("/acme/billing/invoices/42", "a=1")
    assert route is not None and (route.tenant, route.service, route.path) == ("acme", "billing", "/invoices/42?a=1")
    route = r.by_path("/acme/billing", "")
    assert route is not None and route.path == "/"
    for path in ("/acme", "/", "/v1/tenants", "/ui/x/y", "/Acme_/billing/x", "//billing/x"):
        assert r.by_path(path, "") is None, path


def test_route_options() -> None:
    base = RouteSettings()
    key, s = parse_route_option("acme/web:strategy=round_robin,prefer_zone=eu-1,timeout=2.5,retries=0", base)
    assert key == ("acme", "web")
    assert s == RouteSettings(strategy=Strategy.round_robin, prefer_zone="eu-1", timeout=2.5, retries=0)
    assert parse_route_option("acme/web", base)[1] == base
    for bad in ("acme:timeout=1", "acme/web:timeout=0", "acme/web:retries=99", "acme/web:strategy=fastest",
                "acme/web:colour=red", "acme/web:timeout"):
        with pytest.raises(ValueError):
            parse_route_option(bad, base)


def test_wait_durations() -> None:
    assert parse_wait("30s") == 30.0 and parse_wait("1m") == 60.0 and parse_wait("500ms") == 0.5
    assert parse_wait("2") == 2.0 and parse_wait("1000m") == 300.0
    for bad in ("", "soon", "-1s", "1h"):
        with pytest.raises(ValueError):
            parse_wait(bad)
