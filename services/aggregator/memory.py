"""Handing freed memory back to the operating system (issue 11: bytes of RSS per live instance).

A load or a registration burst allocates and frees millions of short-lived objects (messages, decoded records,
dict tables outgrown). CPython returns what it frees to the C allocator, and glibc keeps freed pages inside its
heap unless asked: the process then keeps the peak of a burst as its RSS for good. :func:`trim` asks glibc to
give free pages back (``malloc_trim(0)``); it is a no-op where glibc is not the allocator. :class:`Trimmer` calls
it once a quiet moment follows enough changes, so that a burst does not leave its peak behind.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import sys
from collections.abc import Callable

__all__ = ["BulkLoad", "Trimmer", "freeze_after_start", "trim"]

log = logging.getLogger("disco.aggregator.memory")


def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


_TRIM = _malloc_trim()


def trim() -> bool:
    """Give the C heap's free pages back to the system; False when that cannot be asked for here."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


class Trimmer:
    """Trims once a burst of changes is over: ``every`` changes or more since the last trim, and the changes now
    come in at less than ``calm`` a second (or not at all: :meth:`quiet`)."""

    def __init__(self, every: int = 20_000, calm: float = 1_000.0) -> None:
        self.every = every
        self.calm = calm
        self.changes = 0
        self.trims = 0
        self._window = 0
        self._window_start: float | None = None

    def note(self, n: int, now: float) -> None:
        """``n`` changes were applied at ``now`` (monotonic seconds)."""
        self.changes += n
        self._window += n
        if self._window_start is None:
            self._window_start = now
            return
        span = now - self._window_start
        if span >= 1.0:
            calm = self._window < self.calm * span
            self._window, self._window_start = 0, now
            if calm:
                self.quiet()

    def quiet(self) -> None:
        """No change for a while: trim if enough changed since the last trim."""
        if self.changes >= self.every:
            self.changes = 0
            if trim():
                self.trims += 1


class BulkLoad:
    """The cyclic garbage collector paused while a load runs, and what it loaded frozen out of its passes.

    A load allocates millions of objects and none of them cyclic garbage; each allocation burst made the collector
    walk the growing heap again (a third of a start's CPU with a million entries: issue 11). Paused from the
    watch's creation until the load verifies (or fails); a large verified load is then frozen (``gc.freeze``),
    so that later full collections do not walk the whole view each time. Nested loads (several followers in one
    process) resume the collector when the last one ends, and only if it was running before the first.
    """

    active = 0
    resume = False
    FREEZE_FROM = 50_000

    def __init__(self) -> None:
        self._open = False

    def __enter__(self) -> BulkLoad:
        if BulkLoad.active == 0:
            BulkLoad.resume = gc.isenabled()
            gc.disable()
        BulkLoad.active += 1
        self._open = True
        return self

    def done(self, keys: int) -> None:
        """The load is over (``keys`` loaded; 0 when it failed)."""
        if not self._open:
            return
        self._open = False
        BulkLoad.active -= 1
        if BulkLoad.active == 0:
            if keys >= self.FREEZE_FROM:
                gc.freeze()
            if BulkLoad.resume:
                gc.enable()

    def __exit__(self, *exc: object) -> None:
        self.done(0)


def freeze_after_start() -> None:
    """Once ready: move what exists now (modules, the loaded view) out of the cyclic collector's reach, and collect
    the young generation less often. The collector's full passes otherwise walk those ~70k+ objects again and again
    while announces grow the heap (a fifth of the aggregator's CPU in a 60k-announce run; README, Performance); nothing
    loaded at start is cyclic garbage later (entries and instances are freed by reference counting)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
