"""Shared test helpers (import as ``from tests.helpers import ...``)."""

from __future__ import annotations

import os
import shutil

import pytest

__all__ = ["require_binary"]


def require_binary(name: str, package: str) -> str:
    """The path of a system binary a test needs (installed by ``scripts/system_deps.sh``).

    Missing: the test fails under ``CI=true`` (CI must have run the set-up script) and is skipped with the reason
    elsewhere.
    """
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.access(f"/usr/sbin/{name}", os.X_OK) else None)
    if path is not None:
        return path
    reason = f"{name} is not installed (Debian package {package}; run scripts/system_deps.sh as root)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)
