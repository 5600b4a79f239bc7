"""NATS JWTs written by hand: nkeys, the four claim kinds disco needs (operator, account, activation, user), and the
standard ``.creds`` file.

The claim shapes are those of nats-io/jwt v2 (``operator_claims.go``, ``account_claims.go``,
``activation_claims.go``, ``user_claims.go``): a JWT is ``base64url(header).base64url(claims).base64url(sig)``
with header ``{"typ":"JWT","alg":"ed25519-nkey"}``, the signature an ed25519 signature of the first two parts by
the issuer's nkey, and ``jti`` the base32 SHA-512/256 of the claims serialised with an empty ``jti``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import Any

import nkeys

__all__ = [
    "KeyPair", "activation_claims", "auth_options", "decode", "encode", "format_creds", "new_key", "parse_creds",
    "user_claims",
]

_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
_PREFIXES = {"O": nkeys.PREFIX_BYTE_OPERATOR, "A": nkeys.PREFIX_BYTE_ACCOUNT, "U": nkeys.PREFIX_BYTE_USER}


@dataclass(frozen=True, slots=True)
class KeyPair:
    """An nkey: ``seed`` (``S…``, secret) and ``public`` (``O…``/``A…``/``U…``)."""

    seed: str

    @property
    def public(self) -> str:
        return str(nkeys.from_seed(self.seed.encode()).public_key.decode())

    def sign(self, data: bytes) -> bytes:
        return bytes(nkeys.from_seed(self.seed.encode()).sign(data))


def new_key(kind: str) -> KeyPair:
    """A fresh nkey of ``kind`` "O" (operator), "A" (account) or "U" (user)."""
    seed = nkeys.encode_seed(os.urandom(32), _PREFIXES[kind])
    return KeyPair(seed.decode())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode(claims: dict[str, Any], signer: KeyPair) -> str:
    """Sign ``claims`` (``sub``, ``name``, ``nats`` at least) as ``signer``; sets ``iss``, ``iat`` and ``jti``.

    ``iat`` is the current time in whole seconds, never lower than a given ``iat`` (callers that must issue
    increasing JWTs, such as account updates, pass the previous one + 1)."""
    body = dict(claims)
    body["iss"] = signer.public
    body["iat"] = max(int(time.time()), int(body.get("iat", 0)))
    body["jti"] = ""
    digest = hashlib.new("sha512_256", json.dumps(body, separators=(",", ":")).encode()).digest()
    body["jti"] = base64.b32encode(digest).decode().rstrip("=")
    head = _b64(json.dumps(_HEADER, separators=(",", ":")).encode())
    payload = _b64(json.dumps(body, separators=(",", ":")).encode())
    sig = signer.sign(f"{head}.{payload}".encode())
    return f"{head}.{payload}.{_b64(sig)}"


def decode(token: str) -> dict[str, Any]:
    """The claims of a JWT, unverified (what a client reads from its own credentials); ValueError if malformed."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise ValueError("not a JWT")
    try:
        claims = json.loads(_unb64(parts[1]))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not a JWT: {exc}") from None
    if not isinstance(claims, dict):
        raise ValueError("not a JWT: claims are not an object")
    return claims


def activation_claims(subject: str, kind: str, importer: str, name: str) -> dict[str, Any]:
    """An activation token's claims: account ``importer`` may import the ``kind`` ("service"/"stream") export
    ``subject`` of the issuing account."""
    return {"sub": importer, "name": name, "nats": {"subject": subject, "kind": kind, "type": "activation",
                                                     "version": 2}}


def user_claims(
    user: str, name: str, *, issuer_account: str | None = None, tags: list[str] | None = None,
    pub_deny: list[str] | None = None, sub_deny: list[str] | None = None, pub_allow: list[str] | None = None,
    sub_allow: list[str] | None = None, expires: float | None = None,
) -> dict[str, Any]:
    """A user's claims; ``issuer_account`` when the JWT is signed by one of the account's signing keys."""
    pub: dict[str, list[str]] = {}
    sub: dict[str, list[str]] = {}
    if pub_allow:
        pub["allow"] = pub_allow
    if pub_deny:
        pub["deny"] = pub_deny
    if sub_allow:
        sub["allow"] = sub_allow
    if sub_deny:
        sub["deny"] = sub_deny
    nats: dict[str, Any] = {"pub": pub, "sub": sub, "subs": -1, "data": -1, "payload": -1, "type": "user",
                            "version": 2}
    if issuer_account:
        nats["issuer_account"] = issuer_account
    if tags:
        nats["tags"] = tags
    claims: dict[str, Any] = {"sub": user, "name": name, "nats": nats}
    if expires is not None:
        claims["exp"] = int(expires)
    return claims


_CREDS = """-----BEGIN NATS USER JWT-----
{jwt}
------END NATS USER JWT------

************************* IMPORTANT *************************
NKEY Seed printed below can be used to sign and prove identity.
NKEYs are sensitive and should be treated as secrets.

-----BEGIN USER NKEY SEED-----
{seed}
------END USER NKEY SEED------

*************************************************************
"""


def format_creds(user_jwt: str, seed: str) -> str:
    """The standard NATS ``.creds`` text (as ``nsc`` writes it; nats-py and the ``nats`` CLI read it)."""
    return _CREDS.format(jwt=user_jwt, seed=seed)


def parse_creds(text: str) -> tuple[str, str]:
    """(user JWT, seed) of a ``.creds`` text; ValueError if it is not one."""
    blocks: list[str] = []
    lines = iter(text.splitlines())
    for line in lines:
        if line.startswith("-----BEGIN"):
            value = next(lines, "").strip()
            if value:
                blocks.append(value)
    if len(blocks) < 2 or not blocks[1].startswith("SU"):
        raise ValueError("not a NATS .creds file (user JWT and nkey seed)")
    return blocks[0], blocks[1]


def auth_options(creds: str) -> dict[str, Any]:
    """``nats.connect`` keyword arguments that authenticate with the ``.creds`` text ``creds`` held in memory
    (no file: for the short-lived users the administrator mints for itself)."""
    user_jwt, seed = parse_creds(creds)

    def sign(nonce: str) -> bytes:
        return base64.b64encode(KeyPair(seed).sign(nonce.encode()))

    return {"user_jwt_cb": lambda: bytearray(user_jwt.encode()), "signature_cb": sign}
