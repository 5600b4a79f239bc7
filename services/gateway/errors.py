"""Every error the gateway answers itself is JSON: ``{"ok": false, "code": ..., "error": ...}`` (the bus's
error shape), with the HTTP status that says what happened."""

from __future__ import annotations

from aiohttp import web

__all__ = ["ERROR_HEADER", "json_error"]


#: the header that repeats an error's code (for logs and metrics that do not parse bodies)
ERROR_HEADER = "X-Disco-Error"


def json_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"ok": False, "code": code, "error": message}, status=status,
                             headers={**(headers or {}), ERROR_HEADER: code})
