"""Binding a durable pull consumer, for the workers: create or bind it, wait for (or create) its stream, and fail
at once, with the cause, when waiting cannot help: no JetStream on the server or for the account, credentials
that may not use the stream, a consumer of that name with another configuration."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import anyio
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext, api

from bus.connection import Connection
from bus.errors import BadRequest, ConnectionFailed, PermissionDenied, Unavailable

__all__ = ["NO_JETSTREAM", "bind_pull", "clustered", "jetstream_announced", "refusal"]

log = logging.getLogger("disco.workers")

_STREAM_NOT_FOUND = 10059
#: seconds of "no JetStream responders" after which a server that announces JetStream is taken not to have it
_NO_JS_GRACE = 5.0
NO_JETSTREAM = ("JetStream is not enabled on the NATS server (or for this account): start nats-server with -js "
                "(or a jetstream block in its config); durable workers keep their place in JetStream "
                "(--non-durable does not need it)")


def _server_info(conn: Connection) -> dict[str, object]:
    info = getattr(conn.nc, "_server_info", None)  # nats-py keeps the server's INFO here (no public accessor)
    return info if isinstance(info, dict) else {}


def jetstream_announced(conn: Connection) -> bool:
    """True when the server we are connected to says (in its INFO) that it runs JetStream."""
    return bool(_server_info(conn).get("jetstream"))


def clustered(conn: Connection) -> bool:
    """True when the server we are connected to is part of a cluster (its INFO names one)."""
    return bool(_server_info(conn).get("cluster"))


def refusal(conn: Connection, stream: str) -> PermissionDenied | None:
    """The server's refusal of what using ``stream`` needs (its JetStream API subjects, our inbox), if one came."""
    mine = stream.lower()
    for subject, kind in conn.denied.items():
        s = subject.lower()  # nats-py lower-cases the server's error text
        if s.startswith("_inbox.") or (s.startswith(("$js.api.", "$js.ack.")) and mine in s.split(".")):
            verb = "subscribe" if kind.startswith("sub") else "publish"
            return PermissionDenied(
                f"the NATS server does not allow these credentials to {verb} to {subject}: they must be the "
                f"tenant's own, allowing JetStream consumers on stream {stream}"
            )
    return None


async def bind_pull(
    conn: Connection, stream: str, config: api.ConsumerConfig, *, who: str,
    create: Callable[[], Awaitable[bool]] | None = None, waiting: str = "",
) -> JetStreamContext.PullSubscription:
    """Create (or bind to) the durable consumer ``config`` on ``stream`` and return its pull subscription.

    A missing stream: ``create()`` is awaited once per attempt (True if it made the stream), else the stream is
    waited for (logged once, with ``waiting``). Retries while JetStream does not answer, for ``_NO_JS_GRACE``
    seconds at most (a restarting server); raises :class:`Unavailable` at once when the server announces no
    JetStream or says the account has none, :class:`PermissionDenied` when the server refused the request,
    :class:`BadRequest` for a consumer of that name with another configuration.
    """
    js = conn.js
    delay, said_waiting, no_js_since = 0.1, False, None
    # a refused request only times out (the server's refusal comes as an error of the connection at once): a short
    # first timeout turns a refusal into PermissionDenied within a second; later attempts wait longer
    timeout = 1.0
    while True:
        try:
            await js.add_consumer(stream, config, timeout=timeout)
            break
        except nats.js.errors.NotFoundError as exc:
            if exc.err_code != _STREAM_NOT_FOUND:
                raise
            no_js_since = None
            if create is not None and await create():
                continue
            if not said_waiting:
                said_waiting = True
                log.info("%s: waiting for stream %s%s", who, stream, waiting)
        except nats.js.errors.BadRequestError as exc:
            raise BadRequest(
                f"durable consumer {config.durable_name} on stream {stream} exists with another configuration "
                f"({exc.description}): delete it or use another group name"
            ) from None
        except nats.js.errors.ServiceUnavailableError as exc:
            refused = refusal(conn, stream)
            if refused is not None:
                raise refused from None
            now = time.monotonic()
            no_js_since = no_js_since or now
            text = (exc.description or "").lower()
            if not jetstream_announced(conn) or "not enabled" in text or now - no_js_since > _NO_JS_GRACE:
                raise Unavailable(NO_JETSTREAM) from None
            log.info("%s: JetStream not answering yet; retrying", who)
        except TimeoutError:
            refused = refusal(conn, stream)
            if refused is not None:
                raise refused from None
            log.info("%s: JetStream did not answer in time; retrying", who)
            timeout = 5.0
        except nats.errors.ConnectionClosedError:
            raise ConnectionFailed("the NATS connection is closed") from None
        await anyio.sleep(delay)
        delay = min(delay * 2, 2.0)
    return await js.pull_subscribe_bind(durable=config.durable_name or "", stream=stream)
