"""The read-only catalog: ``/v1/tenants[/<t>/services[/<svc>]]``, answered from the watched view (no NATS round
trip per request).

What is promised:

- ``ETag`` is the tenant's view revision; ``If-None-Match`` with it answers ``304`` with no body.
- Blocking queries (Consul's): ``?index=<revision>&wait=<duration>`` (``30s``, ``1m``, ``500ms`` or seconds;
  capped at 5 minutes, the default) returns as soon as the view passes ``index``, or after the wait
  with the same revision.
- Filters as :func:`bus.resolve`: ``tag`` (repeatable; all must be present), ``zone``, ``status`` (repeatable;
  default every status, as a catalog shows everything).
- Unknown tenant or service → ``404`` JSON; bad parameters → ``400`` JSON.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from aiohttp import web

from bus.models import Instance, Status
from services.gateway.errors import ERROR_HEADER, json_error
from services.gateway.keys import VISIBLE_TENANTS
from services.gateway.view import TenantView, instance_json

__all__ = ["Catalog", "parse_wait"]

MAX_WAIT = 300.0
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m)?$")


def parse_wait(value: str) -> float:
    """``30s``, ``1m``, ``500ms`` or plain seconds → seconds (capped at :data:`MAX_WAIT`); ValueError if bad."""
    m = _DURATION.fullmatch(value.strip())
    if m is None:
        raise ValueError(f"bad wait {value!r}: use e.g. 30s, 1m, 500ms")
    n = float(m.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[m.group(2)]
    return min(n, MAX_WAIT)


class _BadParam(Exception):
    pass


def _filters(request: web.Request) -> tuple[tuple[str, ...], str | None, tuple[Status, ...]]:
    q = request.query
    tags = tuple(q.getall("tag", []))
    zone = q.get("zone")
    try:
        status = tuple(Status(s) for s in q.getall("status", [])) or tuple(Status)
    except ValueError:
        raise _BadParam(f"bad status: use {', '.join(s.value for s in Status)}") from None
    return tags, zone, status


def _matches(inst: Instance, tags: tuple[str, ...], zone: str | None, status: tuple[Status, ...]) -> bool:
    return inst.status in status and (zone is None or inst.zone == zone) and all(t in inst.tags for t in tags)


class Catalog:
    """Request handlers over the tenants' views (``views``: tenant → :class:`TenantView`)."""

    def __init__(self, views: dict[str, TenantView]) -> None:
        self.views = views

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/tenants", self.tenants)
        app.router.add_get("/v1/tenants/{tenant}/services", self.services)
        app.router.add_get("/v1/tenants/{tenant}/services/{service}", self.service)

    def view_of(self, request: web.Request) -> TenantView:
        tenant = request.match_info["tenant"]
        view = self.views.get(tenant)
        if view is None:
            raise web.HTTPNotFound(text=_json_404(f"tenant {tenant!r} is not served by this gateway"),
                                   content_type="application/json", headers={ERROR_HEADER: "not_found"})
        return view

    async def tenants(self, request: web.Request) -> web.StreamResponse:
        allowed = request.get(VISIBLE_TENANTS)
        return web.json_response({"tenants": [
            {"name": t, "services": len(v.services), "instances": v.instance_count(), "revision": v.revision,
             "events_total": v.events_total, "events_per_s": v.events_per_second()}
            for t, v in sorted(self.views.items()) if allowed is None or t in allowed
        ]})

    async def _blocking(self, request: web.Request, view: TenantView) -> web.StreamResponse | None:
        """Wait as asked (``index``/``wait``); a 304 or 400 to answer at once, else None."""
        q = request.query
        try:
            wait = parse_wait(q.get("wait", "300s"))
            index = int(q["index"]) if "index" in q else None
            _filters(request)
        except (ValueError, _BadParam) as exc:
            return json_error(400, "bad_request", str(exc))
        if index is not None and index >= 0:
            await view.wait_past(index, wait)
        if request.headers.get("If-None-Match") in (f'"{view.revision}"', f'W/"{view.revision}"', "*"):
            return web.Response(status=304, headers={"ETag": f'"{view.revision}"'})
        return None

    def _reply(self, body: dict[str, Any], view: TenantView) -> web.Response:
        rev = view.revision
        body["revision"] = rev
        return web.json_response(body, headers={"ETag": f'"{rev}"', "X-Disco-Index": str(rev)})

    async def services(self, request: web.Request) -> web.StreamResponse:
        view = self.view_of(request)
        early = await self._blocking(request, view)
        if early is not None:
            return early
        tags, zone, status = _filters(request)
        out = []
        for name, insts in sorted(view.services.items()):
            matching = [i for i in insts.values() if _matches(i, tags, zone, status)]
            if not matching:
                continue
            out.append({
                "name": name, "instances": len(matching),
                "passing": sum(1 for i in matching if i.status is Status.passing),
                "zones": sorted({i.zone for i in matching}),
                "tags": sorted({t for i in matching for t in i.tags}),
            })
        return self._reply({"tenant": view.tenant, "services": out}, view)

    async def service(self, request: web.Request) -> web.StreamResponse:
        view = self.view_of(request)
        name = request.match_info["service"]
        early = await self._blocking(request, view)
        if early is not None:
            return early
        insts = view.services.get(name)
        if insts is None:
            return json_error(404, "not_found", f"service {name!r} of tenant {view.tenant!r} has no instance")
        tags, zone, status = _filters(request)
        now = time.time()
        out = [instance_json(i, view.seen.get((name, i.id)), now)
               for i in sorted(insts.values(), key=lambda i: i.id) if _matches(i, tags, zone, status)]
        return self._reply({"tenant": view.tenant, "service": name, "instances": out}, view)


def _json_404(message: str) -> str:
    return json.dumps({"ok": False, "code": "not_found", "error": message})
