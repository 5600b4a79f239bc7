"""Small helpers shared by the client modules."""

from __future__ import annotations

__all__ = ["sole_exception"]


def sole_exception(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one error inside a task group's exception group (the caller's own exception, or why a background task
    failed), so that a context manager built on a task group raises what the caller raised, not a group."""
    leaves = list(group.exceptions)
    while len(leaves) == 1 and isinstance(leaves[0], BaseExceptionGroup):
        leaves = list(leaves[0].exceptions)
    return leaves[0] if len(leaves) == 1 else group
