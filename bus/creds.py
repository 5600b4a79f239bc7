"""Credentials files: a NATS ``.creds`` file (user JWT + nkey seed; a disco tenant's user JWT names its tenant in
the tag ``disco-tenant:<t>``) or disco's older JSON form."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

from bus.errors import ConnectionFailed
from bus.subjects import validate_tenant

__all__ = ["TENANT_TAG", "read_json_creds", "tenant_of_creds"]

_CREDS_JWT = re.compile(r"-----BEGIN NATS USER JWT-----\s*([A-Za-z0-9_=.-]+)")
#: the tag of a disco tenant's user JWT naming its tenant (services/tenants/accounts.py writes it)
TENANT_TAG = "disco-tenant:"


def tenant_of_creds(path: Path) -> str | None:
    """The tenant named in a NATS ``.creds`` file's user JWT (tag ``disco-tenant:<t>``), None when it names none
    (an admin's or aggregator's credentials, or any other NATS user). Raise ConnectionFailed if the file is not
    a ``.creds`` file at all."""
    m = _CREDS_JWT.search(path.read_text(errors="replace"))
    if m is None:
        raise ConnectionFailed(f"credentials file {path} is neither a NATS .creds file (user JWT and nkey seed) "
                               "nor a disco JSON credentials file")
    try:
        payload = m.group(1).split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        tags = claims.get("nats", {}).get("tags") or []
    except (IndexError, ValueError, AttributeError):
        raise ConnectionFailed(f"credentials file {path}: the user JWT cannot be read") from None
    for tag in tags:
        if isinstance(tag, str) and tag.startswith(TENANT_TAG):
            return validate_tenant(tag[len(TENANT_TAG):])
    return None


def read_json_creds(path: Path) -> dict[str, str] | None:
    """A disco credentials file (``{"tenant": ..., "user": ..., "password": ...}``, written by ``disco tenant
    creds``), or None when ``path`` is something else (a NATS ``.creds`` file). Raise ConnectionFailed if it is
    JSON but not of that shape."""
    text = path.read_text(errors="replace")
    if not text.lstrip().startswith("{"):
        return None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConnectionFailed(f"credentials file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("user"), str) or not isinstance(
        data.get("password"), str
    ):
        raise ConnectionFailed(f"credentials file {path} must hold a JSON object with \"user\" and \"password\"")
    return {k: v for k, v in data.items() if isinstance(v, str)}
