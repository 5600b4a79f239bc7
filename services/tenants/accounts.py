"""A tenant's NATS account: its JWT (imports of exactly its own subjects, quotas, revocations), its users, and
pushing or deleting it on a running server through the system account (``$SYS.REQ.CLAIMS.UPDATE/DELETE``).

What a tenant account holds: the service imports ``<p>.<t>.announce.*``, ``hb.*``, ``bye.*``, ``resolve.*`` and
``<p>.<t>.snapshot`` from DISCO and the stream imports ``<p>.<t>.changes.>``, ``<p>.<t>.live.>`` (each stored write of
its live view, republished by the server: bus.live) and ``<p>.<t>.ctl.>``, each with an
activation token DISCO signed for this account and these subjects; its own JetStream (its change stream, its
workers' consumers), capped in streams, consumers and bytes per stream (``max_bytes_required``: a stream without
a byte cap is refused). The per-account memory/disk totals stay unlimited (-1) on purpose: nats-server reserves
them against its own totals and, past them, silently leaves the account without JetStream.
"""

from __future__ import annotations

import json
import time
from typing import Any

from nats.aio.client import Client as NATS

from bus.creds import TENANT_TAG
from bus.errors import BadRequest, Unavailable
from services.tenants.jwt import activation_claims, encode, new_key, user_claims
from services.tenants.operator import (
    SERVICE_KINDS,
    STREAM_KINDS,
    OperatorKeys,
    account_limits,
    service_subject,
    stream_subject,
)
from services.tenants.registry import Quota, TenantRecord

__all__ = ["DEFAULTS", "ClaimsClient", "tenant_account_jwt", "tenant_user_jwt", "user_tag"]

#: server-side quotas of a tenant that sets none
DEFAULTS = Quota(max_streams=8, max_consumers=64, max_stream_bytes=256 * 1024 * 1024)
def user_tag(tenant: str) -> str:
    """The tag of a tenant's user JWT that names its tenant (what ``bus.connect`` reads from a ``.creds`` file)."""
    return f"{TENANT_TAG}{tenant}"


def _or(value: int | None, default: int | None) -> int:
    chosen = value if value is not None else default
    return -1 if chosen is None else chosen


def tenant_account_jwt(keys: OperatorKeys, record: TenantRecord, iat: int = 0) -> str:
    """The account JWT of ``record`` (issued at ``iat`` or later), signed by the operator's signing key."""
    t, p = record.name, keys.prefix
    imports: list[dict[str, Any]] = []
    for kind in SERVICE_KINDS:
        subject = service_subject(p, t, kind)
        imports.append({"name": kind, "subject": subject, "account": keys.disco.public, "type": "service",
                        "token": encode(activation_claims(subject, "service", record.account, f"{t}-{kind}"),
                                        keys.disco)})
    for kind in STREAM_KINDS:
        subject = stream_subject(p, t, kind)
        imports.append({"name": kind, "subject": subject, "account": keys.disco.public, "type": "stream",
                        "token": encode(activation_claims(subject, "stream", record.account, f"{t}-{kind}"),
                                        keys.disco)})
    q, d = record, DEFAULTS
    limits = account_limits(
        conn=_or(q.max_connections, d.max_connections), subs=_or(q.max_subscriptions, d.max_subscriptions),
        payload=_or(q.max_payload, d.max_payload), leaf=0, exports=0,
        mem_storage=-1, disk_storage=-1, streams=_or(q.max_streams, d.max_streams),
        consumer=_or(q.max_consumers, d.max_consumers), max_bytes_required=True,
        disk_max_stream_bytes=_or(q.max_stream_bytes, d.max_stream_bytes),
        mem_max_stream_bytes=_or(q.max_stream_bytes, d.max_stream_bytes),
    )
    nats: dict[str, Any] = {"imports": imports, "limits": limits, "signing_keys": [keys.tenant_signing.public],
                            "default_permissions": {"pub": {}, "sub": {}}, "type": "account", "version": 2}
    if record.revoked:
        nats["revocations"] = dict(record.revoked)
    return encode({"sub": record.account, "name": t, "iat": iat, "nats": nats}, keys.signing)


def tenant_user_jwt(keys: OperatorKeys, record: TenantRecord, user: str, *, expires_in: float | None = None,
                    name: str | None = None, relay: bool = False) -> str:
    """A user JWT of the tenant's account (signed by the tenants' signing key), tagged with the tenant's name.
    The user may not publish on its own ``changes``/``live``/``ctl`` subjects (only disco's events arrive there),
    except disco's own relay user (``relay``) on ``changes``."""
    t, p = record.name, keys.prefix
    claims = user_claims(
        user, name or t, issuer_account=record.account, tags=[user_tag(t)],
        pub_deny=[f"{p}.{t}.live.>", f"{p}.{t}.ctl.>"] + ([] if relay else [f"{p}.{t}.changes.>"]),
        expires=time.time() + expires_in if expires_in is not None else None,
    )
    return encode(claims, keys.tenant_signing)


def new_user() -> tuple[str, str]:
    """(public key, seed) of a fresh user nkey."""
    kp = new_key("U")
    return kp.public, kp.seed


class ClaimsClient:
    """Pushes and deletes account JWTs through a connection of the system account."""

    def __init__(self, nc: NATS, keys: OperatorKeys, timeout: float = 5.0) -> None:
        self.nc = nc
        self.keys = keys
        self.timeout = timeout

    async def _call(self, subject: str, body: str) -> dict[str, Any]:
        try:
            msg = await self.nc.request(subject, body.encode(), timeout=self.timeout)
        except Exception as exc:
            raise Unavailable(f"the NATS server did not take the account change ({subject}): {exc}") from None
        try:
            reply = json.loads(msg.data)
        except ValueError:
            raise Unavailable(f"unreadable answer to {subject}: {msg.data[:200]!r}") from None
        data = reply.get("data") if isinstance(reply, dict) else None
        if not isinstance(data, dict) or data.get("code") != 200:
            err = reply.get("error") if isinstance(reply, dict) else None
            raise BadRequest(f"the NATS server refused the account change: {err or data or reply}")
        return data

    async def push(self, account_jwt: str) -> None:
        """``$SYS.REQ.CLAIMS.UPDATE``: create or update an account (no reload; other accounts are untouched)."""
        await self._call("$SYS.REQ.CLAIMS.UPDATE", account_jwt)

    async def delete(self, account: str) -> None:
        """``$SYS.REQ.CLAIMS.DELETE`` (signed by the operator's signing key): the account's connections close."""
        body = encode({"sub": self.keys.signing.public, "name": "delete",
                       "nats": {"accounts": [account], "type": "generic", "version": 2}}, self.keys.signing)
        await self._call("$SYS.REQ.CLAIMS.DELETE", body)
