"""What every ``disco`` command shares: the NATS options, a connect helper, and the runner.

A command module (``services/cli/<group>.py``) declares its
options with the ``Annotated`` aliases below, so ``--nats``, ``--creds``, ``--prefix`` and ``--tenant`` read the
same environment variables and are checked the same way everywhere, and runs its async body with :func:`run`::

    @app.command()
    def hello(tenant: TenantOpt, nats: NatsOpt = DEFAULT_URL, creds: CredsOpt = None,
              prefix: PrefixOpt = DEFAULT_PREFIX) -> None:
        opts = NatsOptions(nats, creds, prefix)

        async def body() -> None:
            async with opts.connected(tenant=tenant) as conn:
                ...

        run(body)

:func:`run` promises: SIGINT and SIGTERM cancel the body (its ``finally`` blocks and shielded clean-ups run) and
the command exits 0; a third signal while it cleans up exits at once with 130 (a second one is only noted, so
that a double Ctrl-C does not leave a nats-server behind). Any error becomes ONE line
``disco: error: ...`` on stderr and exit 1 (never a traceback; ``--log-level debug`` logs it).

Check arguments before :func:`run` and raise :class:`typer.BadParameter` (a usage error: one line, exit 2); inside
the body raise :class:`CliError` (or let a :class:`bus.DiscoError` through) for a failure at run time.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVarTuple, Unpack

import anyio
import nats.errors
import typer
from pydantic import ValidationError

from bus.connection import DEFAULT_URL, Connection
from bus.connection import connect as bus_connect
from bus.errors import ConnectionFailed, DiscoError, InvalidName
from bus.subjects import DEFAULT_PREFIX, Subjects, validate_service, validate_tenant
from services.cli import connopts
from services.cli.logs import configure_logging, daemon_logging
from services.embedded import EmbeddedError
from services.natsserver import NatsServerError

__all__ = [
    "DEFAULT_PREFIX",
    "DEFAULT_URL",
    "CliError",
    "CredsOpt",
    "MaybeTenantOpt",
    "NatsOpt",
    "NatsOptions",
    "OptionalServiceArg",
    "PrefixOpt",
    "ServiceArg",
    "TenantOpt",
    "close_quietly",
    "configure_logging",
    "daemon_logging",
    "describe_error",
    "fail",
    "out",
    "prefix_cb",
    "run",
    "service_cb",
    "tenant_cb",
    "warn",
]

log = logging.getLogger("disco.cli")

Ts = TypeVarTuple("Ts")


class CliError(Exception):
    """An error a command reports as one line (``disco: error: <message>``) and exit code ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def __str__(self) -> str:
        return self.message


