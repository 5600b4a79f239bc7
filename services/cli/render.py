"""``disco render``: keep configuration files in step with a tenant's live view (consul-template style).

::

    disco render --tenant acme \\
        --template upstreams.conf.j2:/etc/nginx/conf.d/upstreams.conf:'nginx -s reload' --wait 0.5:5

Each ``--template SRC:DEST[:COMMAND]`` is a Jinja2 template rendered to DEST; COMMAND (through the shell) runs after
each round that changed DEST, ``--exec CMD`` after each round that changed any file. ``--once`` renders, runs the
commands of what changed, and exits (1 when a template or a command failed); ``--dry-run`` prints the output
instead of writing it (and runs nothing). See :mod:`services.render` for the promises.
"""

from __future__ import annotations

from typing import Annotated

import anyio
import typer

from services.cli.common import (
    DEFAULT_PREFIX,
    DEFAULT_URL,
    CliError,
    CredsOpt,
    NatsOpt,
    NatsOptions,
    PrefixOpt,
    TenantOpt,
    daemon_logging,
    run,
    warn,
)
from services.render import (
    Renderer,
    RenderError,
    SpecError,
    Template,
    TemplateSpec,
    Wait,
    parse_template,
    parse_wait,
)

__all__ = ["register"]


def _templates(values: list[str]) -> list[TemplateSpec]:
    try:
        return [parse_template(v) for v in values]
    except SpecError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--template'") from None


def _wait(value: str) -> Wait:
    try:
        return parse_wait(value)
    except SpecError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--wait'") from None


def render_command(
    tenant: TenantOpt,
    template: Annotated[
        list[str],
        typer.Option("--template", "-T", metavar="SRC:DEST[:COMMAND]",
                     help="Template to render to DEST; COMMAND runs after each change of DEST (repeatable)."),
    ],
    exec_command: Annotated[
        str | None,
        typer.Option("--exec", "-e", metavar="CMD", help="Shell command run after each round that changed a file."),
    ] = None,
    wait: Annotated[
        str,
        typer.Option("--wait", envvar="DISCO_RENDER_WAIT", metavar="MIN:MAX",
                     help="Render after MIN s of quiet, at most MAX s after the first change of a burst."),
    ] = "0.1:1",
    once: Annotated[bool, typer.Option("--once", help="Render once and exit (1 if anything failed).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the output instead of writing it.")] = False,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="With --once: seconds to wait for the view (a snapshot) before giving up.")
    ] = 10.0,
    command_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds a command may run before it is killed.")
    ] = 60.0,
    nats: NatsOpt = DEFAULT_URL,
    creds: CredsOpt = None,
    prefix: PrefixOpt = DEFAULT_PREFIX,
) -> None:
    """Render templates from a tenant's live view, and run a command when the output changes."""
    specs = _templates(template)
    window = _wait(wait)
    if not specs:
        raise typer.BadParameter("give at least one --template SRC:DEST[:COMMAND]", param_hint="'--template'")
    if exec_command is not None and not exec_command.strip():
        raise typer.BadParameter("the command is empty", param_hint="'--exec'")
    for spec in specs:
        try:
            Template(spec.source).check()
        except RenderError as exc:
            raise typer.BadParameter(str(exc), param_hint="'--template'") from None
    if not once:
        daemon_logging()
    opts = NatsOptions(nats, creds, prefix)

    async def body() -> int:
        async with opts.connected(tenant=tenant, name="disco-render") as conn:
            renderer = Renderer(conn, specs, exec_command=exec_command, wait=window, dry_run=dry_run,
                                command_timeout=command_timeout)
            if once:
                result = await renderer.once(timeout)
                if result.failed:
                    raise CliError(f"{len(result.failed)} of {len(specs)} template(s) failed (see above)")
                if result.commands_failed:
                    raise CliError(f"{result.commands_failed} command(s) failed (see above)")
                return 0
            async with anyio.create_task_group() as tg:
                await tg.start(renderer.run)
                warn(f"render of tenant {tenant} ready ({len(specs)} template(s)); Ctrl-C to stop")
            return 0

    run(body)


def register(app: typer.Typer) -> None:
    """Add ``disco render`` to the ``disco`` command."""
    app.command("render")(render_command)
