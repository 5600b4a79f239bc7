"""``disco tenant``: add, remove, list tenants, issue their credentials, set up operator mode for a cluster."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

import typer

from bus.connection import DEFAULT_URL, Connection
from bus.creds import tenant_of_creds
from bus.errors import ConnectionFailed
from bus.subjects import DEFAULT_CHANGES_STREAM, DEFAULT_PREFIX
from services.cli.common import CliError, CredsOpt, NatsOpt, NatsOptions, PrefixOpt, out, run, tenant_cb, warn
from services.cli.output import JsonOpt, dumps
from services.tenants import KEYS_FILE, OperatorKeys, Quota, TenantAdmin, TenantRegistry, init_operator, write_creds

__all__ = ["register"]

tenant_app = typer.Typer(help="Manage tenants and their credentials (needs the admin credentials).",
                         no_args_is_help=True)

NameArg = Annotated[str, typer.Argument(callback=tenant_cb, metavar="TENANT", help="Tenant (a DNS label).")]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Credentials file to write (default ./T.creds).")]
KeysOpt = Annotated[Path | None, typer.Option(
    "--keys", envvar="DISCO_KEYS", metavar="FILE", dir_okay=False,
    help=f"Operator keys file (default: the {KEYS_FILE} beside the --creds file).")]
StreamOpt = Annotated[str, typer.Option("--stream", envvar="DISCO_STREAM",
                                        help="Prefix of the change streams (<stream>_<tenant>).")]
ReplicasOpt = Annotated[int, typer.Option("--replicas", envvar="DISCO_REPLICAS", min=1, max=5,
                                          help="Replicas of the tenant's change stream (3 on a cluster).")]

_ADMIN_HINT = ("admin credentials needed: pass --creds <data-dir>/auth/admin.creds (printed by `disco up --auth`; "
               f"the operator keys file {KEYS_FILE} must sit beside it, or pass --keys)")


def _check_creds(creds: Path | None) -> None:
    tenant = tenant_of_creds(creds) if creds is not None and not creds.read_text().lstrip().startswith("{") else None
    if tenant is not None:
        raise CliError(f"{_ADMIN_HINT}; {creds} are the credentials of tenant {tenant!r}")


@asynccontextmanager
async def _disco(opts: NatsOptions) -> AsyncIterator[Connection]:
    """The admin's connection to the DISCO account; refuse, in one line, what cannot work: a tenant's
    credentials, no credentials, or a server that does not enforce tenancy at all."""
    _check_creds(opts.creds)
    try:
        conn = await opts.connect(name="disco-tenant")
    except ConnectionFailed as exc:
        if "authorization" in str(exc):
            raise CliError(_ADMIN_HINT) from None
        raise
    try:
        if not conn.nc._server_info.get("auth_required"):
            raise CliError("this NATS server does not enforce tenancy (it was started without --auth): tenant "
                           "credentials would isolate nothing; start it with `disco up --auth`, or set up "
                           "operator mode on your cluster (`disco tenant init`)")
        yield conn
    finally:
        await conn.close()


def _keys(creds: Path | None, keys: Path | None) -> OperatorKeys:
    path = keys if keys is not None else (creds.parent / KEYS_FILE if creds is not None else None)
    if path is None or not path.is_file():
        raise CliError(_ADMIN_HINT)
    return OperatorKeys.load(path)


@asynccontextmanager
async def _admin(
    opts: NatsOptions, keys: Path | None, stream: str, replicas: int = 1
) -> AsyncIterator[TenantAdmin]:
    async with _disco(opts) as conn:
        operator = _keys(opts.creds, keys)
        async with TenantAdmin(conn, operator, stream_prefix=stream, replicas=replicas) as admin:
            yield admin


def _write(name: str, out_path: Path | None, creds_text: str) -> Path:
    path = out_path if out_path is not None else Path(f"{name}.creds")
    write_creds(path, creds_text)
    return path


MaxInstances = Annotated[int | None, typer.Option(min=0, help="At most this many instances.")]
MaxServices = Annotated[int | None, typer.Option(min=0, help="At most this many services.")]
AnnounceRate = Annotated[float | None, typer.Option(min=0.001, help="Announces per second.")]
MaxConnections = Annotated[int | None, typer.Option(min=1, help="NATS connections (server-enforced).")]
MaxSubscriptions = Annotated[int | None, typer.Option(min=1, help="Subscriptions (server-enforced).")]
MaxPayload = Annotated[int | None, typer.Option(min=1024, help="Message bytes (server-enforced).")]
MaxStreams = Annotated[int | None, typer.Option(min=1, max=1000, help="JetStream streams [8].")]
MaxConsumers = Annotated[int | None, typer.Option(min=1, max=10000, help="JetStream consumers [64].")]
MaxStreamBytes = Annotated[int | None, typer.Option(min=1024, help="Bytes per stream [256 MiB].")]


@tenant_app.command("add")
def add(
    name: NameArg,
    max_instances: MaxInstances = None, max_services: MaxServices = None, announce_rate: AnnounceRate = None,
    max_connections: MaxConnections = None, max_subscriptions: MaxSubscriptions = None,
    max_payload: MaxPayload = None, max_streams: MaxStreams = None, max_consumers: MaxConsumers = None,
    max_stream_bytes: MaxStreamBytes = None,
    out_path: OutOpt = None,
    nats: NatsOpt = DEFAULT_URL,
    creds: CredsOpt = None,
    keys: KeysOpt = None,
    prefix: PrefixOpt = DEFAULT_PREFIX,
    stream: StreamOpt = DEFAULT_CHANGES_STREAM,
    replicas: ReplicasOpt = 1,
    as_json: JsonOpt = False,
) -> None:
    """Create a tenant (its own NATS account) and write its .creds file (the only copy of its secret)."""
    quota = Quota(max_instances=max_instances, max_services=max_services, announce_rate=announce_rate,
                  max_connections=max_connections, max_subscriptions=max_subscriptions, max_payload=max_payload,
                  max_streams=max_streams, max_consumers=max_consumers, max_stream_bytes=max_stream_bytes)

    async def body() -> None:
        async with _admin(NatsOptions(nats, creds, prefix), keys, stream, replicas) as admin:
            record, text = await admin.add(name, quota)
        path = _write(name, out_path, text)
        if as_json:
            out(dumps({"tenant": name, "creds": str(path), "quota": record.quota.model_dump(exclude_none=True)}))
            return
        out(f"tenant {name} added; credentials in {path} (connect with --creds {path})")

    run(body)


@tenant_app.command("quota")
def quota_cmd(
    name: NameArg,
    max_instances: MaxInstances = None, max_services: MaxServices = None, announce_rate: AnnounceRate = None,
    max_connections: MaxConnections = None, max_subscriptions: MaxSubscriptions = None,
    max_payload: MaxPayload = None, max_streams: MaxStreams = None, max_consumers: MaxConsumers = None,
    max_stream_bytes: MaxStreamBytes = None,
    nats: NatsOpt = DEFAULT_URL, creds: CredsOpt = None, keys: KeysOpt = None, prefix: PrefixOpt = DEFAULT_PREFIX,
    as_json: JsonOpt = False,
) -> None:
    """Change a tenant's quotas (only those given), live: the aggregators follow the registry, the server gets
    the new account JWT. A byte cap applies to streams created from then on."""
    given = {k: v for k, v in {
        "max_instances": max_instances, "max_services": max_services, "announce_rate": announce_rate,
        "max_connections": max_connections, "max_subscriptions": max_subscriptions, "max_payload": max_payload,
        "max_streams": max_streams, "max_consumers": max_consumers, "max_stream_bytes": max_stream_bytes,
    }.items() if v is not None}
    if not given:
        raise typer.BadParameter("give at least one quota option (see --help)")

    async def body() -> None:
        async with _admin(NatsOptions(nats, creds, prefix), keys, DEFAULT_CHANGES_STREAM) as admin:
            record = await admin.registry.get(name)
            if record is None:
                raise CliError(f"no tenant {name!r}")
            record = await admin.set_quota(name, record.quota.model_copy(update=given))
        if as_json:
            out(dumps({"tenant": name, "quota": record.quota.model_dump(exclude_none=True)}))
            return
        limits = " ".join(f"{k}={v}" for k, v in record.quota.model_dump().items() if v is not None)
        out(f"tenant {name}: {limits}")

    run(body)


@tenant_app.command("creds")
def creds_cmd(
    name: NameArg, out_path: OutOpt = None, nats: NatsOpt = DEFAULT_URL, creds: CredsOpt = None,
    keys: KeysOpt = None, prefix: PrefixOpt = DEFAULT_PREFIX, stream: StreamOpt = DEFAULT_CHANGES_STREAM,
    replicas: ReplicasOpt = 1, as_json: JsonOpt = False,
) -> None:
    """Issue new credentials for a tenant; the old ones are revoked (open connections closed within a second)."""

    async def body() -> None:
        async with _admin(NatsOptions(nats, creds, prefix), keys, stream, replicas) as admin:
            _, text = await admin.rotate(name)
        path = _write(name, out_path, text)
        if as_json:
            out(dumps({"tenant": name, "creds": str(path), "revoked_previous": True}))
            return
        out(f"new credentials of tenant {name} in {path}; the old ones are revoked")

    run(body)


@tenant_app.command("rm")
def rm(
    name: NameArg, nats: NatsOpt = DEFAULT_URL, creds: CredsOpt = None, keys: KeysOpt = None,
    prefix: PrefixOpt = DEFAULT_PREFIX, stream: StreamOpt = DEFAULT_CHANGES_STREAM,
    force: Annotated[bool, typer.Option("--force", help="Also remove a malformed registry record.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Remove a tenant: its account, its connections (closed at once) and its JetStream data."""

    async def body() -> None:
        async with _admin(NatsOptions(nats, creds, prefix), keys, stream) as admin:
            await admin.remove(name, force=force)
        out(dumps({"tenant": name, "removed": True}) if as_json else f"tenant {name} removed")

    run(body)


