"""``disco gateway``: the proxy, the catalog, the events, the dashboard and the metrics in one aiohttp server.

::

    async with anyio.create_task_group() as tg:
        gw = Gateway({"acme": conn}, GatewaySettings(port=8080, domain="svc.local"))
        await tg.start(gw.run)        # serving once started; cancel the group to stop

Requests are dispatched in this order: a ``Host`` under ``--domain`` is proxied whatever its path; then the
gateway's own paths (``/v1/…``, ``/openapi.json``, ``/metrics``, ``/ui/…``, ``/healthz``); then
``/<tenant>/<svc>/…`` is proxied. Everything the gateway answers itself is JSON (errors included), never a
traceback. Only the tenants given (one connection each, made with that tenant's credentials) are served; a
tenant with a token needs ``Authorization: Bearer <token>`` (or ``?token=`` on the catalog, for ``EventSource``).
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
from aiohttp import web
from anyio.abc import TaskStatus

import bus
from services.gateway.catalog import Catalog
from services.gateway.errors import ERROR_HEADER, json_error
from services.gateway.events import add_event_routes
from services.gateway.keys import TOKEN_USED, VISIBLE_TENANTS
from services.gateway.metrics import CONTENT_TYPE, GatewayMetrics
from services.gateway.outlier import OutlierDetector
from services.gateway.picking import Picker
from services.gateway.proxy import Proxy
from services.gateway.routing import RESERVED, Route, Router
from services.gateway.server import JsonErrorRunner
from services.gateway.settings import GatewaySettings
from services.gateway.view import TenantView

__all__ = ["Gateway"]

log = logging.getLogger("disco.gateway")

HERE = Path(__file__).parent
#: metrics label of a tenant or service the gateway does not know (labels stay bounded whatever callers send)
UNKNOWN = "_unknown"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Gateway:
    """One gateway over ``conns`` (tenant → its connection). ``await tg.start(gw.run)``; :attr:`port` is the
    port bound (useful with port 0)."""

    def __init__(self, conns: dict[str, bus.Connection], settings: GatewaySettings | None = None) -> None:
        if not conns:
            raise ValueError("a gateway serves at least one tenant")
        self.conns = conns
        self.settings = settings or GatewaySettings()
        s = self.settings
        self.router = Router(s.domain, s.routes, s.overrides)
        self.outliers = OutlierDetector(s.outlier.consecutive, s.outlier.base_time, s.outlier.max_time)
        self.views = {t: TenantView(c, t, on_removed=self._forget(t)) for t, c in conns.items()}
        self.catalog = Catalog(self.views)
        self.metrics = GatewayMetrics()
        self.port = s.port
        self.proxy: Proxy | None = None

    def _forget(self, tenant: str) -> Callable[[str, str], None]:
        def forget(service: str, instance_id: str) -> None:
            self.outliers.forget((tenant, service, instance_id))

        return forget

    # -- access -----------------------------------------------------------------------------------------------
    def _token_ok(self, request: web.Request, tenant: str, query_ok: bool) -> bool:
        want = self.settings.tokens.get(tenant)
        if want is None:
            return True
        auth = request.headers.get("Authorization", "")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if not given and query_ok:
            given = request.query.get("token", "")
        ok = bool(given) and hmac.compare_digest(given.encode(), want.encode())
        if ok:
            request[TOKEN_USED] = True
        return ok

    def _denied(self, tenant: str) -> web.Response:
        return json_error(401, "unauthorized", f"tenant {tenant!r} needs a bearer token",
                          headers={"WWW-Authenticate": f'Bearer realm="{tenant}"'})

    # -- dispatch ---------------------------------------------------------------------------------------------
    async def _proxy(self, request: web.Request, route: Route) -> web.StreamResponse:
        started = time.perf_counter()
        resp: web.StreamResponse | None = None
        try:
            resp = await self._route(request, route)
            return resp
        finally:
            known = route.tenant in self.views
            tenant = route.tenant if known else UNKNOWN
            service = route.service if known and route.service in self.views[route.tenant].services else UNKNOWN
            status = resp.status if resp is not None else 500
            error = resp.headers.get(ERROR_HEADER) if resp is not None else "internal"
            self.metrics.observe(tenant, service, status, time.perf_counter() - started, error)

    async def _route(self, request: web.Request, route: Route) -> web.StreamResponse:
        if route.tenant not in self.conns:
            return json_error(404, "not_found", f"tenant {route.tenant!r} is not served by this gateway")
        if not self._token_ok(request, route.tenant, query_ok=False):
            return self._denied(route.tenant)
        view = self.views[route.tenant]
        if route.service not in view.services:
            return json_error(503, "no_instances",
                              f"service {route.service!r} of tenant {route.tenant!r} has no live instance")
        assert self.proxy is not None
        return await self.proxy.handle(request, route, self.router.settings(route.tenant, route.service))

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            route = self.router.by_host(request.host, request.raw_path)
            if route is not None:
                return await self._proxy(request, route)
            tenant = request.match_info.get("tenant")
            if tenant is not None and tenant in self.conns and not self._token_ok(request, tenant, query_ok=True):
                return self._denied(tenant)
            if request.path == "/v1/tenants":
                request[VISIBLE_TENANTS] = {t for t in self.conns if self._token_ok(request, t, query_ok=True)}
            return await handler(request)
        except web.HTTPException as exc:
            if exc.content_type == "application/json" or exc.status < 400:
                raise
            code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "bad_request")
            return json_error(exc.status, code, exc.reason)
        except ConnectionResetError:
            raise  # the caller left
        except Exception:
            log.exception("gateway failed on %s %s", request.method, request.path)
            return json_error(500, "internal", "the gateway failed on this request (see its log)")

    async def _path_proxy(self, request: web.Request) -> web.StreamResponse:
        route = self.router.by_path(request.raw_path.split("?", 1)[0], request.query_string)
        if route is None:
            first = request.path.split("/", 2)[1]
            if first in RESERVED and request.method not in ("GET", "HEAD"):
                return json_error(405, "method_not_allowed", f"{request.method} is not allowed here")
            return json_error(404, "not_found", "no route: use /<tenant>/<service>/... or <service>.<tenant>."
                              f"{self.settings.domain or '<domain>'}")
        return await self._proxy(request, route)

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=1024**2)
        self.catalog.add_routes(app)
        add_event_routes(app, self.catalog)

        async def openapi(request: web.Request) -> web.StreamResponse:
            return web.FileResponse(HERE / "openapi.json", headers={"Content-Type": "application/json"})

        async def metrics(request: web.Request) -> web.StreamResponse:
            return web.Response(body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

        async def healthz(request: web.Request) -> web.StreamResponse:
            # no tenant names here: callers without a token must not learn which tenants exist
            stale = self.proxy.picker.stale() if self.proxy is not None else 0
            return web.json_response({"ok": True, "tenants": len(self.conns), "stale_resolvers": stale})

        async def home(request: web.Request) -> web.StreamResponse:
            raise web.HTTPFound("/ui/")

        async def ui(request: web.Request) -> web.StreamResponse:
            return web.FileResponse(HERE / "dashboard" / "index.html")

        app.router.add_get("/openapi.json", openapi)
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/ui/", ui)
        app.router.add_static("/ui/static/", HERE / "dashboard", follow_symlinks=False)
        app.router.add_get("/", home)
        app.router.add_route("*", "/{tail:.*}", self._path_proxy)
        return app

    # -- life -------------------------------------------------------------------------------------------------
    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Follow the tenants' views and serve HTTP until cancelled; started once it listens."""
        s = self.settings
        async with anyio.create_task_group() as tg:
            for view in self.views.values():
                await tg.start(view.run)
            picker = Picker(self.conns, tg, self.outliers)
            async with Proxy(picker, self.outliers, self.metrics.pick.observe, s.connect_timeout) as proxy:
                self.proxy = proxy
                self.metrics.bind(self.views, self.outliers, lambda: proxy.retries_total, picker.opened,
                                  picker.stale)
                runner = JsonErrorRunner(self.application(), access_log=None, handle_signals=False,
                                       shutdown_timeout=1.0)
                await runner.setup()
                try:
                    site = web.TCPSite(runner, s.host, s.port, reuse_address=True)
                    await site.start()
                    server = getattr(site, "_server", None)
                    if server is not None and server.sockets:
                        self.port = server.sockets[0].getsockname()[1]
                    log.info("gateway listening on http://%s:%d for tenants %s", s.host, self.port,
                             ", ".join(sorted(self.conns)))
                    task_status.started()
                    await anyio.sleep_forever()
                finally:
                    with anyio.CancelScope(shield=True):
                        await runner.cleanup()
                        tg.cancel_scope.cancel()
