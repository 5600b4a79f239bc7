"""Server-sent events of one tenant's change feed: ``GET /v1/tenants/<t>/events``.

The stream opens with ``event: snapshot`` (the whole view, as the catalog shows it), then one ``event: change``
per change (``id:`` is the view revision, ``data:`` the change event as JSON with the instance's ``age``), and a
comment every ``keepalive`` seconds so that proxies and browsers keep the connection. A listener too slow to
keep up is closed; ``EventSource`` reconnects and starts again from a fresh snapshot, so it never misses a change
silently.
"""

from __future__ import annotations

import json
import time

import anyio
from aiohttp import web

from services.gateway.catalog import Catalog

__all__ = ["add_event_routes"]

KEEPALIVE = 15.0


def add_event_routes(app: web.Application, catalog: Catalog, keepalive: float = KEEPALIVE) -> None:
    async def events(request: web.Request) -> web.StreamResponse:
        view = catalog.view_of(request)
        changes = view.listen()
        snap = view.snapshot_json()  # taken with no await since listen(): no change falls in between
        resp = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no",
        })
        resp.enable_chunked_encoding()
        async with changes:
            try:
                await resp.prepare(request)
                await resp.write(f"retry: 1000\nid: {snap['revision']}\nevent: snapshot\ndata: "
                                 f"{json.dumps(snap)}\n\n".encode())
                while True:
                    with anyio.move_on_after(keepalive) as scope:
                        ev = await changes.receive()
                    if scope.cancelled_caught:
                        await resp.write(b": keepalive\n\n")
                        continue
                    data = ev.model_dump(mode="json", exclude={"v"})
                    data["instance"].pop("v", None)
                    data["instance"]["age"] = round(max(time.time() - view.seen.get(
                        (ev.service, ev.instance.id), time.time()), 0.0), 3)
                    await resp.write(f"id: {ev.revision}\nevent: change\ndata: {json.dumps(data)}\n\n".encode())
            except (anyio.EndOfStream, anyio.ClosedResourceError, ConnectionResetError):
                pass  # the view stopped, dropped this slow listener, or the caller left
        return resp

    app.router.add_get("/v1/tenants/{tenant}/events", events)
