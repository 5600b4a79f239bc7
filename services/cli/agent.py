"""``disco agent``: register services from a YAML file, with health checks, and keep them registered.

::

    disco agent --config services.yaml [--tenant acme] [--metrics 127.0.0.1:9464]

The file format is in :mod:`services.agent.config`. SIGHUP (and any change of the file on disk) applies the
file's difference; a file that does not validate is refused with one line naming its line, and the previous
configuration keeps running (at start: ``disco: error: FILE:LINE: ...``, exit 2). SIGINT/SIGTERM say bye for
every instance and exit 0. ``--metrics`` serves Prometheus metrics on ``http://ADDR:PORT/metrics``.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated

import anyio
import typer
from aiohttp import web
from anyio.abc import TaskStatus

from services.agent import Agent, ConfigError, load_config
from services.agent.metrics import metrics_app, registry_for
from services.cli.common import (
    DEFAULT_PREFIX,
    DEFAULT_URL,
    CliError,
    CredsOpt,
    NatsOpt,
    NatsOptions,
    PrefixOpt,
    daemon_logging,
    fail,
    run,
    tenant_cb,
    warn,
)

__all__ = ["register"]


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise typer.BadParameter(f"expected ADDR:PORT, got {value!r}", param_hint="'--metrics'")
    return host.strip("[]"), int(port)


def agent_command(
    config: Annotated[
        Path,
        typer.Option("--config", "-c", envvar="DISCO_AGENT_CONFIG", metavar="FILE", dir_okay=False,
                     help="YAML file of service definitions (re-read on SIGHUP and when it changes)."),
    ],
    tenant: Annotated[
        str | None,
        typer.Option("--tenant", "-t", envvar="DISCO_TENANT", callback=tenant_cb,
                     help="Tenant of the definitions that name none (and the file names none)."),
    ] = None,
    metrics: Annotated[
        str | None,
        typer.Option("--metrics", envvar="DISCO_AGENT_METRICS", metavar="ADDR:PORT",
                     help="Serve Prometheus metrics on http://ADDR:PORT/metrics."),
    ] = None,
    poll: Annotated[
        float, typer.Option(min=0.05, help="Seconds between looks at the file's modification time.")
    ] = 0.5,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds an announce may wait for its reply.")] = 2.0,
    nats: NatsOpt = DEFAULT_URL,
    creds: CredsOpt = None,
    prefix: PrefixOpt = DEFAULT_PREFIX,
) -> None:
    """Register services from a YAML file, check their health, and keep them registered."""
    listen = _listen(metrics) if metrics is not None else None
    try:
        # with --creds and no --tenant the tenant comes from the connection: any valid name stands in for it here
        load_config(config, tenant or ("creds" if creds is not None else None))
    except ConfigError as exc:
        fail(str(exc), 2)
    daemon_logging()
    opts = NatsOptions(nats, creds, prefix)

    async def body() -> None:
        async with opts.connected(tenant=tenant, name="disco-agent") as conn:
            agent = Agent(conn, config, default_tenant=tenant or conn.tenant, timeout=timeout, poll_interval=poll)
            runner: web.AppRunner | None = None
            try:
                if listen is not None:
                    runner = web.AppRunner(metrics_app(registry_for(agent)), access_log=None)
                    await runner.setup()
                    await web.TCPSite(runner, listen[0], listen[1]).start()
                async with anyio.create_task_group() as tg:
                    await tg.start(_reload_on_hup, agent)
                    try:
                        diff = await tg.start(agent.run)
                    except ConfigError as exc:  # the file changed (for the worse) since it was checked
                        raise CliError(str(exc), code=2) from None
                    warn(f"agent ready: {len(diff.added)} instance(s) from {config}; SIGHUP reloads, Ctrl-C stops")
            finally:
                if runner is not None:
                    with anyio.CancelScope(shield=True):
                        await runner.cleanup()

    run(body)


async def _reload_on_hup(agent: Agent, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
    with anyio.open_signal_receiver(signal.SIGHUP) as hups:
        task_status.started()
        async for _ in hups:
            agent.request_reload()


def register(app: typer.Typer) -> None:
    """Add ``disco agent`` to the ``disco`` command."""
    app.command("agent")(agent_command)
