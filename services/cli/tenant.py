"""``disco tenant``: add, remove, list tenants, issue their credentials, render the server authorization."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from bus.connection import DEFAULT_URL
from bus.subjects import DEFAULT_PREFIX
from services.cli.common import CredsOpt, NatsOpt, NatsOptions, PrefixOpt, out, run, tenant_cb, warn
from services.tenants import TenantRegistry, write_creds
from services.tenants.authz import render_authz

__all__ = ["register"]

tenant_app = typer.Typer(help="Manage tenants and their credentials (needs the admin credentials).",
                         no_args_is_help=True)

NameArg = Annotated[str, typer.Argument(callback=tenant_cb, metavar="TENANT", help="Tenant (a DNS label).")]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Credentials file to write (default ./T.creds.json).")]


def _creds_path(name: str, out_path: Path | None) -> Path:
    return out_path if out_path is not None else Path(f"{name}.creds.json")


@tenant_app.command("add")
def add(
    name: NameArg,
    max_instances: Annotated[int | None, typer.Option(min=0, help="At most this many instances.")] = None,
    max_services: Annotated[int | None, typer.Option(min=0, help="At most this many services.")] = None,
    announce_rate: Annotated[float | None, typer.Option(min=0.001, help="Announces per second.")] = None,
    out_path: OutOpt = None,
    nats: NatsOpt = DEFAULT_URL,
    creds: CredsOpt = None,
    prefix: PrefixOpt = DEFAULT_PREFIX,
) -> None:
    """Create a tenant and write its credentials file (the only place its password is kept)."""
    opts = NatsOptions(nats, creds, prefix)

    async def body() -> None:
        async with opts.connected(name="disco-tenant") as conn:
            record, password = await TenantRegistry(conn.js, prefix).add(
                name, max_instances=max_instances, max_services=max_services, announce_rate=announce_rate)
        path = _creds_path(name, out_path)
        write_creds(path, {"tenant": name, "user": record.user, "password": password})
        out(f"tenant {name} added; credentials in {path} (connect with --creds {path})")

    run(body)


@tenant_app.command("creds")
def creds_cmd(
    name: NameArg, out_path: OutOpt = None, nats: NatsOpt = DEFAULT_URL, creds: CredsOpt = None,
    prefix: PrefixOpt = DEFAULT_PREFIX,
) -> None:
    """Issue new credentials for a tenant (the old password stops working at the next reload)."""
    opts = NatsOptions(nats, creds, prefix)

    async def body() -> None:
        async with opts.connected(name="disco-tenant") as conn:
            record, password = await TenantRegistry(conn.js, prefix).new_credentials(name)
        path = _creds_path(name, out_path)
        write_creds(path, {"tenant": name, "user": record.user, "password": password})
        out(f"new credentials of tenant {name} in {path}")

    run(body)


@tenant_app.command("rm")
def rm(name: NameArg, nats: NatsOpt = DEFAULT_URL, creds: CredsOpt = None, prefix: PrefixOpt = DEFAULT_PREFIX) -> None:
    """Remove a tenant: its user goes at the next reload (its connections are refused from then on)."""
    opts = NatsOptions(nats, creds, prefix)

    async def body() -> None:
        async with opts.connected(name="disco-tenant") as conn:
            await TenantRegistry(conn.js, prefix).remove(name)
        out(f"tenant {name} removed")

    run(body)


@tenant_app.command("ls")
def ls(
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines.")] = False,
    nats: NatsOpt = DEFAULT_URL, creds: CredsOpt = None, prefix: PrefixOpt = DEFAULT_PREFIX,
) -> None:
    """List tenants and their quotas."""
    opts = NatsOptions(nats, creds, prefix)

    async def body() -> None:
        async with opts.connected(name="disco-tenant") as conn:
            records = await TenantRegistry(conn.js, prefix).list()
        if not records:
            warn("no tenants")
        for r in records:
            if as_json:
                out(json.dumps(r.model_dump(exclude={"password_hash"})))
            else:
                created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(r.created_at))
                out(f"{r.name:<24} max_instances={r.max_instances} max_services={r.max_services} "
                    f"announce_rate={r.announce_rate} created={created}Z")

    run(body)


@tenant_app.command("render-authz")
def render(
    admin_hash: Annotated[str, typer.Option(help="bcrypt hash ($2a$...) of the admin user's password.")],
    out_path: Annotated[Path | None, typer.Option("--out", "-o", help="File to write (default: stdout).")] = None,
    nats: NatsOpt = DEFAULT_URL, creds: CredsOpt = None, prefix: PrefixOpt = DEFAULT_PREFIX,
) -> None:
    """Print the server authorization for every tenant: include it on every node of an existing cluster and
    reload them (`nats-server --signal reload`) after each tenant change."""
    if not admin_hash.startswith("$2"):
        raise typer.BadParameter("expected a bcrypt hash such as $2a$10$...", param_hint="'--admin-hash'")
    opts = NatsOptions(nats, creds, prefix)

    async def body() -> None:
        async with opts.connected(name="disco-tenant") as conn:
            records = await TenantRegistry(conn.js, prefix).list()
        text = render_authz(records, admin_hash, prefix)
        if out_path is None:
            print(text, end="")
        else:
            out_path.write_text(text)
            warn(f"authorization for {len(records)} tenants written to {out_path}")

    run(body)


def register(app: typer.Typer) -> None:
    """Add ``disco tenant`` to the ``disco`` command."""
    app.add_typer(tenant_app, name="tenant")

