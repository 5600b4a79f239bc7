"""After a single-server restart, JetStream takes a moment to recover (issue 8.5): an announce in that window gets
an acknowledgement or a clear `unavailable` (or, before the aggregator is back, no responders) within its
deadline, never a silent wait past it. Speed is measured by scripts/restart_stall.py, not here."""

from __future__ import annotations

import anyio
import nats.errors
import pytest

from bus.errors import Unavailable
from bus.models import Instance
from tests.conftest import eventually
from tests.faults import announce_raw

pytestmark = pytest.mark.integration

DEADLINE = 3.0  # the announce's own timeout; the aggregator gives up a KV write after write_deadline (1.5 s)


async def test_announces_during_jetstream_recovery_are_answered_within_their_deadline(
        fresh_server, start_aggregator, conn_factory):
    running = await start_aggregator(fresh_server.url)
    conn = await conn_factory(fresh_server.url, tenant="acme")
    await announce_raw(conn, "acme", "svc", Instance(id="before", address="10.0.0.1", port=1, ttl=300, seq=1))
    reconnects = 0

    async def reconnected() -> None:
        nonlocal reconnects
        reconnects += 1

    conn.on_reconnect(reconnected)
    for round_ in range(1, 3):
        fresh_server.stop()
        fresh_server.start()
        # our own connection back first (a request written to the dead socket is lost, whatever the aggregator does)
        await eventually(lambda r=round_: reconnects >= r and conn.nc.is_connected, timeout=20)
        outcomes: list[str] = []
        k = 0
        with anyio.fail_after(60):
            while outcomes.count("ack") < 3:
                k += 1
                inst = Instance(id=f"r{round_}-{k}", address="10.0.0.2", port=k, ttl=300, seq=1)
                try:
                    ack = await announce_raw(conn, "acme", "svc", inst, timeout=DEADLINE)
                    outcomes.append("ack" if ack.changed else "unchanged")
                except Unavailable:
                    outcomes.append("unavailable")
                except nats.errors.NoRespondersError:
                    outcomes.append("no responders")
                except nats.errors.TimeoutError:
                    outcomes.append("timeout")
                if outcomes[-1] != "ack":
                    await anyio.sleep(0.05)  # pacing between attempts, as a client's retry would
        assert "timeout" not in outcomes, outcomes
        assert "unchanged" not in outcomes, outcomes
    assert running.agg.view.get("acme", "svc", "before") is not None
