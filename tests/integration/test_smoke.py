from __future__ import annotations

from bus.announce import announce
from bus.client import resolve
from bus.watch import watch


async def test_announce_resolve_watch(aggregator, client):
    async with watch(client, "billing") as w:
        async with announce(client, "billing", address="10.0.0.1", port=8080, ttl=3) as reg:
            reply = await resolve(client, "billing")
            assert [i.id for i in reply.instances] == [reg.id]
            ev = await w.next()
            assert ev.type == "added" and ev.instance.id == reg.id
        ev = await w.next()
        assert ev.type == "removed" and ev.reason == "bye"
    reply = await resolve(client, "billing")
    assert reply.instances == ()
