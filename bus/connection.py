"""A NATS connection set up for discovery, and the events the client side needs from it.

:func:`connect` takes one or several server URLs, credentials (a ``.creds`` file, or user and password), the
tenant (which sets the per-tenant inbox prefix ``_INBOX.<tenant>``), and tunes reconnects for fast fail-over
(0.25 s between attempts instead of nats-py's 2 s, forever). Errors reported by the server through nats-py's
error callback are logged (never printed as tracebacks) and turned into listener calls: permission violations
are remembered so a request that the server refused fails with :class:`PermissionDenied`, and slow-consumer drops
are announced so watchers relist.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import nats
import nats.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from bus.creds import TENANT_TAG, read_json_creds, tenant_of_creds
from bus.errors import ConnectionFailed, PermissionDenied
from bus.subjects import DEFAULT_PREFIX, Subjects, validate_tenant

__all__ = [
    "DEFAULT_URL", "TENANT_TAG", "Connection", "NatsClient", "connect", "read_json_creds", "split_urls",
    "tenant_of_creds",
]

log = logging.getLogger("disco.connection")

DEFAULT_URL = "nats://127.0.0.1:4222"
ConnListener = Callable[[], Awaitable[None]]
SlowListener = Callable[[int], Awaitable[None]]
#: seconds before the first "still disconnected" line, doubled after each one up to the maximum
_DOWN_LOG_FIRST = 5.0
_DOWN_LOG_MAX = 60.0
#: errors nats-py reports when the connection drops (just before it starts reconnecting)
_CONNECTION_LOST = (nats.errors.UnexpectedEOF, nats.errors.StaleConnectionError, ConnectionError)
_PERM_RE = re.compile(r'permissions violation for (subscription|publish) to "([^"]+)"', re.IGNORECASE)


class NatsClient(NATS):
    """nats-py's client with one repair: a flush that timed out or was cancelled leaves its PING's future in
    ``_pongs``, and when that PONG came nats-py set the result of the cancelled future; the ``InvalidStateError``
    ended the read loop, so the connection read nothing more (every later request timed out). The PONG is now
    matched to its PING as before, and a future nobody waits for is left alone."""

    async def _process_pong(self) -> None:
        if self._pongs:
            future = self._pongs.pop(0)
            if not future.done():
                future.set_result(True)
            self._pongs_received += 1
            self._pings_outstanding = 0


def split_urls(urls: str | list[str] | None) -> list[str]:
    """``"a,b"`` or ``["a", "b"]`` into a list of URLs; None means ``DISCO_NATS_URL`` or the local default."""
    if urls is None:
        urls = os.environ.get("DISCO_NATS_URL") or DEFAULT_URL
    items = urls.split(",") if isinstance(urls, str) else list(urls)
    out = [u.strip() for u in items if u.strip()]
    if not out:
        raise ConnectionFailed("no NATS server URL given")
    return out


class Connection:
    """A connected NATS client plus what disco needs around it: tenant, subjects, connection events.

    Use as ``async with await connect(...) as conn``; closing drains the client.
    """

    def __init__(self, nc: NATS, *, tenant: str | None, subjects: Subjects) -> None:
        self.nc = nc
        self.tenant = tenant
        self.subjects = subjects
        self._reconnect_listeners: list[ConnListener] = []
        self._disconnect_listeners: list[ConnListener] = []
        self._slow_listeners: list[SlowListener] = []
        #: subjects the server refused us, most recent last (permission violations)
        self.denied: dict[str, str] = {}
        self._js: JetStreamContext | None = None
        #: False until the first connect succeeded: failed attempts of that connect are not worth a warning each
        self.established = False
        self._slow_logged: dict[int, float] = {}
        #: the last error of the first connect's attempts (what to tell the user if it fails)
        self.connect_error: BaseException | None = None
        self._connect_args: dict[str, Any] = {}
        self._denial_waiters: dict[str, list[asyncio.Future[str]]] = {}
        #: monotonic time the connection dropped (None while connected), and when to say it is still down
        self._down_since: float | None = None
        self._down_log_every = _DOWN_LOG_FIRST
        self._next_down_log = 0.0
        self._lost_because = ""
        #: True when the connection has credentials, so the server may refuse subjects (requests then race the
        #: server's permission error instead of waiting for their timeout)
        self.restricted = False
        #: the tenant the credentials file names (a disco tenant's ``.creds``): calls for another are refused here
        self.creds_tenant: str | None = None

    # -- listeners --------------------------------------------------------------------------------------------
    def on_reconnect(self, cb: ConnListener) -> Callable[[], None]:
        """Call ``cb`` after every reconnect; returns a function that removes it."""
        self._reconnect_listeners.append(cb)
        return lambda: self._reconnect_listeners.remove(cb) if cb in self._reconnect_listeners else None

    def on_disconnect(self, cb: ConnListener) -> Callable[[], None]:
        self._disconnect_listeners.append(cb)
        return lambda: self._disconnect_listeners.remove(cb) if cb in self._disconnect_listeners else None

    def on_slow_consumer(self, cb: SlowListener) -> Callable[[], None]:
        """Call ``cb(sid)`` when the client dropped messages of subscription ``sid`` (slow consumer)."""
        self._slow_listeners.append(cb)
        return lambda: self._slow_listeners.remove(cb) if cb in self._slow_listeners else None

    async def _fire(self, listeners: list[ConnListener]) -> None:
        for cb in list(listeners):
            try:
                await cb()
            except Exception:
                log.exception("connection listener failed")

    async def _error_cb(self, exc: Exception) -> None:
        if isinstance(exc, nats.errors.SlowConsumerError):
            now = time.monotonic()
            if now - self._slow_logged.get(exc.sid, -60.0) >= 10.0:  # nats-py reports every dropped message
                self._slow_logged[exc.sid] = now
                log.warning("slow consumer on %s (sid %s): messages are being dropped", exc.subject, exc.sid)
            for cb in list(self._slow_listeners):
                try:
                    await cb(exc.sid)
                except Exception:
                    log.exception("slow-consumer listener failed")
            return
        text = str(exc)
        m = _PERM_RE.search(text)
        if m:
            self.denied[m.group(2)] = m.group(1).lower()
            for waiter in self._denial_waiters.pop(m.group(2), ()):
                if not waiter.done():
                    waiter.set_result(m.group(1).lower())
            log.warning("NATS refused %s to %s", m.group(1).lower(), m.group(2))
            return
        if self.established:
            if self._down_since is not None:
                self._log_still_down(text or type(exc).__name__)
            elif isinstance(exc, _CONNECTION_LOST):
                self._lost_because = (text or type(exc).__name__).removeprefix("nats: ")
                log.debug("connection lost: %s", self._lost_because)  # the "disconnected" line says it
            else:
                log.warning("NATS error: %s", text or type(exc).__name__)
        else:
            # an authorization failure is the one to report, whatever the later attempts said (reset, EOF...)
            if not _is_auth_error(self.connect_error):
                self.connect_error = exc
            log.debug("NATS error while connecting: %s", text or type(exc).__name__)

    # -- connection-state logging: one line when the connection drops, repeats backed off while it stays down
    # (nats-py reports every failed attempt, every reconnect_time_wait), one line when it is back
    def _log_still_down(self, error: str) -> None:
        now = time.monotonic()
        assert self._down_since is not None
        if now < self._next_down_log:
            log.debug("reconnect attempt failed: %s", error)
            return
        log.warning("%s: still disconnected from NATS after %.0f s (last error: %s); retrying", self._name(),
                    now - self._down_since, error)
        self._down_log_every = min(self._down_log_every * 2, _DOWN_LOG_MAX)
        self._next_down_log = now + self._down_log_every

    def _name(self) -> str:
        return str(self.nc.options.get("name") or "connection")

    async def _reconnected_cb(self) -> None:
        url = self.nc.connected_url.netloc if self.nc.connected_url else "?"
        if self._down_since is not None:
            log.warning("%s: reconnected to nats://%s after %.1f s", self._name(), url,
                        time.monotonic() - self._down_since)
        else:
            log.warning("%s: reconnected to nats://%s", self._name(), url)
        self._down_since = None
        await self._fire(self._reconnect_listeners)

    async def _disconnected_cb(self) -> None:
        if not self.nc.is_closed and self.established and self._down_since is None:
            self._down_since = time.monotonic()
            self._down_log_every = _DOWN_LOG_FIRST
            self._next_down_log = self._down_since + self._down_log_every
            because = f" ({self._lost_because})" if self._lost_because else ""
            self._lost_because = ""
            log.warning("%s: disconnected from NATS%s; reconnecting", self._name(), because)
        await self._fire(self._disconnect_listeners)

    # -- helpers ----------------------------------------------------------------------------------------------
    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            self._js = self.nc.jetstream()
        return self._js

    def denial(self, subject: str) -> asyncio.Future[str]:
        """A future resolved (with "publish" or "subscription") if the server refuses ``subject``."""
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._denial_waiters.setdefault(subject, []).append(fut)
        return fut

    def forget_denial(self, subject: str, fut: asyncio.Future[str]) -> None:
        waiters = self._denial_waiters.get(subject)
        if waiters and fut in waiters:
            waiters.remove(fut)
            if not waiters:
                del self._denial_waiters[subject]

    async def clone(self, name: str | None = None, *, creds: str | None = None) -> Connection:
        """Another connection with the same servers, credentials (or ``creds``, a ``.creds`` file) and tenant (its
        own socket: traffic on one does not queue behind traffic on the other)."""
        args = dict(self._connect_args)
        if name is not None:
            args["name"] = name
        if creds is not None:
            args["creds"] = creds
        return await connect(**args)

    def tenant_or(self, tenant: str | None) -> str:
        """The tenant a call is for: the argument, else the connection's; raise if neither is set."""
        t = tenant if tenant is not None else self.tenant
        if t is not None and self.creds_tenant is not None and t != self.creds_tenant:
            raise PermissionDenied(f"these credentials are for tenant {self.creds_tenant!r}, not {t!r}")
        if t is None:
            from bus.errors import InvalidName

            raise InvalidName("no tenant given: pass tenant=... to the call or to connect()")
        return validate_tenant(t)

    async def close(self, timeout: float = 3.0) -> None:
        """Drain (finish pending callbacks), then close; bounded by ``timeout`` seconds, safe under cancellation."""
        if self.nc.is_closed:
            return
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(timeout):
                try:
                    await self.nc.drain()
                except Exception:
                    pass
            if not self.nc.is_closed:
                try:
                    await self.nc.close()
                except Exception:
                    pass

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


