"""The ``disco`` command: ``up`` (embedded NATS + aggregator), ``aggregator``, ``announce``, ``resolve``, ``ls``,
``watch``; ``worker`` and ``tenant`` come from their own modules when installed.

Every command that connects takes ``--nats URL[,URL]`` (``DISCO_NATS_URL``), ``--creds FILE`` (``DISCO_CREDS``)
and ``--prefix`` (``DISCO_PREFIX``). Bad input is one line ``disco: error: ...`` on stderr: exit 2 for usage
errors (caught before anything is sent), 1 for failures at run time (no server, no aggregator, a refusal).
Long-running commands stop on SIGINT/SIGTERM with exit 0.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import anyio
import typer
from pydantic import ValidationError
from typer.core import TyperGroup

from bus.announce import announce as bus_announce
from bus.client import resolve as bus_resolve
from bus.client import snapshot as bus_snapshot
from bus.models import ChangeEvent, Instance, Status
from bus.subjects import validate_instance_id
from bus.watch import watch as bus_watch
from services.cli_common import (
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
    configure_logging,
    daemon_logging,
    out,
    run,
    service_cb,
    warn,
)

__all__ = ["app", "main"]


class DiscoGroup(TyperGroup):
    """Reports every usage error as one line ``disco: error: ...`` (exit 2) instead of a usage box."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            rv = super().main(
                args=args, prog_name=prog_name or "disco", complete_var=complete_var, standalone_mode=False,
                windows_expand_args=windows_expand_args, **extra,
            )
            code = rv if isinstance(rv, int) else 0
        except typer.TyperException as exc:  # click's UsageError, BadParameter, ... (typer >= 0.26 vendors click)
            warn(f"error: {exc.format_message()}")
            code = exc.exit_code
        except typer.Abort:
            warn("aborted")
            code = 1
        except Exception as exc:  # a last resort: never a traceback
            warn(f"error: unexpected {type(exc).__name__}: {exc}")
            code = 1
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    cls=DiscoGroup,
    name="disco",
    help="Event-driven, multi-tenant service discovery over NATS.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class LogLevel(StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


@app.callback()
def _root(
    log_level: Annotated[
        LogLevel | None,
        typer.Option("--log-level", envvar="DISCO_LOG_LEVEL", case_sensitive=False,
                     help="Log level on stderr (default: warning; info for daemons)."),
    ] = None,
) -> None:
    configure_logging(log_level.value if log_level is not None else None)


# =============================================================================================================
# daemons
# =============================================================================================================
@app.command()
def up(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Client port of the NATS server.")] = 4222,
    host: Annotated[str, typer.Option(help="Address the NATS server listens on.")] = "127.0.0.1",
    data_dir: Annotated[
        Path, typer.Option("--data-dir", file_okay=False, help="Where the server keeps its state (the view).")
    ] = Path("disco-data"),
    auth: Annotated[bool, typer.Option("--auth/--no-auth", help="Isolate tenants (per-tenant credentials).")] = False,
    prefix: PrefixOpt = DEFAULT_PREFIX,
) -> None:
    """Start a local NATS server with JetStream and an aggregator (the embedded default)."""
    from services.embedded import UpConfig, embedded

    daemon_logging()
    config = UpConfig(data_dir=data_dir, host=host, port=port, prefix=prefix, auth=auth)

    async def body() -> None:
        async with embedded(config) as system:
            if system.auth is None:
                warn("warning: tenants are not isolated: any client can act for any tenant (use `disco up --auth`)")
            out(f"disco is up: {system.url} (data in {system.data_dir}); Ctrl-C to stop")
            for note in system.auth.notes if system.auth is not None else ():
                out(note)
            await anyio.sleep_forever()
        if system.server_stopped:
            warn("nats-server was stopped: disco is down")

    run(body)


_JS_NAME = r"^[A-Za-z0-9_-]{1,64}$"


@app.command()
def aggregator(
    nats: NatsOpt = DEFAULT_URL,
    creds: CredsOpt = None,
    prefix: PrefixOpt = DEFAULT_PREFIX,
    replicas: Annotated[
        int | None, typer.Option(min=1, max=5, help="Replicas of the KV bucket and streams [env DISCO_REPLICAS].")
    ] = None,
    bucket: Annotated[str | None, typer.Option(help="KV bucket of the live view [env DISCO_BUCKET].")] = None,
    stream: Annotated[
        str | None, typer.Option(help="Prefix of the per-tenant change streams [env DISCO_STREAM].")
    ] = None,
) -> None:
    """Run an aggregator against an existing NATS system (several may run at once)."""
    from services.aggregator import Aggregator, AggregatorSettings

    for flag, value in (("--bucket", bucket), ("--stream", stream)):
        if value is not None and not re.fullmatch(_JS_NAME, value):
            raise typer.BadParameter("use 1-64 letters, digits, '_' and '-'", param_hint=f"'{flag}'")
    daemon_logging()
    given: dict[str, Any] = {"replicas": replicas, "bucket": bucket, "stream": stream}
    overrides = {k: v for k, v in given.items() if v is not None}

    async def body() -> None:
        settings = AggregatorSettings(
            nats_url=nats, creds=str(creds) if creds is not None else None, prefix=prefix, **overrides
        )
        opts = NatsOptions(settings.nats_url, creds, settings.prefix)
        async with opts.connected(name="disco-aggregator") as conn:
            agg = Aggregator(conn, settings)
            async with anyio.create_task_group() as tg:
                await tg.start(agg.run)
                warn(f"aggregator ready on {settings.nats_url} (prefix {settings.prefix}, bucket {settings.bucket})")

    run(body)


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


@app.command()
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


@app.command()
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


@app.command("ls")
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


@app.command()
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


def main() -> None:
    """Entry point of the ``disco`` console script."""
    typer.main.get_command(app).main(prog_name="disco")


# Commands written in their own modules join the app when they are installed: each exposes register(app).
for _module in ("services.worker_cli", "services.tenant_cli"):
    if importlib.util.find_spec(_module) is not None:
        importlib.import_module(_module).register(app)
