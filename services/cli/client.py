"""Client commands: ``announce``, ``resolve``, ``ls``, ``watch``.

Each takes ``--tenant`` or the tenant of its credentials, the filters ``--tag/--zone/--status/--meta`` (``ls``,
``resolve``, ``watch``) and ``--json`` (shapes in :mod:`services.cli.output`).
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

import anyio
import typer
from pydantic import ValidationError

from bus.announce import Registration
from bus.announce import announce as bus_announce
from bus.client import request
from bus.client import resolve as bus_resolve
from bus.client import snapshot as bus_snapshot
from bus.codec import encode
from bus.connection import Connection
from bus.errors import DiscoError
from bus.models import AnnounceAck, Bye, ChangeEvent, ChangeReason, Instance, Status
from bus.subjects import validate_instance_id
from bus.watch import watch as bus_watch
from services.cli.common import (
    DEFAULT_PREFIX,
    DEFAULT_URL,
    CliError,
    CredsOpt,
    MaybeTenantOpt,
    NatsOpt,
    NatsOptions,
    OptionalServiceArg,
    PrefixOpt,
    ServiceArg,
    out,
    run,
    service_cb,
    warn,
)
from services.cli.output import (
    Filters,
    JsonOpt,
    MetaFilterOpt,
    StatusFilterOpt,
    TagFilterOpt,
    ZoneFilterOpt,
    dumps,
    event_json,
    hostport,
    instance_json,
    iso,
    parse_meta,
    table,
)

__all__ = ["EXIT_NO_MATCH", "EXIT_UNKNOWN_SERVICE", "format_event", "parse_meta", "register"]

log = logging.getLogger("disco.cli")

#: ``resolve --fail-empty`` exit codes: the service has no instance at all / none that matches the filters
EXIT_UNKNOWN_SERVICE = 3
EXIT_NO_MATCH = 4

_FIELD_OPTION = {
    "id": "--instance-id", "address": "--address", "port": "--port", "ttl": "--ttl", "tags": "--tag",
    "meta": "--meta", "zone": "--zone", "weight": "--weight", "version": "--version", "status": "--status",
}


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


InstanceIdOpt = Annotated[
    str | None, typer.Option("--instance-id", "--id", callback=_instance_id_cb, show_default="generated",
                             help="Instance id.")
]


async def _follow_own_status(conn: Connection, reg: Registration) -> None:
    """Adopt a status set from outside (``disco maint``/``status-set``) into the registration, so that a later
    re-announce (after a reconnect) keeps it instead of reverting it."""
    watch_log = logging.getLogger("disco.watch")
    if not watch_log.isEnabledFor(logging.INFO):  # its "resynced" line is about this helper, not the announce
        watch_log.setLevel(logging.ERROR)
    try:
        async with bus_watch(conn, reg.service, tenant=reg.tenant, resync_interval=None) as w:
            async for ev in w:
                if (ev.instance.id == reg.id and ev.reason is ChangeReason.health
                        and ev.instance.status != reg.instance.status):
                    reg.instance = reg.instance.model_copy(update={"status": ev.instance.status})
                    warn(f"status of {reg.service}/{reg.id} set to {ev.instance.status.value} from outside")
    except DiscoError as exc:  # not worth stopping the announce for: only a later re-announce could suffer
        log.info("not following the status of %s/%s: %s", reg.service, reg.id, exc)


async def _say_bye(conn: Connection, reg: Registration) -> None:
    """Say bye ourselves (the library's own bye reports nothing), so that a failure is told: raise CliError."""
    what = f"instance {reg.id} of {reg.service!r} stays registered until its ttl ({reg.instance.ttl:g} s) expires"
    if not conn.nc.is_connected:
        raise CliError(f"could not say bye (the NATS server is unreachable): {what}")
    try:
        await request(conn, conn.subjects.bye(reg.tenant, reg.service), encode(Bye(id=reg.id)), AnnounceAck, 2.0)
    except DiscoError as exc:
        raise CliError(f"could not say bye ({exc}): {what}") from None


def announce(
    service: Annotated[str, typer.Option("--service", callback=service_cb, help="Service name.")],
    address: Annotated[str, typer.Option("--address", "-a", help="IP address or host name of the instance.")],
    port: Annotated[int, typer.Option("--port", "-p", min=1, max=65535, help="Port of the instance.")],
    tenant: MaybeTenantOpt = None,
    instance_id: InstanceIdOpt = None,
    ttl: Annotated[float, typer.Option(min=1, max=300, help="Seconds without heartbeat before expiry.")] = 10.0,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="A tag (repeatable).")] = None,
    meta: Annotated[
        list[str] | None, typer.Option("--meta", metavar="KEY=VALUE", help="Metadata (repeatable).")
    ] = None,
    zone: Annotated[str, typer.Option(help="Zone of the instance.")] = "",
    weight: Annotated[int, typer.Option(min=1, max=1000, help="Weight for weighted picks.")] = 100,
    version: Annotated[str, typer.Option(help="Version of the instance.")] = "",
    status: Annotated[Status, typer.Option(help="Status to register with (e.g. maintenance before a deploy).")] = (
        Status.passing
    ),
    as_json: JsonOpt = False,
    nats: NatsOpt = DEFAULT_URL,
    creds: CredsOpt = None,
    prefix: PrefixOpt = DEFAULT_PREFIX,
) -> None:
    """Register an instance, print its id, and keep it alive until SIGINT/SIGTERM (then say bye).

    Exits 1 when it could not say bye (the server was unreachable): the instance then expires after its ttl.
    """
    tags = tuple(tag or ())
    meta_map = parse_meta(meta or ())
    _check_instance(
        id=instance_id or "probe", address=address, port=port, ttl=ttl, tags=tags, meta=meta_map, zone=zone,
        weight=weight, version=version, status=status,
    )
    opts = NatsOptions(nats, creds, prefix)

    async def body() -> None:
        async with opts.tenant_connection(tenant, name=f"disco-announce-{service}") as conn:
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
                    meta=meta_map, zone=zone, weight=weight, version=version, status=status,
                ) as reg:
                    hint.cancel()
                    if as_json:
                        out(dumps({**instance_json(reg.tenant, service, reg.instance), "revision": reg.revision}))
                    else:
                        out(reg.id)
                    try:
                        tg.start_soon(_follow_own_status, conn, reg)
                        await anyio.sleep_forever()
                    finally:
                        tg.cancel_scope.cancel()
                        with anyio.CancelScope(shield=True):
                            await _say_bye(conn, reg)

    run(body)


