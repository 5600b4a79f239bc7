"""Logging of the ``disco`` command: one handler on stderr, warning by default, info for daemons."""

from __future__ import annotations

import logging
import sys

__all__ = ["configure_logging", "daemon_logging"]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_log_explicit = False


class _Stderr:
    """Whatever ``sys.stderr`` is when a record is written (test runners swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(level: str | None) -> None:
    """Log to stderr at ``level`` (debug, info, warning, error; default warning)."""
    global _log_explicit
    _log_explicit = level is not None
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_disco", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(_Stderr())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler._disco = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(_LEVELS[level] if level is not None else logging.WARNING)


def daemon_logging() -> None:
    """Daemons (``disco up``, ``disco aggregator``) log at info unless a level was chosen."""
    if not _log_explicit:
        logging.getLogger().setLevel(logging.INFO)
