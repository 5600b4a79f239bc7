"""The reverse proxy: forward one request to an instance the picker chose, streaming both bodies.

What is promised:

- **Streaming.** Request and response bodies are passed on in chunks as they arrive, never held whole: memory
  per call stays at a few chunks whatever the body size (a response of known length up to one chunk, 64 KiB, is
  read first and sent with its head in one write). WebSocket upgrades are passed through (frames both ways
  until either side closes).
- **Headers.** Hop-by-hop headers (``Connection`` and the ones it names, ``Keep-Alive``, ``TE``, ``Trailer``,
  ``Transfer-Encoding``, ``Upgrade``, ``Proxy-*``) are dropped both ways; ``X-Forwarded-For`` is appended to,
  ``X-Forwarded-Proto``/``-Host`` set when absent, and ``Via`` appended to.
- **Failures.** A connect failure is retried on another instance for idempotent methods, up to the route's
  ``retries``; connect failures, timeouts and 5xx answers count towards ejection (:mod:`outlier`). The caller gets
  ``503`` JSON when no instance is live, ``504`` JSON when the upstream does not answer within the route's
  timeout, ``502`` JSON when it fails otherwise — never a traceback. Once the response has started, a failure can
  only cut the connection.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import aiohttp
import anyio
from aiohttp import WSMsgType, web
from multidict import CIMultiDict, CIMultiDictProxy

from bus.errors import DiscoError, NoInstances
from bus.resolver import Lease
from services.gateway.errors import json_error
from services.gateway.keys import TOKEN_USED
from services.gateway.outlier import OutlierDetector
from services.gateway.picking import Picker
from services.gateway.routing import Route, RouteSettings

__all__ = ["Proxy"]

log = logging.getLogger("disco.gateway")

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te", "trailer",
    "trailers", "transfer-encoding", "upgrade",
})
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
CHUNK = 64 * 1024
VIA = "1.1 disco-gateway"
#: failures before anything was sent: safe to try another instance
CONNECT_FAILURES = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)

#: told how long the first pick of a call took (seconds; the resolver's opening included on first use)
PickObserver = Callable[[float], None]


def _strip(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> CIMultiDict[str]:
    named = {t.strip().lower() for v in headers.getall("Connection", []) for t in v.split(",")}
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in HOP_BY_HOP and k.lower() not in named)


def forward_headers(request: web.Request) -> CIMultiDict[str]:
    """The request's headers as the upstream sees them."""
    h = _strip(request.headers)
    h.pop("Host", None)
    if request.get(TOKEN_USED):
        h.pop("Authorization", None)  # the gateway's own bearer token is not the upstream's business
    peer = request.remote or ""
    prior = request.headers.get("X-Forwarded-For")
    h["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    h.setdefault("X-Forwarded-Proto", request.scheme)
    h.setdefault("X-Forwarded-Host", request.host)
    via = request.headers.get("Via")
    h["Via"] = f"{via}, {VIA}" if via else VIA
    return h


class Proxy:
    """Forwards calls; owns the upstream HTTP client (one connection pool for every instance)."""

    def __init__(self, picker: Picker, outliers: OutlierDetector, observe_pick: PickObserver | None = None,
                 connect_timeout: float = 2.0) -> None:
        self.picker = picker
        self.outliers = outliers
        self.observe_pick = observe_pick
        self.connect_timeout = connect_timeout
        self.retries_total = 0
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Proxy:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=None, enable_cleanup_closed=True),
            auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(), skip_auto_headers=("User-Agent",),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()

    async def handle(self, request: web.Request, route: Route, settings: RouteSettings) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            res = await self.picker.resolver(route.tenant, route.service, settings)
        except DiscoError as exc:
            return json_error(503, exc.code, f"cannot look up {route.service!r}: {exc}")
        websocket = request.headers.get("Upgrade", "").lower() == "websocket"
        attempts = 1 + (settings.retries if request.method in IDEMPOTENT or websocket else 0)
        tried: set[str] = set()
        last_error = ""
        for attempt in range(attempts):
            try:
                lease = self.picker.lease(res, tried)
                if self.observe_pick is not None and not attempt:
                    self.observe_pick(time.perf_counter() - started)
            except NoInstances as exc:
                if tried:
                    return json_error(502, "upstream_failed", f"{last_error} (tried {len(tried)} instances)")
                return json_error(503, exc.code, str(exc))
            inst = lease.instance
            key = (route.tenant, route.service, inst.id)
            tried.add(inst.id)
            if attempt:
                self.retries_total += 1
            url = f"http://{_host(inst.address)}:{inst.port}{route.path}"
            try:
                if websocket:
                    return await self._websocket(request, url, lease, key)
                return await self._forward(request, url, settings, lease, key)
            except CONNECT_FAILURES as exc:
                lease.release()
                self.outliers.failure(key)
                last_error = f"cannot connect to instance {inst.id} ({inst.address}:{inst.port}): {_why(exc)}"
                log.info("%s/%s: %s", route.tenant, route.service, last_error)
                continue
        return json_error(502, "upstream_failed", f"{last_error} (tried {len(tried)} instances)")

    async def _forward(self, request: web.Request, url: str, settings: RouteSettings, lease: Lease,
                       key: tuple[str, str, str]) -> web.StreamResponse:
        assert self.session is not None
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout, sock_read=settings.timeout)
        headers = forward_headers(request)
        if request.headers.get("Transfer-Encoding", "").lower() == "chunked":
            headers.pop("Content-Length", None)
        body = request.content if request.body_exists else None
        with lease:
            try:
                upstream = await self.session.request(
                    request.method, url, headers=headers, data=body, allow_redirects=False, timeout=timeout,
                )
            except CONNECT_FAILURES:
                raise  # nothing was sent: the caller may try another instance
            except TimeoutError:
                self.outliers.failure(key)
                return json_error(504, "timeout", f"instance {key[2]} did not answer within {settings.timeout} s")
            except aiohttp.ClientError as exc:
                self.outliers.failure(key)
                return json_error(502, "upstream_failed", f"instance {key[2]} failed: {exc or type(exc).__name__}")
            async with upstream:
                if upstream.status >= 500:
                    self.outliers.failure(key)
                else:
                    self.outliers.success(key)
                headers = _strip(upstream.headers)
                via = upstream.headers.get("Via")
                headers["Via"] = f"{via}, {VIA}" if via else VIA
                length = upstream.content_length
                if length is not None and length <= CHUNK and request.method != "HEAD":
                    # a small body of known length: one chunk at most, sent with the head in one write
                    try:
                        small = await upstream.read()
                    except (TimeoutError, aiohttp.ClientError) as exc:
                        self.outliers.failure(key)
                        return json_error(502, "upstream_failed", f"instance {key[2]} failed mid-body: {exc}")
                    headers.pop("Content-Length", None)
                    return web.Response(status=upstream.status, reason=upstream.reason, body=small,
                                        headers=headers)
                resp = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
                try:
                    await resp.prepare(request)
                    if request.method != "HEAD":
                        async for chunk in upstream.content.iter_chunked(CHUNK):
                            await resp.write(chunk)
                    await resp.write_eof()
                except ConnectionResetError:
                    pass  # the caller went away
                except (TimeoutError, aiohttp.ClientError) as exc:
                    # the response had started: all that can be done is to cut the caller's connection
                    log.info("call to %s cut mid-response: %s", url, exc or type(exc).__name__)
                    self.outliers.failure(key)
                    if request.transport is not None:
                        request.transport.close()
                return resp

    async def _websocket(self, request: web.Request, url: str, lease: Lease,
                         key: tuple[str, str, str]) -> web.StreamResponse:
        assert self.session is not None
        headers = forward_headers(request)
        for h in ("Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Extensions",
                  "Sec-WebSocket-Protocol"):
            headers.pop(h, None)
        offered = request.headers.get("Sec-WebSocket-Protocol", "")
        protocols = tuple(p.strip() for p in offered.split(",") if p.strip())
        with lease:
            try:
                up = await self.session.ws_connect(url, headers=headers, protocols=protocols, max_msg_size=0,
                                                   timeout=aiohttp.ClientWSTimeout(ws_close=5.0))
            except CONNECT_FAILURES:
                raise
            except aiohttp.ClientError as exc:
                self.outliers.failure(key)
                return json_error(502, "upstream_failed", f"instance {key[2]} refused the WebSocket: {exc}")
            self.outliers.success(key)
            down = web.WebSocketResponse(protocols=(up.protocol,) if up.protocol else (), max_msg_size=0)
            try:
                await down.prepare(request)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_pump, down, up, tg.cancel_scope)
                    tg.start_soon(_pump, up, down, tg.cancel_scope)
            finally:
                with anyio.CancelScope(shield=True):
                    await up.close()
                    await down.close()
            return down


async def _pump(src: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
                dst: web.WebSocketResponse | aiohttp.ClientWebSocketResponse, scope: anyio.CancelScope) -> None:
    """Copy messages from ``src`` to ``dst`` until ``src`` closes; then end both directions."""
    try:
        async for msg in src:
            if msg.type is WSMsgType.TEXT:
                await dst.send_str(msg.data)
            elif msg.type is WSMsgType.BINARY:
                await dst.send_bytes(msg.data)
    except (ConnectionResetError, aiohttp.ClientError):
        pass
    scope.cancel()


def _why(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return exc.strerror or str(exc)
    return "connect timed out"


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address and not address.startswith("[") else address
