"""The aiohttp server with one change: a request aiohttp cannot parse (bad request line, bad header, bad
``Content-Length``...) is answered with the gateway's JSON error shape instead of aiohttp's plain text, and
logged at debug level (any internet-facing port sees such requests all day; they are not the gateway's errors).

aiohttp has no public hook for this: :class:`JsonErrorRunner` swaps in a request handler class that overrides
``handle_error`` (aiohttp's documented-by-code contract: return the response, which is sent and the connection
closed).
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

__all__ = ["JsonErrorRunner"]

log = logging.getLogger("disco.gateway")


class _JsonErrors(RequestHandler):
    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        if status >= 500:
            log.error("gateway failed on a request from %s", request.remote, exc_info=exc)
        else:
            log.debug("unparsable request from %s: %s", request.remote, exc)
        if request.writer.output_size > 0:
            raise ConnectionError("the response had started: cannot send an error")
        code = "internal" if status >= 500 else "bad_request"
        text = HTTPStatus(status).phrase if status >= 500 else (getattr(exc, "message", None) or message or
                                                               HTTPStatus(status).phrase)
        first_line = str(text).strip().splitlines()[0] if str(text).strip() else HTTPStatus(status).phrase
        resp = web.Response(status=status, text=json.dumps({"ok": False, "code": code, "error": first_line}),
                            content_type="application/json")
        resp.force_close()
        return resp


class _JsonErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrors(self, loop=self._loop, **self._kwargs)


class JsonErrorRunner(web.AppRunner):
    """A :class:`web.AppRunner` whose unparsable requests get JSON errors."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _JsonErrorServer
        return server
