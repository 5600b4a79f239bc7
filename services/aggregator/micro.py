"""The aggregator as a NATS micro service, so that NATS tooling sees it: ``nats micro ls``, ``nats micro info
disco-aggregator`` and ``nats micro stats disco-aggregator`` list every running aggregator with its id, version
and metadata (prefix, bucket, protocol version), and ``disco status``/``disco stats`` read the same replies.

What is promised:

- every aggregator registers one service named :data:`SERVICE_NAME` (version: the package version) with one
  endpoint ``status`` on ``<prefix>._sys.status``; each aggregator is in a queue group of its own there, so a
  request gathers the status of every aggregator (like ``$SRV.STATS``), decoded JSON (:func:`status_of`);
- the stats of that endpoint carry the same status as ``data``, so ``nats micro stats`` shows the view revision,
  the read lag, the instance count and the counters;
- registration is best-effort: a NATS server or account that refuses ``$SRV.*`` subjects costs a warning, never
  the aggregator.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Sized
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version
from typing import Any, Protocol

import anyio
import nats.micro
from nats.micro.request import Request
from nats.micro.service import EndpointStats, Service, ServiceConfig

from bus.connection import Connection
from services.aggregator.metrics import Metrics
from services.aggregator.settings import AggregatorSettings
from services.aggregator.view import LiveView


class Aggregator(Protocol):
    """What the micro service reads of an aggregator (services/aggregator/service.py) — a protocol, so that the
    aggregator can import this module without a circle."""

    @property
    def conn(self) -> Connection: ...
    @property
    def settings(self) -> AggregatorSettings: ...
    @property
    def view(self) -> LiveView: ...
    @property
    def metrics(self) -> Metrics: ...
    @property
    def live(self) -> Sized: ...
    @property
    def lag(self) -> float: ...
    @property
    def ready(self) -> anyio.Event: ...
    def behind(self, now: float) -> bool: ...

__all__ = ["PROTOCOL_VERSION", "SERVICE_NAME", "micro_service", "package_version", "status_of"]

log = logging.getLogger("disco.aggregator")

SERVICE_NAME = "disco-aggregator"
#: the wire protocol version every message carries (``"v": 1``, bus/PROTOCOL.md)
PROTOCOL_VERSION = 1


def package_version() -> str:
    """The installed version of the ``disco`` distribution ("0.0.0" when run from a bare checkout)."""
    try:
        return dist_version("disco")
    except PackageNotFoundError:
        return "0.0.0"


def status_of(agg: Aggregator, service_id: str = "", started: float | None = None) -> dict[str, Any]:
    """One aggregator's status, as JSON-ready data (the shape documented in the README)."""
    tenants = agg.view.tenants()
    counters: dict[str, int] = {}
    for (name, _tenant), value in agg.metrics.counters.items():
        counters[name] = counters.get(name, 0) + value
    return {
        "id": service_id,
        "version": package_version(),
        "protocol": PROTOCOL_VERSION,
        "started": _iso(started) if started is not None else None,
        "prefix": agg.settings.prefix,
        "bucket": agg.settings.view_bucket,
        "shard": agg.settings.shard,  # "K/N", or None: every tenant (shard.py)
        "ready": agg.ready.is_set(),
        "revision": agg.view.position,
        "instances": len(agg.live),
        "tenants": len(tenants),
        "read_lag": round(agg.lag, 6),
        "behind": agg.behind(time.monotonic()),
        "counters": dict(sorted(counters.items())),
    }


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@asynccontextmanager
async def micro_service(agg: Aggregator) -> AsyncIterator[Service | None]:
    """Register ``agg`` as a micro service for the duration of the block (None when the server refused)."""
    holder: dict[str, str] = {}
    started = time.time()

    def stats_handler(_endpoint: EndpointStats) -> Any:
        return status_of(agg, holder.get("id", ""), started)

    config = ServiceConfig(
        name=SERVICE_NAME, version=package_version(),
        description="disco aggregator: live view of announced instances, resolves and change events",
        metadata={"prefix": agg.settings.prefix, "bucket": agg.settings.view_bucket, "protocol": str(PROTOCOL_VERSION)},
        stats_handler=stats_handler,
    )
    svc: Service | None = None
    try:
        svc = await nats.micro.add_service(agg.conn.nc, config)
        holder["id"] = svc.id

        async def on_status(req: Request) -> None:
            await req.respond(json.dumps(status_of(agg, svc.id if svc else "", started)).encode())

        await svc.add_endpoint(
            name="status", handler=on_status, subject=f"{agg.settings.prefix}._sys.status",
            queue_group=f"disco-status-{svc.id}",  # a group of its own: every aggregator answers
        )
    except Exception as exc:
        log.warning("not registered as a NATS micro service (%s): `nats micro ls` and `disco status` will not "
                    "show this aggregator", exc or type(exc).__name__)
        svc = None
    try:
        yield svc
    finally:
        if svc is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
                try:
                    await svc.stop()
                except Exception:
                    pass
