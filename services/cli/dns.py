"""``disco dns``: serve tenants' live views as an authoritative DNS zone (see :mod:`services.dns`).

::

    disco dns --tenant acme                                   # no-auth NATS: acme over the shared connection
    disco dns --tenant acme=acme.creds --tenant beta=beta.creds   # each tenant with its own credentials
    disco dns --all-tenants --metrics 127.0.0.1:9153          # every tenant of the view, discovered as they appear
    dig @127.0.0.1 -p 8600 billing.acme.disco SRV

Serving every tenant is never implied: name the tenants, or ask for ``--all-tenants``.
"""

from __future__ import annotations

from typing import Annotated, Any

import anyio
import typer
from pydantic import ValidationError

from services.cli.common import (
    DEFAULT_PREFIX,
    DEFAULT_URL,
    CredsOpt,
    NatsOpt,
    PrefixOpt,
    daemon_logging,
    out,
    run,
)

__all__ = ["register"]


def _bad(flag: str, message: str) -> typer.BadParameter:
    return typer.BadParameter(message, param_hint=f"'{flag}'")


def dns(
    tenant: Annotated[
        list[str] | None,
        typer.Option("--tenant", "-t", metavar="NAME[=CREDS]",
                     help="A tenant to serve, with its credentials file when the server enforces tenancy "
                          "(repeatable)."),
    ] = None,
    all_tenants: Annotated[
        bool, typer.Option("--all-tenants",
                           help="Serve every tenant of the view, found as they appear (needs a connection that may "
                                "read every tenant: no-auth NATS, or admin --creds).")
    ] = False,
    listen: Annotated[
        str, typer.Option("--listen", metavar="ADDR:PORT", help="UDP and TCP address to answer on.")
    ] = "127.0.0.1:8600",
    zone: Annotated[str, typer.Option("--zone", help="The zone served.")] = "disco.",
    ttl: Annotated[float, typer.Option("--ttl", min=0, max=86400, help="TTL of answers, seconds.")] = 5.0,
    negative_ttl: Annotated[
        float, typer.Option("--negative-ttl", min=0, max=86400,
                            help="SOA minimum: how long resolvers cache 'no such name', seconds.")
    ] = 5.0,
    metrics: Annotated[
        str | None, typer.Option("--metrics", metavar="ADDR:PORT", help="Serve Prometheus metrics (/metrics).")
    ] = None,
    max_udp_size: Annotated[
        int, typer.Option("--max-udp-size", min=512, max=65535, help="Largest UDP answer (EDNS0), bytes.")
    ] = 4096,
    nats: NatsOpt = DEFAULT_URL,
    creds: CredsOpt = None,
    prefix: PrefixOpt = DEFAULT_PREFIX,
) -> None:
    """Serve the live view as an authoritative DNS zone (A/AAAA, SRV, TXT; UDP and TCP)."""
    from services.dns import DnsServer, DnsSettings, Endpoint, parse_endpoint, parse_tenant

    if all_tenants and tenant:
        raise _bad("--all-tenants", "give either --tenant (repeatable) or --all-tenants, not both")
    if not all_tenants and not tenant:
        raise _bad("--tenant", "no tenant to serve: give --tenant NAME[=CREDS] (repeatable) or --all-tenants")
    fields: dict[str, Any] = {
        "nats_url": nats, "creds": creds, "prefix": prefix, "zone": zone, "all_tenants": all_tenants,
        "ttl": ttl, "negative_ttl": negative_ttl, "max_udp_size": max_udp_size,
    }
    try:
        fields["tenants"] = tuple(parse_tenant(t) for t in tenant or ())
    except ValueError as exc:
        raise _bad("--tenant", str(exc)) from None
    for flag, key, value in (("--listen", "listen", listen), ("--metrics", "metrics", metrics)):
        if value is not None:
            try:
                fields[key] = parse_endpoint(value)
            except ValueError as exc:
                raise _bad(flag, str(exc)) from None
    try:
        settings = DnsSettings(**fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        flag = "--" + str(err["loc"][0]).replace("_", "-") if err["loc"] else "--zone"
        raise _bad(flag, str(err["msg"]).removeprefix("Value error, ")) from None
    daemon_logging()

    async def body() -> None:
        async with anyio.create_task_group() as tg:
            server: DnsServer = await tg.start(DnsServer(settings).run)
            where = Endpoint(host=settings.listen.host, port=server.port)
            who = "every tenant" if settings.all_tenants else ", ".join(t.name for t in settings.tenants)
            out(f"disco dns: zone {settings.zone} for {who} on udp+tcp {where}"
                + (f", metrics on {settings.metrics.host}:{server.metrics_port}" if settings.metrics else ""))

    run(body)


def register(app: typer.Typer) -> None:
    """Add ``disco dns`` to the ``disco`` command."""
    app.command("dns")(dns)
