"""Secret files on disk: credentials, keys, generated server configuration.

Every secret is written to a new file created with ``O_EXCL`` and mode 0600 beside the target, then renamed over
it: whatever the target was before (a 0644 file, a symlink to somewhere else), the result is a fresh 0600 file
owned by the caller, and a reader never sees a half-written one.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

__all__ = ["write_creds", "write_secret"]


def write_secret(path: Path, text: str) -> None:
    """Replace ``path`` by a 0600 file holding ``text`` (O_EXCL temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_creds(path: Path, data: dict[str, Any] | str) -> None:
    """A credentials file only its owner can read: ``data`` is the text of a NATS ``.creds`` file, or (the old
    disco form) a JSON object."""
    write_secret(path, data if isinstance(data, str) else json.dumps(data) + "\n")
