"""Client commands: ``announce``, ``resolve``, ``ls``, ``watch``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

import anyio
import typer
from pydantic import ValidationError

from bus.announce import announce as bus_announce
from bus.client import resolve as bus_resolve
from bus.client import snapshot as bus_snapshot
from bus.models import ChangeEvent, Instance, Status
from bus.subjects import validate_instance_id
from bus.watch import watch as bus_watch
from services.cli.common import (
    DEFAULT_PREFIX,
    DEFAULT_URL,
    CliError,
    CredsOpt,
    NatsOpt,
    NatsOptions,
    OptionalServiceArg,
    PrefixOpt,
    ServiceArg,
    TenantOpt,
    out,
    run,
    service_cb,
    warn,
)

__all__ = ["register"]

# =============================================================================================================
# client commands
# =============================================================================================================
_FIELD_OPTION = {
    "id": "--instance-id", "address": "--address", "port": "--port", "ttl": "--ttl", "tags": "--tag",
    "meta": "--meta", "zone": "--zone", "weight": "--weight", "version": "--version",
}


def parse_meta(values: Sequence[str]) -> dict[str, str]:
    """``["k=v", ...]`` into a dict; raise a usage error for an item without ``=`` or with an empty key."""
    meta: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="'--meta'")
        meta[key] = value
    return meta


def _check_instance(**fields: Any) -> None:
    """Validate what will be announced before connecting, as a usage error naming the option."""
    try:
        Instance(**fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else ""
        raise typer.BadParameter(err["msg"], param_hint=f"'{_FIELD_OPTION.get(field, field)}'") from None


def _instance_id_cb(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return validate_instance_id(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def announce(
    tenant: TenantOpt,
    service: Annotated[str, typer.Option("--service", "-s", callback=service_cb, help="Service name.")],
    address: Annotated[str, typer.Option("--address", "-a", help="IP address or host name of the instance.")],
    port: Annotated[int, typer.Option("--port", "-p", min=1, max=65535, help="Port of the instance.")],
    instance_id: Annotated[
        str | None, typer.Option("--instance-id", callback=_instance_id_cb, help="Default: generated.")
    ] = None,
    ttl: Annotated[float, typer.Option(min=1, max=300, help="Seconds without heartbeat before expiry.")] = 10.0,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="A tag (repeatable).")] = None,
    meta: Annotated[
        list[str] | None, typer.Option("--meta", metavar="KEY=VALUE", help="Metadata (repeatable).")
    ] = None,
    zone: Annotated[str, typer.Option(help="Zone of the instance.")] = "",
    weight: Annotated[int, typer.Option(min=1, max=1000, help="Weight for weighted picks.")] = 100,
    version: Annotated[str, typer.Option(help="Version of the instance.")] = "",
    nats: NatsOpt = DEFAULT_URL,
    creds: CredsOpt = None,
    prefix: PrefixOpt = DEFAULT_PREFIX,
) -> None:
    """Register an instance, print its id, and keep it alive until SIGINT/SIGTERM (then say bye)."""
    tags = tuple(tag or ())
    meta_map = parse_meta(meta or ())
    _check_instance(
        id=instance_id or "probe", address=address, port=port, ttl=ttl, tags=tags, meta=meta_map, zone=zone,
        weight=weight, version=version,
    )
    opts = NatsOptions(nats, creds, prefix)

    async def body() -> None:
        async with opts.connected(tenant=tenant, name=f"disco-announce-{service}") as conn:
            hint = anyio.CancelScope()

            async def waiting_hint() -> None:
                with hint:
                    await anyio.sleep(3.0)
                    warn("still waiting for an aggregator to acknowledge the announce "
                         "(is `disco up` or `disco aggregator` running with this --prefix?)")

            async with anyio.create_task_group() as tg:
                tg.start_soon(waiting_hint)
                async with bus_announce(
                    conn, service, address=address, port=port, instance_id=instance_id, ttl=ttl, tags=tags,
                    meta=meta_map, zone=zone, weight=weight, version=version,
                ) as reg:
                    hint.cancel()
                    out(reg.id)
                    await anyio.sleep_forever()

    run(body)


def _hostport(inst: Instance) -> str:
    host = f"[{inst.address}]" if ":" in inst.address else inst.address
    return f"{host}:{inst.port}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [headers, *rows]]


def _row(inst: Instance) -> list[str]:
    return [inst.id, _hostport(inst), inst.status.value, inst.zone or "-", ",".join(inst.tags) or "-"]


def _json(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


JsonOpt = Annotated[bool, typer.Option("--json", help="JSON output.")]
TimeoutOpt = Annotated[float, typer.Option(min=0.01, help="Seconds to wait for an aggregator's reply.")]


def resolve(
    service: ServiceArg,
    tenant: TenantOpt,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Required tag (repeatable; all must match).")] = None,
    zone: Annotated[str | None, typer.Option(help="Only instances of this zone.")] = None,
    status: Annotated[
        list[Status] | None, typer.Option("--status", help="Statuses to include (default: passing, warning).")
    ] = None,
    as_json: JsonOpt = False,
    timeout: TimeoutOpt = 2.0,
    nats: NatsOpt = DEFAULT_URL,
    creds: CredsOpt = None,
    prefix: PrefixOpt = DEFAULT_PREFIX,
) -> None:
    """The live instances of a service (a table, or a JSON array)."""
    opts = NatsOptions(nats, creds, prefix)
    statuses = tuple(status) if status else (Status.passing, Status.warning)

    async def body() -> None:
        async with opts.connected(tenant=tenant, name="disco-resolve") as conn:
            reply = await bus_resolve(
                conn, service, tags=tuple(tag or ()), zone=zone, status=statuses, timeout=timeout
            )
        if as_json:
            out(_json([i.model_dump(mode="json") for i in reply.instances]))
        elif reply.instances:
            for line in _table(["ID", "ADDRESS", "STATUS", "ZONE", "TAGS"], [_row(i) for i in reply.instances]):
                out(line)
        if not reply.instances:
            warn(f"no instances of {service!r} (tenant {tenant!r})")

    run(body)


def ls(
    tenant: TenantOpt,
    service: OptionalServiceArg = None,
    as_json: JsonOpt = False,
    timeout: TimeoutOpt = 2.0,
    nats: NatsOpt = DEFAULT_URL,
    creds: CredsOpt = None,
    prefix: PrefixOpt = DEFAULT_PREFIX,
) -> None:
    """Every instance of the tenant (or of one service), whatever its status."""
    opts = NatsOptions(nats, creds, prefix)

    async def body() -> None:
        async with opts.connected(tenant=tenant, name="disco-ls") as conn:
            snap = await bus_snapshot(conn, services=(service,) if service else (), timeout=timeout)
        if as_json:
            out(_json(snap.model_dump(mode="json")))
        rows = [[svc, *_row(i)] for svc in sorted(snap.services) for i in snap.services[svc]]
        if rows and not as_json:
            for line in _table(["SERVICE", "ID", "ADDRESS", "STATUS", "ZONE", "TAGS"], rows):
                out(line)
        if not rows:
            warn(f"no instances (tenant {tenant!r}{f', service {service!r}' if service else ''})")

    run(body)


def format_event(ev: ChangeEvent) -> str:
    """One human line per change event."""
    at = datetime.fromtimestamp(ev.at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    i = ev.instance
    return (
        f"{at} {ev.type.value:<7} {ev.reason.value:<8} {ev.service} {i.id} {_hostport(i)} {i.status.value} "
        f"rev={ev.revision}"
    )


def watch(
    tenant: TenantOpt,
    service: OptionalServiceArg = None,
    as_json: Annotated[bool, typer.Option("--json", help="One ChangeEvent wire map per line, as JSON.")] = False,
    initial: Annotated[bool, typer.Option("--initial", help="Start with the current instances as 'added'.")] = False,
    nats: NatsOpt = DEFAULT_URL,
    creds: CredsOpt = None,
    prefix: PrefixOpt = DEFAULT_PREFIX,
) -> None:
    """Print every change of the tenant (or of one service) until SIGINT/SIGTERM."""
    opts = NatsOptions(nats, creds, prefix)
    what = f"{tenant}/{service}" if service else tenant

    async def body() -> None:
        async with opts.connected(tenant=tenant, name="disco-watch") as conn:
            # fail fast when nobody answers (the watch itself would wait for an aggregator for ever)
            await bus_snapshot(conn, services=(service,) if service else ())
            async with bus_watch(conn, service, include_initial=initial) as w:
                warn(f"watching {what} from revision {w.revision}; Ctrl-C to stop")
                async for ev in w:
                    out(_json(ev.model_dump(mode="json")) if as_json else format_event(ev))
        raise CliError("the watch ended")

    run(body)




def register(app: typer.Typer) -> None:
    """Add these commands to the ``disco`` command."""
    app.command()(announce)
    app.command()(resolve)
    app.command("ls")(ls)
    app.command()(watch)
