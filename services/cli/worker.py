"""``disco worker``: run a shell command once per change event of a tenant, as a member of a durable worker group.

::

    disco worker --tenant acme --group addr-file --service billing --exec './update-upstreams.sh'

The command runs through the shell (``/bin/sh -c``) once per event, like a ``consul watch`` handler: the event
(the ChangeEvent wire map as JSON, one line) on its stdin, and in its environment ``DISCO_TENANT``,
``DISCO_SERVICE``, ``DISCO_EVENT_TYPE`` (added, updated, removed), ``DISCO_REVISION``, ``DISCO_INSTANCE_ID``,
``DISCO_GROUP``, ``DISCO_ATTEMPT`` and ``DISCO_STREAM_SEQ`` (empty with ``--non-durable``). Its stdout and stderr
are the worker's. Exit status 0 acknowledges the event; anything else (or overrunning ``--timeout``) counts as a
failure: the event comes back after a growing delay, and after ``--max-attempts`` failures it goes to the group's
dead-letter subject ``disco.<t>.dlq.<group>`` (kept by the tenant's dead-letter stream: ``disco dlq ls``,
``disco dlq replay``). Every process started with the same tenant, group and services shares the work (see
:mod:`bus.workers` for the guarantees). SIGINT/SIGTERM stop the worker: a command still running is terminated and
its event handed back to the group.

A command that cannot run at all is not an event's failure: its first word is looked up at start (a path must be
an executable file, a name must be found by the shell: a program on PATH, a builtin or a function), and exit status
126 (found, not executable) or 127 (not found) at run time stops the worker with that cause (exit 1) and hands
the event back to the group, instead of retrying and dead-lettering every event. The worker fails at once, too,
when the server has no JetStream or refuses the credentials.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import anyio
import typer
from anyio.abc import Process

from bus.models import ChangeEvent
from bus.subjects import DEFAULT_CHANGES_STREAM
from bus.workers import Delivery, StopWorker, Worker
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
    out,
    run,
    service_cb,
    warn,
)
from services.cli.dlq import dlq_app, group_cb
from services.cli.output import JsonOpt, dumps

__all__ = ["CommandFailed", "ExecHandler", "check_command", "register"]

_STREAM_PREFIX = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_SHELL_SYNTAX = set("$`(){};|&<>*?[]~\\")
_SETPRIV = shutil.which("setpriv") if sys.platform.startswith("linux") else None
#: exit statuses of sh -c when the command cannot run: it is the worker that is broken, not the event
_CANNOT_RUN = {126: "found but not executable", 127: "not found"}


def check_command(command: str) -> None:
    """Refuse (BadParameter) a command whose first word cannot run: a path that is not an executable file, or a
    name the shell does not know. Commands whose first word the shell computes are left to run time."""
    try:
        words = shlex.split(command)
    except ValueError:
        return  # quoting we do not parse: the shell will say
    while words and _ASSIGNMENT.match(words[0]):
        words.pop(0)  # VAR=value cmd ...
    if not words or _SHELL_SYNTAX & set(words[0]):
        return
    first = words[0]
    if "/" in first:
        path = Path(first)
        if not path.exists():
            raise typer.BadParameter(f"{first}: no such file", param_hint="'--exec'")
        if path.is_dir() or not os.access(path, os.X_OK):
            raise typer.BadParameter(f"{first}: not an executable file", param_hint="'--exec'")
        return
    found = subprocess.run(["/bin/sh", "-c", 'command -v -- "$1" >/dev/null 2>&1', "sh", first], check=False,
                           stdin=subprocess.DEVNULL)
    if found.returncode != 0:
        raise typer.BadParameter(f"{first}: command not found (by /bin/sh, PATH={os.environ.get('PATH', '')})",
                                 param_hint="'--exec'")


class CommandFailed(Exception):
    """The event's command exited with a non-zero status (or was killed)."""


class StartAt(StrEnum):
    all = "all"
    new = "new"


class ExecHandler:
    """A worker handler that runs ``command`` through the shell per event (see the module docstring)."""

    def __init__(self, command: str, *, kill_grace: float = 2.0) -> None:
        self.command = command
        self.kill_grace = kill_grace

    def environment(self, ev: ChangeEvent, d: Delivery) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "DISCO_TENANT": ev.tenant, "DISCO_SERVICE": ev.service, "DISCO_EVENT_TYPE": ev.type.value,
            "DISCO_REVISION": str(ev.revision), "DISCO_INSTANCE_ID": ev.instance.id, "DISCO_GROUP": d.group,
            "DISCO_ATTEMPT": str(d.attempt), "DISCO_STREAM_SEQ": "" if d.stream_seq is None else str(d.stream_seq),
        })
        return env

    def argv(self) -> str | list[str]:
        """What is started: ``/bin/sh -c COMMAND``, under ``setpriv --pdeathsig TERM`` where util-linux has it, so
        that the command is stopped even when the worker is killed with SIGKILL (it runs in a session of its own,
        out of reach of the terminal's signals)."""
        if _SETPRIV is None:
            return self.command
        return [_SETPRIV, "--pdeathsig", "TERM", "--", "/bin/sh", "-c", self.command]

    async def __call__(self, ev: ChangeEvent, d: Delivery) -> None:
        data = json.dumps(ev.model_dump(mode="json"), separators=(",", ":")).encode() + b"\n"
        proc = await anyio.open_process(
            self.argv(), stdin=subprocess.PIPE, stdout=None, stderr=None, env=self.environment(ev, d),
            start_new_session=True,  # its own process group: stopped with all its children, spared the tty's ^C
        )
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._feed, proc, data)
                rc = await proc.wait()
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self._stop(proc)
        if rc in _CANNOT_RUN:
            raise StopWorker(f"the command cannot run (exit status {rc}: {_CANNOT_RUN[rc]}): the worker stops and "
                             f"the event goes back to the group")
        if rc != 0:
            why = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exited with status {rc}"
            raise CommandFailed(f"command {why}")

    async def _feed(self, proc: Process, data: bytes) -> None:
        assert proc.stdin is not None
        try:
            await proc.stdin.send(data)
            await proc.stdin.aclose()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass  # the command does not read its stdin: fine

    async def _stop(self, proc: Process) -> None:
        """Terminate the command's process group if it still runs (cancelled or timed out), then reap it."""
        if proc.returncode is None:
            self._signal_group(proc, signal.SIGTERM)
            with anyio.move_on_after(self.kill_grace):
                await proc.wait()
            if proc.returncode is None:
                self._signal_group(proc, signal.SIGKILL)
                await proc.wait()
        await proc.aclose()

    @staticmethod
    def _signal_group(proc: Process, sig: signal.Signals) -> None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass


