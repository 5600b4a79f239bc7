"""A gateway serves the tenants it holds credentials for, with isolation enforced by the NATS server
(``disco up --auth``, ``disco tenant add``, ``disco gateway --tenant NAME=CREDS``, all as users run them)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from anyio.streams.text import TextReceiveStream

import bus
from tests.gateway_support import Backend, Registration, free_port, poll

DISCO = [sys.executable, "-m", "services"]
ENV = {k: v for k, v in os.environ.items() if not k.startswith("DISCO_")}


async def _stop(proc: Any) -> None:
    with anyio.CancelScope(shield=True):
        if proc.returncode is None:
            proc.terminate()
            with anyio.move_on_after(10):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        await proc.aclose()


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """``disco up --auth`` with tenants acme and beta added; their credentials files."""
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    up = await anyio.open_process([*DISCO, "up", "--auth", "--port", str(port), "--data-dir", str(tmp_path / "up"),
                                   "--no-metrics"], env=ENV, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert up.stdout is not None
        seen = ""
        with anyio.fail_after(60):
            async for chunk in TextReceiveStream(up.stdout):
                seen += chunk
                if "admin credentials" in seen:
                    break
        admin = tmp_path / "up" / "auth" / "admin.creds"
        creds = {}
        for name in ("acme", "beta"):
            creds[name] = tmp_path / f"{name}.creds"
            with anyio.fail_after(60):
                await anyio.run_process([*DISCO, "tenant", "add", name, "--nats", url, "--creds", str(admin),
                                         "-o", str(creds[name])], env=ENV)
        yield {"url": url, "creds": creds}
    finally:
        await _stop(up)


async def _connect(url: str, creds: Path) -> bus.Connection | None:
    try:
        return await bus.connect(url, creds=creds)
    except bus.ConnectionFailed:
        return None  # the server may not have reloaded the new user yet


async def test_gateway_serves_only_tenants_it_has_credentials_for(secured: dict[str, Any]) -> None:
    url, creds = secured["url"], secured["creds"]
    acme = await poll(lambda: _connect(url, creds["acme"]), timeout=20, interval=0.2)
    backend = await Backend("a").start()
    reg = await Registration(acme, "web", address="127.0.0.1", port=backend.port, instance_id="a").start()
    gw_port = free_port()
    gw = await anyio.open_process([*DISCO, "gateway", "--nats", url, "--tenant", f"acme={creds['acme']}",
                                   "--listen", f"127.0.0.1:{gw_port}"], env=ENV, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async with aiohttp.ClientSession() as http:
            async def get(path: str) -> tuple[int, Any] | None:
                try:
                    async with http.get(f"http://127.0.0.1:{gw_port}{path}") as r:
                        return r.status, await r.json(content_type=None) if r.status != 200 else await r.text()
                except aiohttp.ClientError:
                    return None

            assert await poll(lambda: get("/acme/web/whoami"), timeout=30, interval=0.2) == (200, "a")
            status, body = await get("/beta/web/whoami") or (0, None)
            assert status == 404 and body["code"] == "not_found"
        # acme's credentials do not give beta's view: the gateway says so in one line and exits non-zero
        with anyio.fail_after(60):
            wrong = await anyio.run_process(
                [*DISCO, "gateway", "--nats", url, "--tenant", f"beta={creds['acme']}", "--listen", "127.0.0.1:0"],
                env=ENV, check=False)
        assert wrong.returncode == 1
        err = [ln for ln in wrong.stderr.decode().splitlines() if ln.startswith("disco: error:")]
        assert len(err) == 1 and "beta" in err[0] and "Traceback" not in wrong.stderr.decode(), wrong.stderr
    finally:
        await _stop(gw)
        await reg.kill()
        await backend.stop()
        await acme.close()
