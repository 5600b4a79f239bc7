"""The ``disco`` command, one module per command group.

``daemons`` (``up``, ``aggregator``), ``client`` (``announce``, ``resolve``, ``ls``, ``watch``), ``ops``
(``services``, ``deregister``, ``status-set``, ``maint``, ``status``, ``stats``), ``tenant``, ``worker``, and every
daemon's own group (``dns``, ``render``, ``agent``, ``gateway``) when its module exists: each module exposes
``register(app)`` and only parses arguments and calls its daemon's package. ``help [COMMAND]``, ``-h``,
``--version`` and shell completion are defined here.

Every command that connects takes ``--nats/--server URL[,URL]`` (``DISCO_NATS_URL``, then ``NATS_URL``),
``--creds FILE`` (``DISCO_CREDS``) and ``--prefix`` (``DISCO_PREFIX``), plus the options
:func:`services.cli.connopts.add_connection_options` gives them all (TLS files, ``nats`` contexts, ``-s``). Bad
input is one line ``disco: error: ...`` on stderr: exit 2 for usage errors (caught before anything is sent), 1 for
failures at run time (no server, no aggregator, a refusal). Long-running commands stop on SIGINT/SIGTERM with
exit 0. The reference is the README's command section.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from services.cli.common import configure_logging, warn
from services.cli.connopts import add_connection_options

__all__ = ["app", "main"]


def _plain_metavars(command: Any) -> None:
    """Name every option's value by the option (``--tag TAG``, ``--status [passing|...]``) instead of typer's
    Python type names (``<list[str]>``), in ``command`` and its subcommands."""
    for param in getattr(command, "params", ()):
        if param.param_type_name == "argument":
            param.display_type_rich = lambda ctx: None  # the name says it: "SERVICE", not "SERVICE <str>"
        if param.metavar is not None or getattr(param, "is_flag", False) or getattr(param, "count", False):
            continue
        desc = getattr(param, "type_descriptor", None)
        if desc is not None and desc.is_choice and desc.choices:
            param.metavar = "[" + "|".join(str(getattr(c, "value", c)) for c in desc.choices) + "]"
        elif param.name:
            name = param.name.upper()
            param.metavar = next((s for s in ("PORT", "DIR", "ID", "FILE") if name.endswith(f"_{s}")), name)
    for sub in getattr(command, "commands", {}).values():
        _plain_metavars(sub)


class DiscoGroup(TyperGroup):
    """Reports every usage error as one line ``disco: error: ...`` (exit 2) instead of a usage box."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _plain_metavars(self)

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
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
)


class LogLevel(StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


def version_line() -> str:
    """``disco <package version> (protocol <wire version>)``."""
    from services.aggregator.micro import PROTOCOL_VERSION, package_version

    return f"disco {package_version()} (protocol {PROTOCOL_VERSION})"


def _version_cb(value: bool) -> None:
    if value:
        sys.stdout.write(version_line() + "\n")
        raise typer.Exit(0)


@app.callback()
def _root(
    log_level: Annotated[
        LogLevel | None,
        typer.Option("--log-level", envvar="DISCO_LOG_LEVEL", case_sensitive=False, show_default="warning",
                     help="Log level on stderr (daemons: info)."),
    ] = None,
    version: Annotated[
        bool,
        typer.Option("--version", "-V", callback=_version_cb, is_eager=True,
                     help="Print the package and protocol versions and exit."),
    ] = False,
) -> None:
    configure_logging(log_level.value if log_level is not None else None)


@app.command("help")
def help_(
    ctx: typer.Context,
    command: Annotated[str | None, typer.Argument(metavar="[COMMAND]", help="The command to explain.")] = None,
) -> None:
    """Show the help of disco or of one command."""
    root = ctx.parent
    assert root is not None
    group = root.command
    if command is None:
        sys.stdout.write(root.get_help() + "\n")
        return
    sub = group.get_command(root, command) if hasattr(group, "get_command") else None
    if sub is None:
        raise typer.BadParameter(f"no such command {command!r} (see `disco help`)", param_hint="'COMMAND'")
    with sub.make_context(command, ["--help"], parent=root, resilient_parsing=True) as sub_ctx:
        sys.stdout.write(sub.get_help(sub_ctx) + "\n")



def main() -> None:
    """Entry point of the ``disco`` console script."""
    typer.main.get_command(app).main(prog_name="disco")


#: the command groups, in ``--help`` order; a module that is not there is simply not offered
GROUPS = ("daemons", "client", "tenant", "worker", "dns", "render", "agent", "gateway", "ops")
for _group in GROUPS:
    if importlib.util.find_spec(f"services.cli.{_group}") is not None:
        importlib.import_module(f"services.cli.{_group}").register(app)
# TLS, `nats` contexts and `-s` for every command that connects, whatever module defines it
add_connection_options(app)
