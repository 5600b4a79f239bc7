"""The operator side of tenancy: the keys that sign every account and user, the fixed accounts (SYS, DISCO), and
the nats-server configuration of operator/JWT mode with the full account resolver.

One keys file (``disco-keys.json``, mode 0600) holds every seed the administrator needs:

- ``operator``: the operator's identity key; signs only the operator JWT (which lists the signing key below);
- ``signing``: the operator's signing key; signs every account JWT and the ``$SYS.REQ.CLAIMS.DELETE`` requests;
- ``system``: the system account (the server's own; ``$SYS.REQ.CLAIMS.UPDATE`` is published there);
- ``disco``: the DISCO account (live view, tenant registry, aggregators); signs the activation tokens that let one
  tenant account import exactly its own ``<prefix>.<tenant>.…`` subjects;
- ``tenant_signing``: a signing key listed in every tenant account; signs the tenants' user JWTs, so no tenant
  account seed is ever kept.

Whoever holds this file is the administrator; the aggregators need only their DISCO user credentials.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys

from bus.errors import BadRequest
from services.tenants.creds import write_secret
from services.tenants.jwt import KeyPair, encode, format_creds, new_key, user_claims

__all__ = ["KEYS_FILE", "OperatorKeys", "account_limits", "disco_exports"]

KEYS_FILE = "disco-keys.json"
_SEEDS = ("operator", "signing", "system", "disco", "tenant_signing")
#: the service subjects a tenant requests and the streams it receives, per kind (a tenant imports its own only)
SERVICE_KINDS = ("announce", "hb", "bye", "resolve", "snapshot")
STREAM_KINDS = ("changes", "live", "ctl")


def account_limits(**overrides: Any) -> dict[str, Any]:
    """Account limits (nats-io/jwt ``OperatorLimits``), unlimited (-1) unless overridden."""
    limits: dict[str, Any] = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                              "wildcards": True, "conn": -1, "leaf": -1}
    limits.update(overrides)
    return limits


def service_subject(prefix: str, tenant: str, kind: str) -> str:
    """The subject (with wildcards) of one imported service kind: ``<p>.<t>.announce.*``, ``<p>.<t>.snapshot``."""
    return f"{prefix}.{tenant}.snapshot" if kind == "snapshot" else f"{prefix}.{tenant}.{kind}.*"


def stream_subject(prefix: str, tenant: str, kind: str) -> str:
    return f"{prefix}.{tenant}.{kind}.>"


def disco_exports(prefix: str) -> list[dict[str, Any]]:
    """DISCO's exports: one per kind over every tenant, each needing an activation token (``token_req``) that
    names the importing account and that tenant's subjects only. Narrow on purpose: a tenant's own publishes on
    ``changes``/``live``/``ctl`` are not forwarded to DISCO (no service export covers them)."""
    out: list[dict[str, Any]] = [
        {"name": kind, "subject": service_subject(prefix, "*", kind), "type": "service", "token_req": True,
         "response_type": "Singleton"} for kind in SERVICE_KINDS
    ]
    out += [{"name": kind, "subject": stream_subject(prefix, "*", kind), "type": "stream", "token_req": True}
            for kind in STREAM_KINDS]
    return out


@dataclass(frozen=True, slots=True)
class OperatorKeys:
    operator: KeyPair
    signing: KeyPair
    system: KeyPair
    disco: KeyPair
    tenant_signing: KeyPair
    prefix: str

    @classmethod
    def generate(cls, prefix: str) -> OperatorKeys:
        return cls(new_key("O"), new_key("O"), new_key("A"), new_key("A"), new_key("A"), prefix)

    @classmethod
    def load(cls, path: Path) -> OperatorKeys:
        """Read a keys file; BadRequest (one line) when it is missing or not one."""
        try:
            data = json.loads(Path(path).read_text())
            seeds = {k: KeyPair(str(data[k])) for k in _SEEDS}
            keys = cls(**seeds, prefix=str(data["prefix"]))
            _ = [kp.public for kp in seeds.values()]  # every seed decodes
            return keys
        except FileNotFoundError:
            raise BadRequest(f"no operator keys file at {path} (created by `disco up --auth` or "
                             "`disco tenant init`)") from None
        except (OSError, ValueError, KeyError, TypeError, nkeys.NkeysError) as exc:
            raise BadRequest(f"{path} is not a disco keys file: {exc}") from None

    def save(self, path: Path) -> None:
        data = {k: getattr(self, k).seed for k in _SEEDS}
        data["prefix"] = self.prefix
        write_secret(path, json.dumps(data, indent=1) + "\n")

    # -- the fixed JWTs -------------------------------------------------------------------------------------------
    def operator_jwt(self) -> str:
        return encode({"sub": self.operator.public, "name": "disco", "nats": {
            "signing_keys": [self.signing.public], "system_account": self.system.public, "type": "operator",
            "version": 2}}, self.operator)

    def system_jwt(self) -> str:
        return encode({"sub": self.system.public, "name": "SYS", "nats": {
            "limits": account_limits(), "type": "account", "version": 2}}, self.signing)

    def disco_jwt(self) -> str:
        js = {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}
        return encode({"sub": self.disco.public, "name": "DISCO", "nats": {
            "exports": disco_exports(self.prefix), "limits": account_limits(**js), "type": "account",
            "version": 2}}, self.signing)

    # -- users ----------------------------------------------------------------------------------------------------
    def user_creds(self, account: str, name: str, *, expires_in: float | None = None, **perms: Any) -> str:
        """``.creds`` text of a new user of the ``account`` "system" or "disco" (signed by that account's key)."""
        issuer = {"system": self.system, "disco": self.disco}[account]
        user = new_key("U")
        expires = time.time() + expires_in if expires_in is not None else None
        token = encode(user_claims(user.public, name, expires=expires, **perms), issuer)
        return format_creds(token, user.seed)

    # -- the server ---------------------------------------------------------------------------------------------
    def server_config(self, resolver_dir: Path) -> str:
        """The nats-server configuration of operator mode: the operator, the system account, the full resolver
        (account JWTs pushed with ``$SYS.REQ.CLAIMS.UPDATE`` are kept in ``resolver_dir``; deletes allowed) and
        the SYS and DISCO accounts preloaded. Identical on every node of a cluster (each with its own dir)."""
        return "\n".join([
            "# generated by disco (operator mode): do not edit",
            f'operator: "{self.operator_jwt()}"',
            f"system_account: {self.system.public}",
            "resolver: {",
            "  type: full",
            f'  dir: "{Path(resolver_dir).as_posix()}"',
            "  allow_delete: true",
            '  interval: "2m"',
            '  timeout: "1.9s"',
            "}",
            "resolver_preload: {",
            f'  {self.system.public}: "{self.system_jwt()}"',
            f'  {self.disco.public}: "{self.disco_jwt()}"',
            "}",
        ]) + "\n"
