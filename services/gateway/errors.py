"""Every error the gateway answers itself is JSON: ``{"ok": false, "code": ..., "error": ...}`` (the bus's
error shape), with the HTTP status that says what happened."""

from __future__ import annotations

from aiohttp import web

__all__ = ["json_error"]


def json_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"ok": False, "code": code, "error": message}, status=status, headers=headers)
