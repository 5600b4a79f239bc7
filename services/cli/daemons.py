"""``disco up`` (embedded NATS + aggregator) and ``disco aggregator``."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import anyio
import typer
from anyio.abc import TaskGroup

from services.cli.common import (
    DEFAULT_PREFIX,
    DEFAULT_URL,
    CliError,
    CredsOpt,
    NatsOpt,
    NatsOptions,
    PrefixOpt,
    daemon_logging,
    out,
    run,
    warn,
)
from services.cli.gateway import parse_listen
from services.cli.shard import parse_shard
from services.cli.shard import register as register_shard

if TYPE_CHECKING:
    from services.aggregator import Aggregator

__all__ = ["register"]

# =============================================================================================================
# daemons
# =============================================================================================================
def up(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Client port of the NATS server.")] = 4222,
    host: Annotated[str, typer.Option(help="Address the NATS server listens on.")] = "127.0.0.1",
    data_dir: Annotated[
        Path, typer.Option("--data-dir", file_okay=False, help="Where the server keeps its state (the view).")
    ] = Path("disco-data"),
    auth: Annotated[bool | None, typer.Option(
        "--auth/--no-auth", help="Isolate tenants (one NATS account each). Default: as the data dir was set up.",
        show_default=False)] = None,
    prefix: PrefixOpt = DEFAULT_PREFIX,
    metrics: Annotated[str | None, typer.Option(
        metavar="ADDR:PORT", help=f"Prometheus metrics of the aggregator [default {DEFAULT_METRICS}].")] = None,
    no_metrics: Annotated[bool, typer.Option("--no-metrics", help="Serve no Prometheus metrics.")] = False,
    monitor_port: Annotated[
        int | None,
        typer.Option("--monitor-port", min=0, max=65535, show_default=f"{MONITOR_PORT}, or the next free port",
                     help="Port of the NATS monitoring endpoint (/varz, /jsz) on 127.0.0.1; 0: none."),
    ] = None,
    aggregators: Annotated[
        int | None, typer.Option(min=1, max=64, help="Aggregator processes to run [default: one per core].")
    ] = None,
    shards: Annotated[int, typer.Option(
        min=1, max=64, help="Shard the tenants over this many aggregators (the server partitions the subjects).")] = 1,
) -> None:
    """Start a local NATS server with JetStream and an aggregator (the embedded default)."""
    import os

    from services.embedded import UpConfig, embedded

    if metrics is not None:
        parse_listen(metrics, "--metrics")
    monitor = pick_monitor_port(monitor_port)
    daemon_logging()
    if aggregators is not None and aggregators < shards:
        raise typer.BadParameter(f"at least one aggregator per shard: give --aggregators {shards} or more",
                                 param_hint="'--aggregators'")
    if shards > 1 and auth:
        raise typer.BadParameter("not supported with tenant isolation (--auth) yet", param_hint="'--shards'")
    config = UpConfig(data_dir=data_dir, host=host, port=port, prefix=prefix, auth=auth, monitor_port=monitor,
                      aggregators=aggregators if aggregators is not None else max(shards, os.cpu_count() or 1),
                      shards=shards)

    async def body() -> None:
        async with embedded(config) as system:
            if system.auth is None:
                warn("warning: tenants are not isolated: any client can act for any tenant (use `disco up --auth`)")
            out(f"disco is up: {system.url} (data in {system.data_dir}); Ctrl-C to stop")
            if monitor:
                out(f"NATS monitoring: http://127.0.0.1:{monitor} (/varz, /jsz, /connz)")
            for note in system.auth.notes if system.auth is not None else ():
                out(note)
            async with anyio.create_task_group() as tg:
                if not no_metrics:
                    await _start_metrics(tg, system.aggregator, metrics or DEFAULT_METRICS, metrics is not None)
                await anyio.sleep_forever()
        if system.server_stopped:
            warn("nats-server was stopped: disco is down")

    run(body)


#: the NATS monitoring port by convention (``nats-server -m 8222``)
MONITOR_PORT = 8222


def _loopback_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_monitor_port(asked: int | None, start: int = MONITOR_PORT, tries: int = 50) -> int:
    """The monitoring port of ``disco up``: ``asked`` if given (0: none; a taken port is a usage error), else
    ``start`` or the next free port after it (0 when none of ``tries`` ports is free)."""
    if asked is not None:
        if asked and not _loopback_free(asked):
            raise typer.BadParameter(f"port {asked} on 127.0.0.1 is already in use", param_hint="'--monitor-port'")
        return asked
    return next((p for p in range(start, min(start + tries, 65536)) if _loopback_free(p)), 0)


_JS_NAME = r"^[A-Za-z0-9_-]{1,64}$"
DEFAULT_METRICS = "127.0.0.1:9464"


async def _start_metrics(tg: TaskGroup, agg: Aggregator, where: str, required: bool) -> None:
    """Serve the aggregator's Prometheus metrics at ``where``; a port in use fails the command when the address
    was asked for, and is only a warning for ``disco up``'s default."""
    from services.aggregator.prometheus import serve_metrics

    host, port = parse_listen(where, "--metrics")
    try:
        bound = await tg.start(serve_metrics, agg, host, port)
    except OSError as exc:
        if required:
            raise CliError(f"cannot serve metrics on {where}: {exc.strerror or exc}") from None
        warn(f"warning: no metrics: cannot listen on {where} ({exc.strerror or exc}); use --metrics ADDR:PORT")
        return
    warn(f"metrics on http://{host}:{bound}/metrics")


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
    metrics: Annotated[str | None, typer.Option(metavar="ADDR:PORT", help="Serve Prometheus metrics there.")] = None,
    shard: Annotated[str | None, typer.Option(
        metavar="K/N", help="Serve only the tenants of shard K of N (the server must map the subjects: `disco shard "
        "config N`) [env DISCO_SHARD].")] = None,
) -> None:
    """Run an aggregator against an existing NATS system (several may run at once)."""
    from services.aggregator import Aggregator, AggregatorSettings
    from services.aggregator.memory import freeze_after_start
    from services.aggregator.settings import CONNECT_OPTIONS
    from services.aggregator.shard import ShardMismatch

    if metrics is not None:
        parse_listen(metrics, "--metrics")
    for flag, value in (("--bucket", bucket), ("--stream", stream)):
        if value is not None and not re.fullmatch(_JS_NAME, value):
            raise typer.BadParameter("use 1-64 letters, digits, '_' and '-'", param_hint=f"'{flag}'")
    shard = parse_shard(shard)
    daemon_logging()
    _fast_loop()
    given: dict[str, Any] = {"replicas": replicas, "bucket": bucket, "stream": stream, "shard": shard}
    overrides = {k: v for k, v in given.items() if v is not None}

    async def body() -> None:
        settings = AggregatorSettings(
            nats_url=nats, creds=str(creds) if creds is not None else None, prefix=prefix, **overrides
        )
        opts = NatsOptions(settings.nats_url, creds, settings.prefix)
        async with opts.connected(name="disco-aggregator", **CONNECT_OPTIONS) as conn:
            agg = Aggregator(conn, settings)
            try:
                async with anyio.create_task_group() as tg:
                    await tg.start(agg.run)
                    freeze_after_start()
                    if metrics is not None:
                        await _start_metrics(tg, agg, metrics, True)
                    where = "" if settings.shard is None else f", shard {settings.shard}"
                    warn(f"aggregator ready on {settings.nats_url} (prefix {settings.prefix}, bucket "
                         f"{settings.view_bucket}{where})")
            except* ShardMismatch as group:  # the server routes otherwise than --shard says (shard.py)
                raise CliError(str(group.exceptions[0])) from None

    run(body)




def _fast_loop() -> None:
    """Run the aggregator on uvloop when it is installed (extra ``fast``) unless ``DISCO_UVLOOP=0``: its C
    transport makes the socket writes that dominate an aggregator's profile cheaper (README, Performance)."""
    import asyncio
    import os

    if os.environ.get("DISCO_UVLOOP", "1") == "0":
        return
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def register(app: typer.Typer) -> None:
    """Add these commands to the ``disco`` command."""
    app.command()(up)
    app.command()(aggregator)
    register_shard(app)
