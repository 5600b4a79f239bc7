"""TLS for every command and daemon, with a real nats-server that requires TLS and client certificates signed by
a CA generated here (openssl): flags, ``DISCO_TLS_*`` variables, a ``nats`` CLI context, ``-s`` and ``NATS_URL``."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from services.natsserver import NatsServer
from tests.helpers import require_binary
from tests.procs import ENV, run_disco, spawn

pytestmark = pytest.mark.integration


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([require_binary("openssl", "openssl"), *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca-key.pem", "-out", "ca.pem", "-days", "2", "-subj", "/CN=disco-ca",
             cwd=d)
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"),
                      ("client", "extendedKeyUsage=clientAuth\n")):
        (d / f"{name}.ext").write_text(ext)
        _openssl("req", *ec, "-keyout", f"{name}-key.pem", "-out", f"{name}.csr", "-subj", f"/CN=disco-{name}",
                 cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=d)


async def test_every_command_and_daemon_speaks_tls(tmp_path: Path, prefix: str) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    make_pki(pki)
    server = NatsServer(tmp_path / "nats", name="tls", extra_config=(
        f'tls {{\n  cert_file: "{pki}/server.pem"\n  key_file: "{pki}/server-key.pem"\n'
        f'  ca_file: "{pki}/ca.pem"\n  verify: true\n}}'
    ))
    server.start()
    tls = ["--tlscert", str(pki / "client.pem"), "--tlskey", str(pki / "client-key.pem"), "--tlsca",
           str(pki / "ca.pem")]
    base = ["--prefix", prefix]
    try:
        async with spawn("aggregator", "--nats", server.url, *base, *tls, "--bucket", f"{prefix}_view",
                         "--stream", f"{prefix}_changes") as agg:
            await agg.line(lambda x: "aggregator ready" in x, stream="err", timeout=30)

            # the TLS files from DISCO_TLS_* and the URL from NATS_URL; -s as the short --server
            env = {**ENV, "NATS_URL": server.url, "DISCO_TLS_CERT": str(pki / "client.pem"),
                   "DISCO_TLS_KEY": str(pki / "client-key.pem"), "DISCO_TLS_CA": str(pki / "ca.pem")}
            async with spawn("announce", "-t", "acme", "--service", "web", "-a", "10.0.0.1", "-p", "80",
                             "--id", "w1", *base, env=env) as announcer:
                await announcer.line(lambda x: x.strip() == "w1", timeout=30)

                flags = await run_disco("resolve", "web", "-t", "acme", "-s", server.url, *base, *tls, "--json")
                assert flags.returncode == 0, flags.stderr
                assert [i["id"] for i in json.loads(flags.stdout)["instances"]] == ["w1"]

                # a `nats` CLI context gives URL and TLS files
                ctx_dir = tmp_path / "config" / "nats" / "context"
                ctx_dir.mkdir(parents=True)
                (ctx_dir / "tlsctx.json").write_text(json.dumps({
                    "description": "test", "url": server.url, "token": "", "user": "", "password": "", "creds": "",
                    "nkey": "", "cert": str(pki / "client.pem"), "key": str(pki / "client-key.pem"),
                    "ca": str(pki / "ca.pem"),
                }))
                ctx_env = {**ENV, "XDG_CONFIG_HOME": str(tmp_path / "config")}
                via_ctx = await run_disco("ls", "-t", "acme", "--context", "tlsctx", *base, "--json", env=ctx_env)
                assert via_ctx.returncode == 0, via_ctx.stderr
                assert [i["id"] for i in json.loads(via_ctx.stdout)["instances"]] == ["w1"]
                missing = await run_disco("ls", "-t", "acme", "--context", "nope", *base, env=ctx_env)
                assert missing.returncode == 2 and "no nats context 'nope'" in missing.stderr.decode()

                # without a client certificate the server refuses: one line, exit 1
                plain = await run_disco("ls", "-t", "acme", "--nats", server.url, *base)
                assert plain.returncode == 1
                lines = plain.stderr.decode().strip().splitlines()
                assert len(lines) == 1 and lines[0].startswith("disco: error: cannot connect to NATS"), lines
                assert "SSL" in lines[0], lines
                half = await run_disco("ls", "-t", "acme", "--nats", server.url, *base, "--tlscert",
                                       str(pki / "client.pem"))
                assert half.returncode == 2 and "--tlskey" in half.stderr.decode()

                assert await announcer.stop(signal.SIGTERM) == 0
            assert await agg.stop(signal.SIGTERM) == 0
        assert "Traceback" not in "".join(agg.err + announcer.err)
    finally:
        server.stop()