async def _unknown_or_empty(conn: Connection, service: str, timeout: float) -> int:
    """How many instances (any status) ``service`` has: 0 means the service is unknown."""
    snap = await bus_snapshot(conn, services=(service,), timeout=timeout)
    return len(snap.services.get(service, ()))


def resolve(
    service: ServiceArg,
    tenant: MaybeTenantOpt = None,
    tag: TagFilterOpt = None,
    zone: ZoneFilterOpt = None,
    status: Annotated[
        list[Status] | None,
        typer.Option("--status", metavar="STATUS", show_default="passing, warning",
                     help="Statuses to include (repeatable)."),
    ] = None,
    meta: MetaFilterOpt = None,
    fail_empty: Annotated[
        bool, typer.Option("--fail-empty", help=f"Exit {EXIT_UNKNOWN_SERVICE} when the service is unknown, "
                           f"{EXIT_NO_MATCH} when it has no matching instance.")
    ] = False,
    as_json: JsonOpt = False,
    timeout: Annotated[float, typer.Option(min=0.01, help="Seconds to wait for an aggregator's reply.")] = 2.0,
    nats: NatsOpt = DEFAULT_URL,
    creds: CredsOpt = None,
    prefix: PrefixOpt = DEFAULT_PREFIX,
) -> None:
    """The live instances of a service that match the filters (a table, or JSON)."""
    opts = NatsOptions(nats, creds, prefix)
    statuses = tuple(status) if status else (Status.passing, Status.warning)
    filters = Filters.of(tag, zone, statuses, meta)

    async def body() -> int:
        async with opts.tenant_connection(tenant, name="disco-resolve") as conn:
            t = conn.tenant_or(None)
            reply = await bus_resolve(conn, service, tags=filters.tags, zone=zone, status=statuses, timeout=timeout)
            found = [i for i in reply.instances if filters.matches(i)]
            total = len(found) or await _unknown_or_empty(conn, service, timeout)
        if as_json:
            out(dumps({"tenant": t, "service": service, "revision": reply.revision, "known": total > 0,
                       "instances": [instance_json(t, service, i) for i in found]}))
        elif found:
            for line in table(["ID", "ADDRESS", "STATUS", "ZONE", "TAGS"], [_row(i) for i in found]):
                out(line)
        if found:
            return 0
        if total == 0:
            warn(f"unknown service {service!r} (tenant {t!r}): no instance in any status")
            return EXIT_UNKNOWN_SERVICE if fail_empty else 0
        warn(f"service {service!r} (tenant {t!r}) has {total} instance(s), none matching "
             f"{'the filters' if filters.active else 'passing or warning'}")
        return EXIT_NO_MATCH if fail_empty else 0

    run(body)


