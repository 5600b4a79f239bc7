"""Credentials files on disk."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["write_creds"]


def write_creds(path: Path, data: dict[str, Any]) -> None:
    """A credentials file only its owner can read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
        f.write("\n")