def _services_cb(values: list[str] | None) -> list[str]:
    return [v for v in (service_cb(x) for x in values or ()) if v is not None]


def _stream_cb(value: str) -> str:
    if not _STREAM_PREFIX.fullmatch(value):
        raise typer.BadParameter(f"invalid stream prefix {value!r}: use 1-64 letters, digits, '_' and '-'")
    return value


def worker_command(
    tenant: TenantOpt,
    group: Annotated[
        str,
        typer.Option("--group", "-g", callback=group_cb, metavar="GROUP",
                     help="Worker group (a DNS label): processes of one group share the events."),
    ],
    command: Annotated[
        str, typer.Option("--exec", "-e", metavar="CMD", help="Shell command run per event (event JSON on stdin).")
    ],
    service: Annotated[
        list[str] | None,
        typer.Option("--service", "-s", callback=_services_cb, metavar="SERVICE",
                     help="Only this service's events (repeatable)."),
    ] = None,
    max_attempts: Annotated[int, typer.Option(min=1, help="Failed attempts before the dead-letter subject.")] = 5,
    concurrency: Annotated[int, typer.Option(min=1, help="Commands run at once (1 keeps the stream order).")] = 1,
    timeout: Annotated[
        float | None, typer.Option(min=0.001, help="Seconds a command may run before it counts as failed.")
    ] = None,
    retry_delay: Annotated[
        float, typer.Option(min=0.001, help="Seconds before the first retry (doubles per attempt, at most 60).")
    ] = 1.0,
    ack_wait: Annotated[
        float, typer.Option(min=0.1, help="Seconds without word before a dead worker's events are redelivered.")
    ] = 30.0,
    start: Annotated[
        StartAt, typer.Option(help="A new group starts with the oldest retained event (all) or the next (new).")
    ] = StartAt.all,
    non_durable: Annotated[
        bool, typer.Option("--non-durable", help="Core NATS queue group: faster, but events can be lost.")
    ] = False,
    stream: Annotated[
        str,
        typer.Option("--stream", envvar="DISCO_STREAM", callback=_stream_cb,
                     help="Prefix of the per-tenant change streams (as the aggregator's --stream)."),
    ] = DEFAULT_CHANGES_STREAM,
    replicas: Annotated[
        int | None,
        typer.Option(min=1, max=5, help="Replicas of the change stream if this worker must create it (as the "
                     "aggregators' --replicas); without it, on a cluster, the worker waits for their stream."),
    ] = None,
    nats: NatsOpt = DEFAULT_URL,
    creds: CredsOpt = None,
    prefix: PrefixOpt = DEFAULT_PREFIX,
    as_json: JsonOpt = False,
) -> None:
    """Run a command once per change event of a tenant, sharing the events with the group's other processes."""
    if not command.strip():
        raise typer.BadParameter("the command is empty", param_hint="'--exec'")
    check_command(command)
    daemon_logging()
    opts = NatsOptions(nats, creds, prefix)
    handler = ExecHandler(command)

    async def body() -> None:
        async with opts.connected(tenant=tenant, name=f"disco-worker-{group}") as conn:
            w = Worker(
                conn, group, handler, services=service or (), durable=not non_durable, max_attempts=max_attempts,
                concurrency=concurrency, handler_timeout=timeout, retry_delay=retry_delay, ack_wait=ack_wait,
                start="new" if start is StartAt.new else "all", stream_prefix=stream, stream_replicas=replicas,
            )
            try:
                async with anyio.create_task_group() as tg:
                    await tg.start(w.run)
                    how = ("non-durable queue group" if non_durable
                           else f"durable consumer {w.consumer_name} on {w.stream}")
                    warn(f"worker {group} of tenant {tenant} ready ({how}); Ctrl-C to stop")
                    if as_json:  # the command's own output stays its own: stdout gets this one object
                        out(dumps({"worker": group, "tenant": conn.tenant_or(tenant), "ready": True,
                                   "durable": not non_durable, "stream": None if non_durable else w.stream,
                                   "consumer": None if non_durable else w.consumer_name}))
            except* StopWorker as group_:
                raise CliError(str(group_.exceptions[0])) from None

    run(body)


def register(app: typer.Typer) -> None:
    """Add ``disco worker`` and ``disco dlq`` to the ``disco`` command."""
    app.command("worker")(worker_command)
    app.add_typer(dlq_app, name="dlq")
