"""One Jinja2 template from a file: compiled once, compiled again when the file changes, rendered with errors that
name the template's file and line.

Undefined names are errors (``StrictUndefined``): a typo fails the render instead of silently writing an empty
value into a live configuration. Blocks are trimmed (``trim_blocks``, ``lstrip_blocks``) and the final newline is
kept, so a ``{% for %}`` line does not leave a blank line behind.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType
from typing import Any

import jinja2

from services.render.context import filters

__all__ = ["RenderError", "Template"]


class RenderError(Exception):
    """A template that cannot be compiled or rendered; ``str()`` is ``FILE:LINE: message``."""

    def __init__(self, source: Path, line: int | None, message: str) -> None:
        where = f"{source}:{line}" if line else str(source)
        super().__init__(f"{where}: {message}")
        self.source = source
        self.line = line
        self.message = message


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True,
        autoescape=False,
    )
    env.filters.update(filters())
    return env


def _template_line(tb: TracebackType | None, filename: str) -> int | None:
    """The line of the template where a render error happened (Jinja2 rewrites tracebacks so that frames of the
    template carry its file name and line)."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


class Template:
    """The template at ``source``; :meth:`render` recompiles it when the file's mtime or size changed."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self._env = _environment()
        self._stamp: tuple[int, int] | None = None
        self._compiled: jinja2.Template | None = None

    def _load(self) -> jinja2.Template:
        try:
            st = os.stat(self.source)
            stamp = (st.st_mtime_ns, st.st_size)
            if self._compiled is not None and stamp == self._stamp:
                return self._compiled
            text = self.source.read_text(encoding="utf-8")
        except OSError as exc:
            raise RenderError(self.source, None, f"cannot read the template: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise RenderError(self.source, None, f"the template is not UTF-8: {exc.reason}") from None
        try:
            code = self._env.compile(text, name=self.source.name, filename=str(self.source))
            compiled = self._env.template_class.from_code(self._env, code, self._env.make_globals(None))
        except jinja2.TemplateSyntaxError as exc:
            raise RenderError(self.source, exc.lineno, f"syntax error: {exc.message}") from None
        self._compiled, self._stamp = compiled, stamp
        return compiled

    def check(self) -> None:
        """Compile now; raise :class:`RenderError` for a missing file or a syntax error."""
        self._load()

    def render(self, context: dict[str, Any]) -> str:
        compiled = self._load()
        try:
            return compiled.render(context)
        except Exception as exc:
            line = _template_line(exc.__traceback__, str(self.source))
            message = exc.message if isinstance(exc, jinja2.TemplateError) and exc.message else str(exc)
            raise RenderError(self.source, line, f"{type(exc).__name__}: {message}") from None
