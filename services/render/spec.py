"""What ``disco render`` is asked to do: its templates (``SRC:DEST[:COMMAND]``) and its quiescence window
(``MIN:MAX``), parsed from the command line with one clear error per bad value."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["SpecError", "TemplateSpec", "Wait", "parse_template", "parse_wait"]


class SpecError(ValueError):
    """A ``--template`` or ``--wait`` value that cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class TemplateSpec:
    """One template: rendered from ``source`` to ``dest``; ``command`` (a shell command) runs after each change of
    ``dest``'s content."""

    source: Path
    dest: Path
    command: str | None = None


@dataclass(frozen=True, slots=True)
class Wait:
    """Quiescence window, seconds: render once the view has been quiet for ``min``, but at most ``max`` after the
    first change of a burst (consul-template's ``-wait``). ``min == 0`` renders at each change."""

    min: float = 0.1
    max: float = 1.0


def parse_template(value: str) -> TemplateSpec:
    """``SRC:DEST[:COMMAND]``; the command may itself contain ``:``."""
    parts = value.split(":", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise SpecError(f"invalid template {value!r}: use SRC:DEST[:COMMAND]")
    command = parts[2].strip() if len(parts) == 3 else ""
    return TemplateSpec(Path(parts[0]), Path(parts[1]), command or None)


def parse_wait(value: str) -> Wait:
    """``MIN:MAX`` or ``MIN`` (then MAX is 4 x MIN, as consul-template does), seconds, 0 <= MIN <= MAX."""
    parts = value.split(":")
    try:
        if len(parts) == 1:
            lo = float(parts[0])
            hi = lo * 4
        elif len(parts) == 2:
            lo, hi = float(parts[0]), float(parts[1])
        else:
            raise ValueError
    except ValueError:
        raise SpecError(f"invalid wait {value!r}: use MIN:MAX in seconds, e.g. 0.5:5") from None
    if not (0 <= lo <= hi) or hi > 3600:
        raise SpecError(f"invalid wait {value!r}: need 0 <= MIN <= MAX <= 3600")
    return Wait(lo, hi)
