"""``disco up`` (embedded NATS + aggregator) and ``disco aggregator``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import anyio
import typer

from services.cli.common import (
    DEFAULT_PREFIX,
    DEFAULT_URL,
    CredsOpt,
    NatsOpt,
    NatsOptions,
    PrefixOpt,
    daemon_logging,
    out,
    run,
    warn,
)

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
    auth: Annotated[bool, typer.Option("--auth/--no-auth", help="Isolate tenants (per-tenant credentials).")] = False,
    prefix: PrefixOpt = DEFAULT_PREFIX,
    aggregators: Annotated[
        int | None, typer.Option(min=1, max=64, help="Aggregator processes to run [default: one per core].")
    ] = None,
) -> None:
    """Start a local NATS server with JetStream and an aggregator (the embedded default)."""
    import os

    from services.embedded import UpConfig, embedded

    daemon_logging()
    config = UpConfig(data_dir=data_dir, host=host, port=port, prefix=prefix, auth=auth,
                      aggregators=aggregators if aggregators is not None else max(1, os.cpu_count() or 1))

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
    _fast_loop()
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




def _fast_loop() -> None:
    """Run the aggregator on uvloop when it is installed (extra ``fast``) unless ``DISCO_UVLOOP=0``: its C
    transport makes the socket writes that dominate an aggregator's profile cheaper (notes/perf.md)."""
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
