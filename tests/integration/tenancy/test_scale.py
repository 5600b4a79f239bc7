"""1,000 tenants added one after another (each a pushed account JWT and a change stream in its own account)
while two other tenants keep announcing and resolving: no error, no dropped connection for them."""

from __future__ import annotations

import logging
import time

import anyio
import pytest

from bus.announce import announce
from bus.client import resolve
from services.tenants import Quota

pytestmark = pytest.mark.integration
log = logging.getLogger("disco.tests")

TENANTS = 1000


@pytest.mark.timeout(900)
async def test_a_thousand_tenants_added_while_two_others_keep_resolving(operator_system) -> None:
    sys_ = operator_system
    busy = [await sys_.tenant("busy-a"), await sys_.tenant("busy-b")]
    counts = {"ok": 0, "errors": 0}
    errors: list[str] = []
    done = anyio.Event()

    async def keep_resolving(conn, reg_id: str) -> None:
        while not done.is_set():
            try:
                ids = [i.id for i in (await resolve(conn, "web", timeout=5)).instances]
                assert ids == [reg_id], ids
                counts["ok"] += 1
            except Exception as exc:  # counted, reported below
                counts["errors"] += 1
                errors.append(repr(exc))
            await anyio.sleep(0.005)

    started = time.monotonic()
    async with announce(busy[0], "web", address="10.0.0.1", port=80) as ra, \
            announce(busy[1], "web", address="10.0.0.2", port=80) as rb, anyio.create_task_group() as tg:
        tg.start_soon(keep_resolving, busy[0], ra.id)
        tg.start_soon(keep_resolving, busy[1], rb.id)
        for i in range(TENANTS):
            await sys_.admin.add(f"t{i:04d}", Quota(max_streams=2, max_consumers=4, max_stream_bytes=1 << 20))
        took = time.monotonic() - started
        done.set()
    log.warning("added %d tenants in %.1f s (%.1f ms each); %d resolves meanwhile", TENANTS, took,
                took / TENANTS * 1000, counts["ok"])
    print(f"\nadded {TENANTS} tenants in {took:.1f} s ({took / TENANTS * 1000:.1f} ms each); "
          f"{counts['ok']} resolves by the two others meanwhile, {counts['errors']} errors")
    assert counts["errors"] == 0, errors[:5]
    assert counts["ok"] > 0
    for conn in busy:
        assert conn.nc.is_connected and conn.nc.stats["reconnects"] == 0
    assert len(await sys_.admin.list()) == TENANTS + 2
