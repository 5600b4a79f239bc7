"""The ``disco`` command, one module per command group.

``daemons`` (``up``, ``aggregator``), ``client`` (``announce``, ``resolve``, ``ls``, ``watch``), ``tenant``,
``worker``, and every daemon's own group (``dns``, ``render``, ``agent``, ``gateway``) when its module exists:
each module exposes ``register(app)`` and only parses arguments and calls its daemon's package.

Every command that connects takes ``--nats URL[,URL]`` (``DISCO_NATS_URL``), ``--creds FILE`` (``DISCO_CREDS``)
and ``--prefix`` (``DISCO_PREFIX``). Bad input is one line ``disco: error: ...`` on stderr: exit 2 for usage
errors (caught before anything is sent), 1 for failures at run time (no server, no aggregator, a refusal).
Long-running commands stop on SIGINT/SIGTERM with exit 0.
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

__all__ = ["app", "main"]

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



def main() -> None:
    """Entry point of the ``disco`` console script."""
    typer.main.get_command(app).main(prog_name="disco")


#: the command groups, in ``--help`` order; a module that is not there is simply not offered
GROUPS = ("daemons", "client", "tenant", "worker", "dns", "render", "agent", "gateway", "ops")
for _group in GROUPS:
    if importlib.util.find_spec(f"services.cli.{_group}") is not None:
        importlib.import_module(f"services.cli.{_group}").register(app)