def _row(inst: Instance) -> list[str]:
    return [inst.id, hostport(inst), inst.status.value, inst.zone or "-", ",".join(inst.tags) or "-"]


def ls(
    service: OptionalServiceArg = None,
    tenant: MaybeTenantOpt = None,
    tag: TagFilterOpt = None,
    zone: ZoneFilterOpt = None,
    status: StatusFilterOpt = None,
    meta: MetaFilterOpt = None,
    as_json: JsonOpt = False,
    timeout: Annotated[float, typer.Option(min=0.01, help="Seconds to wait for an aggregator's reply.")] = 2.0,
    nats: NatsOpt = DEFAULT_URL,
    creds: CredsOpt = None,
    prefix: PrefixOpt = DEFAULT_PREFIX,
) -> None:
    """Every instance of the tenant (or of one service), whatever its status unless filtered."""
    opts = NatsOptions(nats, creds, prefix)
    filters = Filters.of(tag, zone, status, meta)

    async def body() -> None:
        async with opts.tenant_connection(tenant, name="disco-ls") as conn:
            t = conn.tenant_or(None)
            snap = await bus_snapshot(conn, services=(service,) if service else (), timeout=timeout)
        found = [(svc, i) for svc in sorted(snap.services) for i in snap.services[svc] if filters.matches(i)]
        if as_json:
            out(dumps({"tenant": t, "revision": snap.revision,
                       "instances": [instance_json(t, svc, i) for svc, i in found]}))
        elif found:
            for line in table(["SERVICE", "ID", "ADDRESS", "STATUS", "ZONE", "TAGS"],
                              [[svc, *_row(i)] for svc, i in found]):
                out(line)
        if not found:
            warn(f"no instances (tenant {t!r}{f', service {service!r}' if service else ''}"
                 f"{', matching the filters' if filters.active else ''})")

    run(body)


def format_event(ev: ChangeEvent) -> str:
    """One human line per change event."""
    i = ev.instance
    return (
        f"{iso(ev.at)} {ev.type.value:<7} {ev.reason.value:<8} {ev.service} {i.id} {hostport(i)} {i.status.value} "
        f"rev={ev.revision}"
    )


def watch(
    service: OptionalServiceArg = None,
    tenant: MaybeTenantOpt = None,
    tag: TagFilterOpt = None,
    zone: ZoneFilterOpt = None,
    status: StatusFilterOpt = None,
    meta: MetaFilterOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="One event object per line (shape in the CLI reference).")]
    = False,
    initial: Annotated[
        bool, typer.Option("--initial", help="Start with the current instances as 'added' events (reason initial).")
    ] = False,
    nats: NatsOpt = DEFAULT_URL,
    creds: CredsOpt = None,
    prefix: PrefixOpt = DEFAULT_PREFIX,
) -> None:
    """Print every change of the tenant (or of one service) until SIGINT/SIGTERM.

    With filters, an event is printed when its instance matches them, or matched them before the change (so an
    instance leaving the filter, e.g. turning critical under --status passing, is seen leaving).
    """
    opts = NatsOptions(nats, creds, prefix)
    filters = Filters.of(tag, zone, status, meta)

    async def body() -> None:
        async with opts.tenant_connection(tenant, name="disco-watch") as conn:
            t = conn.tenant_or(None)
            what = f"{t}/{service}" if service else t
            # fail fast when nobody answers (the watch itself would wait for an aggregator for ever)
            await bus_snapshot(conn, services=(service,) if service else ())
            shown: set[tuple[str, str]] = set()
            async with bus_watch(conn, service, include_initial=initial) as w:
                if not initial:
                    shown.update((svc, i.id) for svc, insts in w.view.items() for i in insts.values()
                                 if filters.matches(i))
                warn(f"watching {what} from revision {w.revision}; Ctrl-C to stop")
                async for ev in w:
                    key = (ev.service, ev.instance.id)
                    if filters.matches(ev.instance):
                        shown.add(key)
                    elif key in shown:
                        shown.discard(key)
                    else:
                        continue
                    out(dumps(event_json(ev)) if as_json else format_event(ev))
        raise CliError("the watch ended")

    run(body)


def register(app: typer.Typer) -> None:
    """Add these commands to the ``disco`` command."""
    app.command()(announce)
    app.command()(resolve)
    app.command("ls")(ls)
    app.command()(watch)
