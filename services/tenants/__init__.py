"""Tenants: one NATS account each, in operator/JWT mode with the full account resolver.

``jwt`` signs claims with nkeys and writes ``.creds`` files, ``operator`` holds the keys and the server
configuration, ``accounts`` builds a tenant's account JWT and pushes it (``$SYS.REQ.CLAIMS.UPDATE``, no reload),
``admin`` adds, re-keys and removes tenants, ``registry`` keeps them in DISCO's KV, ``relay`` restores change
events a tenant's stream missed, ``hook`` is ``disco up --auth``, ``convert`` upgrades a one-account data dir.
The README's security model section states the model and its guarantees.
"""

from __future__ import annotations

from services.tenants.admin import TenantAdmin
from services.tenants.creds import write_creds, write_secret
from services.tenants.hook import EmbeddedAuth, embedded_auth, init_operator, isolation_of
from services.tenants.operator import KEYS_FILE, OperatorKeys
from services.tenants.registry import Quota, TenantRecord, TenantRegistry

__all__ = [
    "KEYS_FILE", "EmbeddedAuth", "OperatorKeys", "Quota", "TenantAdmin", "TenantRecord", "TenantRegistry",
    "embedded_auth", "init_operator", "isolation_of", "write_creds", "write_secret",
]
