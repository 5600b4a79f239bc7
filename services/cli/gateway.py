"""``disco gateway``: a reverse proxy routed by the live view, the catalog API, the dashboard and metrics.

::

    disco gateway --tenant acme --tenant beta=beta.creds --listen 0.0.0.0:8080 --domain svc.example.com

Each ``--tenant NAME[=CREDS]`` opens one NATS connection with that tenant's credentials (``--creds`` is the
default file); only those tenants are served. See :mod:`services.gateway.app` for what is served where.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import Annotated

import anyio
import typer

from bus.balancing import Strategy
from bus.errors import DiscoError
from bus.subjects import validate_tenant
from services.cli.common import (
    DEFAULT_PREFIX,
    DEFAULT_URL,
    CredsOpt,
    NatsOpt,
    NatsOptions,
    PrefixOpt,
    daemon_logging,
    run,
    warn,
)

__all__ = ["parse_listen", "register"]


def parse_listen(value: str, flag: str = "--listen") -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT``) → (host, port); a usage error otherwise."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise typer.BadParameter(f"{value!r}: use HOST:PORT", param_hint=f"'{flag}'")
    return host, int(port)


def _tenants(values: list[str], creds: Path | None) -> dict[str, Path | None]:
    out: dict[str, Path | None] = {}
    for v in values:
        name, eq, path = v.partition("=")
        try:
            validate_tenant(name)
        except DiscoError as exc:
            raise typer.BadParameter(str(exc), param_hint="'--tenant'") from None
        if eq and not Path(path).is_file():
            raise typer.BadParameter(f"{path!r}: no such credentials file", param_hint="'--tenant'")
        out[name] = Path(path) if eq else creds
    return out


def _tokens(values: list[str], tenants: dict[str, Path | None]) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values:
        name, eq, token = v.partition("=")
        if not eq or not token or name not in tenants:
            raise typer.BadParameter(f"{v!r}: use TENANT=TOKEN or TENANT=@FILE for a tenant given with --tenant",
                                     param_hint="'--token'")
        if token.startswith("@"):  # from a file, so that the token is not in the process list
            try:
                token = Path(token[1:]).read_text().strip()
            except OSError as exc:
                raise typer.BadParameter(f"cannot read {token[1:]!r}: {exc.strerror}", param_hint="'--token'") from None
            if not token:
                raise typer.BadParameter(f"{v!r}: the token file is empty", param_hint="'--token'")
        out[name] = token
    return out


def gateway(
    tenant: Annotated[list[str], typer.Option(
        "--tenant", "-t", metavar="NAME[=CREDS]", help="A tenant to serve (repeat), with its credentials file.")],
    nats: NatsOpt = DEFAULT_URL,
    creds: CredsOpt = None,
    prefix: PrefixOpt = DEFAULT_PREFIX,
    listen: Annotated[str, typer.Option(metavar="HOST:PORT", help="Where to serve HTTP.")] = "127.0.0.1:8080",
    domain: Annotated[str | None, typer.Option(
        help="Route <svc>.<tenant>.<domain> by Host header (path routing /<tenant>/<svc>/ always works).")] = None,
    token: Annotated[list[str] | None, typer.Option(
        metavar="TENANT=TOKEN|@FILE", help="Bearer token callers of that tenant must present (repeat).")] = None,
    strategy: Annotated[Strategy, typer.Option(help="Default balancing strategy.")] = Strategy.least_outstanding,
    prefer_zone: Annotated[str | None, typer.Option(help="Default zone preference.")] = None,
    timeout: Annotated[float, typer.Option(min=0.001, max=3600, help="Default upstream timeout (s).")] = 30.0,
    retries: Annotated[int, typer.Option(min=0, max=10, help="Retries after a connect failure (idempotent).")] = 2,
    route: Annotated[list[str] | None, typer.Option(
        metavar="TENANT/SVC:key=val,...",
        help="Per-route settings: strategy, prefer_zone, timeout, retries (repeat).")] = None,
    eject_after: Annotated[int, typer.Option(min=1, help="Consecutive failures that eject an instance.")] = 3,
    eject_time: Annotated[float, typer.Option(min=0.01, help="Base ejection time (s), growing per ejection.")] = 5.0,
) -> None:
    """Serve a reverse proxy to live instances, the catalog API, a live dashboard (/ui/) and /metrics."""
    from services.gateway import Gateway, GatewaySettings, OutlierSettings, RouteSettings
    from services.gateway.routing import parse_route_option

    host, port = parse_listen(listen)
    tenants = _tenants(tenant, creds)
    tokens = _tokens(token or [], tenants)
    defaults = RouteSettings(strategy=strategy, prefer_zone=prefer_zone, timeout=timeout, retries=retries)
    overrides = {}
    for r in route or []:
        try:
            key, value = parse_route_option(r, defaults)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="'--route'") from None
        overrides[key] = value
    settings = GatewaySettings(
        host=host, port=port, domain=domain, routes=defaults, overrides=overrides, tokens=tokens,
        outlier=OutlierSettings(consecutive=eject_after, base_time=eject_time, max_time=max(300.0, eject_time)),
    )
    daemon_logging()

    async def body() -> None:
        async with AsyncExitStack() as stack:
            conns = {}
            for name, path in tenants.items():
                opts = NatsOptions(nats, path, prefix)
                conns[name] = await stack.enter_async_context(opts.connected(tenant=name, name="disco-gateway"))
            gw = Gateway(conns, settings)
            async with anyio.create_task_group() as tg:
                await tg.start(gw.run)
                warn(f"gateway on http://{host}:{gw.port} for {', '.join(sorted(conns))} "
                     f"(dashboard /ui/, catalog /v1/tenants, metrics /metrics)")

    run(body)


def register(app: typer.Typer) -> None:
    """Add ``disco gateway`` to the ``disco`` command."""
    app.command()(gateway)