async def connect(
    servers: str | list[str] | None = None,
    *,
    tenant: str | None = None,
    creds: str | Path | None = None,
    user: str | None = None,
    password: str | None = None,
    name: str | None = None,
    prefix: str = DEFAULT_PREFIX,
    connect_timeout: float = 2.0,
    reconnect_time_wait: float = 0.25,
    max_reconnect_attempts: int = -1,
    **options: Any,
) -> Connection:
    """Connect to NATS for discovery. Raise :class:`ConnectionFailed` when no server can be reached.

    ``servers``: one URL, ``"url1,url2"`` or a list; default ``DISCO_NATS_URL`` or ``nats://127.0.0.1:4222``.
    ``tenant``: the tenant this connection acts for; sets the inbox prefix ``_INBOX.<tenant>`` that tenant
    credentials allow. ``creds``: a NATS ``.creds`` file (JWT + nkey seed); a disco tenant's names its tenant, which
    then need not be given, and a call for another tenant is refused with :class:`PermissionDenied` before it
    leaves the process (the old JSON form ``{"tenant", "user", "password"}`` is still read). Other keyword options
    go to ``nats.connect``.
    """
    urls = split_urls(servers)
    if tenant is not None:
        validate_tenant(tenant)
    again = {
        "servers": urls, "tenant": tenant, "creds": creds, "user": user, "password": password, "name": name,
        "prefix": prefix, "connect_timeout": connect_timeout, "reconnect_time_wait": reconnect_time_wait,
        "max_reconnect_attempts": max_reconnect_attempts, **options,
    }
    subjects = Subjects(prefix)
    nc = NatsClient()
    conn = Connection(nc, tenant=tenant, subjects=subjects)
    kwargs: dict[str, Any] = {
        "servers": urls,
        "name": name or f"disco-{tenant or 'client'}",
        "connect_timeout": connect_timeout,
        "reconnect_time_wait": reconnect_time_wait,
        "max_reconnect_attempts": max_reconnect_attempts,
        "error_cb": conn._error_cb,
        "reconnected_cb": conn._reconnected_cb,
        "disconnected_cb": conn._disconnected_cb,
        "ping_interval": 5,
        "max_outstanding_pings": 3,
    }
    if tenant is not None:
        kwargs["inbox_prefix"] = f"_INBOX.{tenant}"
    if creds is not None:
        path = Path(creds)
        if not path.is_file():  # noqa: ASYNC240 - a stat, once per connect
            raise ConnectionFailed(f"credentials file not found: {path}")
        file_creds = read_json_creds(path)
        if file_creds is None:
            kwargs["user_credentials"] = str(path)  # a NATS .creds file (JWT + nkey seed)
            conn.creds_tenant = tenant_of_creds(path)
            if conn.creds_tenant is not None and tenant is not None and tenant != conn.creds_tenant:
                raise PermissionDenied(f"these credentials are for tenant {conn.creds_tenant!r}, not {tenant!r}")
            if tenant is None and conn.creds_tenant is not None:
                tenant = conn.tenant = conn.creds_tenant
                kwargs["inbox_prefix"] = f"_INBOX.{tenant}"
        else:
            user = user or file_creds.get("user")
            password = password or file_creds.get("password")
            if tenant is None and file_creds.get("tenant"):
                tenant = validate_tenant(file_creds["tenant"])
                kwargs["inbox_prefix"] = f"_INBOX.{tenant}"
                conn.tenant = tenant
    if user is not None:
        kwargs["user"] = user
        kwargs["password"] = password or ""
    kwargs.update(options)
    try:
        # A first connect must fail fast: try each URL about twice, then give up (nats-py would otherwise retry
        # the list `max_reconnect_attempts` times, forever with -1). Reconnects later use the real setting.
        await nc.connect(**{**kwargs, "max_reconnect_attempts": 1})
    except Exception as exc:
        await _quiet_close(nc)
        cause: BaseException = exc
        if conn.connect_error is not None and (
            isinstance(exc, nats.errors.NoServersError) or _is_auth_error(conn.connect_error)
        ):
            cause = conn.connect_error
        raise ConnectionFailed(f"cannot connect to NATS at {','.join(urls)}: {_describe(cause)}") from None
    nc.options["max_reconnect_attempts"] = kwargs["max_reconnect_attempts"]
    conn.established = True
    conn._connect_args = again
    conn.restricted = creds is not None or user is not None or any(
        k in options for k in ("token", "nkeys_seed", "user_jwt_cb", "user_credentials"))
    return conn


def _is_auth_error(exc: BaseException | None) -> bool:
    return exc is not None and (
        isinstance(exc, nats.errors.AuthorizationError) or "authorization violation" in str(exc).lower()
    )


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    if _is_auth_error(exc):
        return "authorization violation: the server refused these credentials"
    if isinstance(exc, nats.errors.NoServersError | OSError) or not text:
        return "no server is reachable"
    return text.removeprefix("nats: ")


async def _quiet_close(nc: NATS) -> None:
    try:
        await nc.close()
    except Exception:
        pass
