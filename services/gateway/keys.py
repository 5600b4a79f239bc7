"""Typed keys of what the gateway's middleware leaves on a request for its handlers."""

from __future__ import annotations

from aiohttp import web

__all__ = ["TOKEN_USED", "VISIBLE_TENANTS"]

#: the caller presented the gateway's bearer token (the proxy does not pass it upstream)
TOKEN_USED = web.RequestKey("disco_token_used", bool)
#: the tenants ``/v1/tenants`` may list to this caller
VISIBLE_TENANTS = web.RequestKey("disco_visible_tenants", set[str])