@tenant_app.command("ls")
def ls(
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines.")] = False,
    nats: NatsOpt = DEFAULT_URL, creds: CredsOpt = None, prefix: PrefixOpt = DEFAULT_PREFIX,
) -> None:
    """List tenants and their quotas (a malformed registry record is reported and skipped)."""

    async def body() -> int:
        async with _disco(NatsOptions(nats, creds, prefix)) as conn:
            registry = TenantRegistry(conn.js, prefix)
            try:
                await registry.open(create=False)
            except Exception:
                raise CliError(f"{_ADMIN_HINT} (no tenant registry in this account)") from None
            records = await registry.list()
        for key, problem in sorted(registry.problems.items()):
            warn(f"skipped {key}: {problem} (`disco tenant rm --force {key}` removes it)")
        if not records and not registry.problems:
            warn("no tenants")
        for r in records:
            if as_json:
                out(json.dumps(r.model_dump(exclude={"revoked", "jwt_iat"})))
            else:
                created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(r.created_at))
                limits = " ".join(f"{k}={v}" for k, v in r.quota.model_dump().items() if v is not None)
                out(f"{r.name:<24} account={r.account[:12]}… {limits or 'default quotas'} created={created}Z")
        return 0

    run(body)


@tenant_app.command("relay")
def relay_cmd(
    interval: Annotated[float, typer.Option(min=1.0, help="Seconds between sweeps.")] = 30.0,
    window: Annotated[float, typer.Option(min=10.0, help="How far back (s) events are compared.")] = 600.0,
    nats: NatsOpt = DEFAULT_URL, creds: CredsOpt = None, keys: KeysOpt = None, prefix: PrefixOpt = DEFAULT_PREFIX,
    stream: StreamOpt = DEFAULT_CHANGES_STREAM,
) -> None:
    """Run the change relay (built into `disco up --auth`): change events a tenant's stream missed while it was
    unavailable are copied into it from disco's own stream. First re-issues the account JWTs an older disco made
    (so that the tenants' watchers get the live subject)."""
    from services.cli.common import daemon_logging
    from services.tenants.relay import ChangeRelay

    daemon_logging()

    async def body() -> None:
        async with _admin(NatsOptions(nats, creds, prefix), keys, stream) as admin:
            refreshed = await admin.refresh_accounts()
            if refreshed:
                out(f"account JWTs re-issued with this version's imports: {', '.join(refreshed)}")
            out(f"change relay running (every {interval:g} s); Ctrl-C to stop")
            await ChangeRelay(admin, interval=interval, window=window).run()

    run(body)


