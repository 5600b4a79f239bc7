"""``disco gateway``: reverse-proxy discovery and disco's HTTP face (catalog, events, dashboard, metrics).

Modules, one concept each: :mod:`routing` (where a request goes), :mod:`picking` (which instance: resolvers
minus ejected instances), :mod:`outlier` (passive health), :mod:`proxy` (forwarding, streaming, WebSocket),
:mod:`view` (a tenant's watched view), :mod:`catalog` (JSON API), :mod:`events` (SSE), :mod:`metrics`
(Prometheus), :mod:`app` (the aiohttp server wiring them), :mod:`server` (JSON answers to unparsable HTTP),
:mod:`settings`, :mod:`errors` and :mod:`keys` (small shared pieces), ``dashboard/`` and ``openapi.json``
(static files, served as they are).
"""

from services.gateway.app import Gateway
from services.gateway.routing import RouteSettings
from services.gateway.settings import GatewaySettings, OutlierSettings

__all__ = ["Gateway", "GatewaySettings", "OutlierSettings", "RouteSettings"]