# -- option checks (usage errors: exit 2) ---------------------------------------------------------------------
def _check(validate: Callable[[str], str], value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return validate(value)
    except InvalidName as exc:
        raise typer.BadParameter(str(exc)) from None


def tenant_cb(value: str | None) -> str | None:
    return _check(validate_tenant, value)


def service_cb(value: str | None) -> str | None:
    return _check(validate_service, value)


def prefix_cb(value: str | None) -> str | None:
    def validate(p: str) -> str:
        return Subjects(p).prefix

    return _check(validate, value)


NatsOpt = Annotated[
    str,
    typer.Option(
        "--nats", "--server", envvar=["DISCO_NATS_URL", "NATS_URL"], metavar="URL[,URL]",
        help="NATS server URL(s), comma separated.", show_envvar=True,
    ),
]
CredsOpt = Annotated[
    Path | None,
    typer.Option(
        "--creds", envvar="DISCO_CREDS", metavar="FILE", exists=True, dir_okay=False, readable=True,
        help="NATS credentials (.creds) file.",
    ),
]
PrefixOpt = Annotated[
    str,
    typer.Option("--prefix", envvar="DISCO_PREFIX", callback=prefix_cb, help="Subject prefix of the disco system."),
]
TenantOpt = Annotated[
    str,
    typer.Option("--tenant", "-t", envvar="DISCO_TENANT", callback=tenant_cb, help="Tenant (a DNS label)."),
]
#: ``--tenant`` for commands that take the tenant from the credentials when it is not given
MaybeTenantOpt = Annotated[
    str | None,
    typer.Option("--tenant", "-t", envvar="DISCO_TENANT", callback=tenant_cb, show_default="from --creds",
                 help="Tenant (a DNS label); default: the tenant of the credentials."),
]
ServiceArg = Annotated[str, typer.Argument(callback=service_cb, metavar="SERVICE", help="Service name.")]
OptionalServiceArg = Annotated[
    str | None, typer.Argument(callback=service_cb, metavar="SERVICE", help="Only this service.")
]


@dataclass(frozen=True, slots=True)
class NatsOptions:
    """Where and as whom to connect: the values of ``--nats``, ``--creds`` and ``--prefix``."""

    servers: str = DEFAULT_URL
    creds: Path | None = None
    prefix: str = DEFAULT_PREFIX

    @asynccontextmanager
    async def connected(
        self, *, tenant: str | None = None, name: str | None = None, **options: Any
    ) -> AsyncIterator[Connection]:
        """:meth:`connect` for the duration of the block; the connection is drained on the way out even when the
        block was cancelled (a signal), within :data:`CLOSE_TIMEOUT` seconds."""
        conn = await self.connect(tenant=tenant, name=name, **options)
        try:
            yield conn
        finally:
            await close_quietly(conn)

    async def connect(self, *, tenant: str | None = None, name: str | None = None, **options: Any) -> Connection:
        """A :class:`bus.Connection`; raises :class:`bus.ConnectionFailed` when no server can be reached.

        While the first connect is tried, the connection's per-attempt warnings are held back (the failure
        becomes one error line); ``--log-level debug`` shows them.
        """
        conn_log = logging.getLogger("disco.connection")
        level, propagate = conn_log.level, conn_log.propagate
        seen = _ConnectErrors()
        conn_log.addHandler(seen)
        if not conn_log.isEnabledFor(logging.DEBUG):  # held back, but seen (the cause of a failure)
            conn_log.setLevel(logging.DEBUG)
            conn_log.propagate = False
        extras = connopts.current()
        options = {**extras.options, **options}
        if extras.tls is not None:
            options.setdefault("tls", extras.tls)
        # nats-py can wait for ever after some failed first attempts (a TLS handshake refused): bound it
        limit = CONNECT_ATTEMPT_TIMEOUT * 2 * max(1, len(self.servers.split(","))) + 1.0
        try:
            with anyio.fail_after(limit):
                return await bus_connect(
                    self.servers, tenant=tenant, creds=self.creds, prefix=self.prefix, name=name,
                    connect_timeout=CONNECT_ATTEMPT_TIMEOUT, **options,
                )
        except TimeoutError:
            cause = seen.last or f"no answer within {limit:g} s"
            if "SSL" in cause:
                cause += " (check --tlsca/--tlscert/--tlskey)"
            raise ConnectionFailed(f"cannot connect to NATS at {self.servers}: {cause}") from None
        finally:
            conn_log.removeHandler(seen)
            conn_log.setLevel(level)
            conn_log.propagate = propagate

    @asynccontextmanager
    async def tenant_connection(self, tenant: str | None, *, name: str | None = None) -> AsyncIterator[Connection]:
        """:meth:`connected` acting for ``tenant``, or for the tenant of the credentials when ``tenant`` is None.

        The credentials are asked through the connection (``Connection.tenant`` after connecting without a
        tenant), so any credential format the library understands works. A ``--tenant`` other than the
        credentials' is refused here in one line, before anything is sent.
        """
        conn = await self._tenant_conn(tenant, name)
        try:
            yield conn
        finally:
            await close_quietly(conn)

    async def _tenant_conn(self, tenant: str | None, name: str | None) -> Connection:
        if self.creds is None and not connopts.current().options:
            if tenant is None:
                raise CliError("no tenant: give --tenant (or DISCO_TENANT), or the credentials of a tenant", 2)
            return await self.connect(tenant=tenant, name=name)
        conn = await self.connect(tenant=None, name=name)
        own = conn.tenant
        if own is not None:
            if tenant is not None and tenant != own:
                await close_quietly(conn)
                raise CliError(f"these credentials are for tenant {own!r}, not {tenant!r}", 2)
            return conn
        await close_quietly(conn)
        if tenant is None:
            raise CliError("no tenant: these credentials are not a tenant's; give --tenant", 2)
        return await self.connect(tenant=tenant, name=name)


#: seconds per connection attempt of a command (the library's default)
CONNECT_ATTEMPT_TIMEOUT = 2.0


class _ConnectErrors(logging.Handler):
    """Remembers the last error the connection reported while connecting (its debug records)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.last = ""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("NATS error while connecting: "):
            self.last = message.removeprefix("NATS error while connecting: ")


async def close_quietly(conn: Connection, timeout: float = 3.0) -> None:
    """Drain ``conn`` (shielded from cancellation, at most ``timeout`` s), then close it whatever happened."""
    await conn.close(timeout)  # shielded from cancellation, bounded, falls back to a plain close


# -- output -------------------------------------------------------------------------------------------------------
def out(line: str) -> None:
    """One line on stdout, flushed at once (so a pipe sees every line as it happens)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def warn(message: str) -> None:
    """One ``disco: <message>`` line on stderr."""
    sys.stderr.write(f"disco: {message}\n")
    sys.stderr.flush()


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``disco: error: <message>`` on stderr and exit with ``code``."""
    warn(f"error: {message}")
    raise typer.Exit(code)


# -- errors -------------------------------------------------------------------------------------------------------
def _leaves(exc: BaseException) -> Iterable[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            yield from _leaves(sub)
    else:
        yield exc


def describe_error(exc: BaseException) -> str:
    """The one line a user sees for ``exc`` (the most telling error of an exception group)."""
    leaves: list[BaseException] = [e for e in _leaves(exc) if isinstance(e, Exception)] or [exc]
    plain = (CliError, DiscoError, NatsServerError, EmbeddedError)
    known = (*plain, ValidationError, nats.errors.Error, OSError)
    first = next((e for e in leaves if isinstance(e, known)), leaves[0])
    if isinstance(first, plain):
        return str(first)
    if isinstance(first, ValidationError):
        err = first.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        return f"invalid settings: {loc}: {err['msg']}"
    if isinstance(first, nats.errors.Error):
        return f"NATS: {str(first).removeprefix('nats: ') or type(first).__name__}"
    if isinstance(first, OSError) and first.strerror:
        where = f": {first.filename}" if first.filename else ""
        return f"{first.strerror}{where}"
    return f"unexpected {type(first).__name__}: {first}"


def _code_of(exc: BaseException) -> int:
    for e in _leaves(exc):
        if isinstance(e, CliError):
            return e.code
    return 1


# -- the runner ---------------------------------------------------------------------------------------------------
async def _until_signal(func: Callable[[Unpack[Ts]], Awaitable[int | None]], *args: *Ts) -> int:
    rc: int | None = 0
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        main_scope = anyio.CancelScope()

        async def on_signals() -> None:
            count = 0
            async for sig in signals:
                count += 1
                if count == 1:
                    log.info("%s received: stopping", signal.Signals(sig).name)
                    main_scope.cancel()
                elif count == 2:
                    warn("stopping cleanly (a third signal exits at once, without cleaning up)")
                else:
                    warn("exiting without cleaning up")
                    os._exit(130)

        async with anyio.create_task_group() as tg:
            tg.start_soon(on_signals)
            with main_scope:
                rc = await func(*args)
            tg.cancel_scope.cancel()
    return rc or 0


def run(func: Callable[[Unpack[Ts]], Awaitable[int | None]], *args: *Ts) -> None:
    """Run ``await func(*args)`` until it returns or SIGINT/SIGTERM arrives, then exit with its code (None: 0).

    Errors are reported as one line on stderr (see the module docstring); this function always ends the command
    by raising :class:`typer.Exit`.
    """
    try:
        rc = anyio.run(_until_signal, func, *args)
    except KeyboardInterrupt:  # before the signal receiver was installed
        raise typer.Exit(130) from None
    except Exception as exc:
        leaves = list(_leaves(exc))
        exit_ = next((e for e in leaves if isinstance(e, typer.Exit)), None)
        if exit_ is not None:
            raise typer.Exit(exit_.exit_code) from None
        if any(isinstance(e, BrokenPipeError) for e in leaves):  # stdout closed by the reader (`| head`)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(1) from None
        log.debug("command failed", exc_info=exc)
        fail(describe_error(exc), _code_of(exc))
    raise typer.Exit(rc)