@tenant_app.command("convert")
def convert(
    data_dir: Annotated[Path, typer.Option("--data-dir", file_okay=False, exists=True,
                                           help="The data dir of the one-account model.")] = Path("disco-data"),
    prefix: PrefixOpt = DEFAULT_PREFIX,
) -> None:
    """Convert a data dir of the one-account model to one NATS account per tenant (disco stopped): every tenant is
    added again with its quotas; its new .creds file is written into <data-dir>/auth/converted/."""
    from services.tenants.convert import convert_legacy

    async def body() -> None:
        names, out_dir = await convert_legacy(data_dir, prefix)
        out(f"converted {len(names)} tenants ({', '.join(names) or 'none'}); their new credentials are in "
            f"{out_dir}: hand each tenant its file (the old passwords no longer work); start with `disco up --auth "
            f"--data-dir {data_dir}`")

    run(body)


@tenant_app.command("init")
def init(
    directory: Annotated[Path, typer.Argument(file_okay=False, help="Where to keep the keys and credentials.")],
    prefix: PrefixOpt = DEFAULT_PREFIX,
) -> None:
    """Create the operator keys and the admin and aggregator credentials for an existing cluster (once); then
    include the output of `disco tenant render-authz` on every node."""

    async def body() -> None:
        keys = init_operator(directory, prefix)
        out(f"operator keys in {directory / KEYS_FILE}; admin credentials {directory / 'admin.creds'}; "
            f"aggregator credentials {directory / 'aggregator.creds'}")
        out(f"include the output of `disco tenant render-authz --keys {directory / KEYS_FILE}` in every "
            f"node's configuration (system account {keys.system.public})")

    run(body)


@tenant_app.command("render-authz")
def render(
    keys: KeysOpt = None,
    resolver_dir: Annotated[Path, typer.Option(help="Where each server keeps pushed account JWTs.")] = Path("jwt"),
    out_path: Annotated[Path | None, typer.Option("--out", "-o", help="File to write (default: stdout).")] = None,
) -> None:
    """Print the nats-server configuration of operator mode (operator, system account, full resolver, the SYS
    and DISCO accounts preloaded): include it on every node of an existing cluster, once. Tenants are then added
    and removed at runtime, without reloads."""

    async def body() -> None:
        if keys is None:
            raise CliError(f"pass --keys (the {KEYS_FILE} made by `disco tenant init` or `disco up --auth`)")
        text = OperatorKeys.load(keys).server_config(resolver_dir.resolve())
        if out_path is None:
            print(text, end="")
        else:
            write_creds(out_path, text)
            warn(f"operator configuration written to {out_path}")

    run(body)


def register(app: typer.Typer) -> None:
    """Add ``disco tenant`` to the ``disco`` command."""
    app.add_typer(tenant_app, name="tenant")
