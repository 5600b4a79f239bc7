"""The ``disco render`` loop: a tenant's live view in, configuration files out, a command after each change.

The view comes from :func:`bus.watch` over the whole tenant (list once, then follow the change feed; never a poll).
Changes are coalesced by a quiescence window (:class:`~services.render.spec.Wait`): after the first change of a
burst the renderer waits until the view has been quiet for ``wait.min`` seconds, but no longer than ``wait.max``
after that first change, then renders every template once. A deploy of 50 instances is thus a handful of renders.

Promises, per template:

- the destination is written only when the rendered text differs from what the file holds, atomically
  (:func:`~services.render.output.write_atomic`), keeping its mode;
- its command (``SRC:DEST:COMMAND``) and the global ``--exec`` command run after a round that changed a file, never
  after one that left every file identical; each command runs at most once per round;
- a template that fails (syntax, undefined name, a helper's error) leaves the last good file in place, and the
  error is logged as ``FILE:LINE: message`` (once per distinct error); the next change tries again (a template
  file edited on disk is compiled again).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskStatus

from bus.client import snapshot
from bus.connection import Connection
from bus.models import Instance
from bus.watch import Watch, watch
from services.render.context import build_context
from services.render.output import read_current, run_command, write_atomic
from services.render.spec import TemplateSpec, Wait
from services.render.template import RenderError, Template

__all__ = ["Renderer", "Round"]

log = logging.getLogger("disco.render")

View = dict[str, dict[str, Instance]]


@dataclass(slots=True)
class Round:
    """What one render round did."""

    changed: list[TemplateSpec] = field(default_factory=list)
    failed: list[TemplateSpec] = field(default_factory=list)
    commands_failed: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.commands_failed


def _print(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


class Renderer:
    """Renders ``specs`` from the view of ``tenant`` (the connection's by default); see the module docstring."""

    def __init__(
        self,
        conn: Connection,
        specs: Sequence[TemplateSpec],
        *,
        tenant: str | None = None,
        exec_command: str | None = None,
        wait: Wait | None = None,
        dry_run: bool = False,
        command_timeout: float = 60.0,
        printer: Callable[[str], None] = _print,
    ) -> None:
        self.conn = conn
        self.tenant = conn.tenant_or(tenant)
        self.specs = list(specs)
        self.templates = [Template(s.source) for s in self.specs]
        self.exec_command = exec_command
        self.wait = wait or Wait()
        self.dry_run = dry_run
        self.command_timeout = command_timeout
        self.printer = printer
        #: rounds rendered so far, and commands run (tests and logs read them)
        self.rounds = 0
        self.commands_run = 0
        self._printed: dict[int, str] = {}
        self._errors: dict[int, str] = {}

    # -- one round ----------------------------------------------------------------------------------------------
    async def render_round(self, view: View) -> Round:
        result = Round()
        context = build_context(self.tenant, view)
        for index, (spec, tmpl) in enumerate(zip(self.specs, self.templates, strict=True)):
            try:
                text = tmpl.render(context)
            except RenderError as exc:
                if self._errors.get(index) != str(exc):  # once per distinct error, not at every change of the view
                    log.error("template not rendered, %s kept as it was: %s", spec.dest, exc)
                self._errors[index] = str(exc)
                result.failed.append(spec)
                continue
            if self._errors.pop(index, None) is not None:
                log.warning("template %s renders again", spec.source)
            if self.dry_run:
                if self._printed.get(index) != text:
                    self._printed[index] = text
                    self.printer(f"> {spec.dest}\n{text}")
                    result.changed.append(spec)
                continue
            if read_current(spec.dest) == text:
                continue
            try:
                write_atomic(spec.dest, text)
            except OSError as exc:
                log.error("%s not written: %s", spec.dest, exc.strerror or exc)
                result.failed.append(spec)
                continue
            log.info("%s rendered from %s", spec.dest, spec.source)
            result.changed.append(spec)
        self.rounds += 1
        if not self.dry_run:
            await self._commands(result)
        log.info("render round %d: %d changed, %d failed, %d unchanged", self.rounds, len(result.changed),
                 len(result.failed), len(self.specs) - len(result.changed) - len(result.failed))
        return result

    async def _commands(self, result: Round) -> None:
        commands: list[str] = []
        for spec in result.changed:
            if spec.command and spec.command not in commands:
                commands.append(spec.command)
        if result.changed and self.exec_command and self.exec_command not in commands:
            commands.append(self.exec_command)
        for command in commands:
            self.commands_run += 1
            rc = await run_command(command, self.command_timeout)
            if rc != 0:
                result.commands_failed += 1
                log.error("command %r failed with status %d", command, rc)

    # -- the loop ----------------------------------------------------------------------------------------------
    async def once(self, timeout: float = 10.0) -> Round:
        """List the view once (one snapshot: raises :class:`bus.NoAggregator` or :class:`bus.Timeout` when it
        cannot), render every template (running the commands of what changed), return the round."""
        snap = await snapshot(self.conn, tenant=self.tenant, timeout=timeout)
        view = {svc: {i.id: i for i in insts} for svc, insts in snap.services.items()}
        return await self.render_round(view)

    async def run(self, *, task_status: TaskStatus[Round] = anyio.TASK_STATUS_IGNORED) -> None:
        """Render now, report the first round through ``task_status``, then render after every burst of changes
        until cancelled."""
        async with watch(self.conn, tenant=self.tenant) as w:
            task_status.started(await self.render_round(w.view))
            while True:
                await self._burst(w)
                await self.render_round(w.view)

    async def _burst(self, w: Watch) -> None:
        """Return once a burst of changes is over (quiet for ``wait.min``, or ``wait.max`` after its start)."""
        await w.next()
        start = time.monotonic()
        while True:
            quiet = min(self.wait.min, self.wait.max - (time.monotonic() - start))
            if quiet <= 0:
                return
            with anyio.move_on_after(quiet) as scope:
                await w.next()
            if scope.cancelled_caught:
                return
