"""``disco dns`` as users run it: the real command in a subprocess, answered by ``dig``, stopped by SIGTERM with exit
0; bad flags give one line ``disco: error: ...``."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from bus.announce import announce
from services.natsserver import NatsServer, free_port
from tests.integration.dns_helpers import dig
from tests.procs import error_line, run_disco, spawn

pytestmark = pytest.mark.integration


async def test_disco_dns_answers_dig_and_stops_on_sigterm(
    nats_server: NatsServer, aggregator: Any, client: Any, prefix: str
) -> None:
    port = free_port()
    async with (
        announce(client, "billing", address="10.7.0.1", port=8080),
        spawn("dns", "--tenant", "acme", "--listen", f"127.0.0.1:{port}", "--metrics", "127.0.0.1:0",
              "--nats", nats_server.url, "--prefix", prefix) as proc,
    ):
        ready = await proc.line(lambda x: x.startswith("disco dns:"))
        assert f"udp+tcp 127.0.0.1:{port}" in ready and "acme" in ready
        # the first list may still be on its way (SERVFAIL until then, never an NXDOMAIN to cache): poll
        for _ in range(100):
            if (await dig(port, "billing.acme.disco", "A", "+short")).split() == ["10.7.0.1"]:
                break
        else:
            pytest.fail("disco dns never answered billing.acme.disco")
        assert "status: REFUSED" in await dig(port, "example.com", "A")
        assert "1 100 8080 0a070001.billing.acme.disco." in await dig(port, "_billing._tcp.acme.disco", "SRV")
        assert await proc.stop() == 0
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "no tenant to serve"),
        (["--tenant", "acme", "--all-tenants"], "not both"),
        (["--tenant", "Not_A_Label"], "invalid tenant name"),
        (["--tenant", "acme=/nonexistent/acme.creds"], "credentials file of tenant acme not found"),
        (["--tenant", "acme="], "no credentials file"),
        (["--tenant", "acme", "--listen", "localhost:53"], "is not an IP address"),
        (["--tenant", "acme", "--listen", "127.0.0.1"], "is not ADDR:PORT"),
        (["--tenant", "acme", "--listen", "127.0.0.1:70000"], "is not ADDR:PORT"),
        (["--tenant", "acme", "--metrics", "nowhere"], "is not ADDR:PORT"),
        (["--tenant", "acme", "--zone", "."], "root zone"),
        (["--tenant", "acme", "--zone", "a..b"], "not a domain name"),
        (["--tenant", "acme", "--ttl", "-1"], "--ttl"),
        (["--tenant", "acme", "--max-udp-size", "100"], "--max-udp-size"),
    ],
)
async def test_bad_flags_give_one_line(args: list[str], expected: str) -> None:
    result = await run_disco("dns", *args)
    assert result.returncode == 2
    assert expected in error_line(result.stderr)


async def test_runtime_failures_give_one_line(nats_server: NatsServer, prefix: str, tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        result = await run_disco("dns", "--tenant", "acme", "--listen", f"127.0.0.1:{port}",
                                 "--nats", nats_server.url, "--prefix", prefix)
        assert result.returncode == 1
        assert f"cannot listen on udp 127.0.0.1:{port}" in error_line(result.stderr)
    result = await run_disco("dns", "--tenant", "acme", "--nats", f"nats://127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert "cannot connect to NATS" in error_line(result.stderr)
