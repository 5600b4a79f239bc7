"""Operator commands: ``services``, ``deregister``, ``status-set``, ``maint``, ``status``, ``stats``.

``deregister``, ``status-set`` and ``maint`` act on one instance by id, for its own tenant's credentials or the
operator's (``--tenant`` then names the tenant). ``status`` and ``stats`` ask every aggregator of the prefix
(``<prefix>._sys.status``, the ``status`` endpoint of the ``disco-aggregator`` NATS micro service).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import anyio
import typer

from bus.client import request
from bus.client import snapshot as bus_snapshot
from bus.codec import encode
from bus.connection import Connection
from bus.models import AnnounceAck, Bye, Heartbeat, Instance, Status
from bus.subjects import validate_instance_id
from bus.watch import watch as bus_watch
from services.cli.common import (
    DEFAULT_PREFIX,
    DEFAULT_URL,
    CliError,
    CredsOpt,
    MaybeTenantOpt,
    NatsOpt,
    NatsOptions,
    PrefixOpt,
    out,
    run,
    service_cb,
    warn,
)
from services.cli.output import JsonOpt, dumps, table

__all__ = ["register"]

ServiceOpt = Annotated[str, typer.Option("--service", callback=service_cb, help="Service of the instance.")]
TimeoutOpt = Annotated[float, typer.Option(min=0.01, help="Seconds to wait for the aggregators.")]


def _id_cb(value: str) -> str:
    try:
        return validate_instance_id(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


IdOpt = Annotated[str, typer.Option("--id", "--instance-id", callback=_id_cb, help="Instance id.")]


async def _find(conn: Connection, service: str, iid: str, timeout: float) -> Instance:
    """The instance ``iid`` of ``service``, or a CliError naming what exists."""
    snap = await bus_snapshot(conn, services=(service,), timeout=timeout)
    insts = snap.services.get(service, ())
    for inst in insts:
        if inst.id == iid:
            return inst
    t = conn.tenant_or(None)
    if not insts:
        raise CliError(f"unknown service {service!r} (tenant {t!r}): no instance {iid!r}")
    raise CliError(f"no instance {iid!r} in service {service!r} (tenant {t!r}); see `disco ls {service}`")


# -- services -----------------------------------------------------------------------------------------------
def services(
    tenant: MaybeTenantOpt = None,
    as_json: JsonOpt = False,
    timeout: TimeoutOpt = 2.0,
    nats: NatsOpt = DEFAULT_URL,
    creds: CredsOpt = None,
    prefix: PrefixOpt = DEFAULT_PREFIX,
) -> None:
    """The tenant's service names with their instance counts (by status)."""
    opts = NatsOptions(nats, creds, prefix)

    async def body() -> None:
        async with opts.tenant_connection(tenant, name="disco-services") as conn:
            t = conn.tenant_or(None)
            snap = await bus_snapshot(conn, timeout=timeout)
        rows: list[dict[str, Any]] = []
        for name in sorted(snap.services):
            insts = snap.services[name]
            if not insts:
                continue
            counts = {s.value: sum(1 for i in insts if i.status is s) for s in Status}
            rows.append({"service": name, "instances": len(insts), **counts})
        if as_json:
            out(dumps({"tenant": t, "revision": snap.revision, "services": rows}))
            return
        if not rows:
            warn(f"no services (tenant {t!r})")
            return
        headers = ["SERVICE", "INSTANCES", *(s.value.upper() for s in Status)]
        for line in table(headers, [[r["service"], str(r["instances"]), *(str(r[s.value]) for s in Status)]
                                    for r in rows]):
            out(line)

    run(body)


# -- deregister ---------------------------------------------------------------------------------------------
def deregister(
    service: ServiceOpt,
    instance_id: IdOpt,
    tenant: MaybeTenantOpt = None,
    as_json: JsonOpt = False,
    timeout: TimeoutOpt = 2.0,
    nats: NatsOpt = DEFAULT_URL,
    creds: CredsOpt = None,
    prefix: PrefixOpt = DEFAULT_PREFIX,
) -> None:
    """Remove an instance by id now (a bye on its behalf), e.g. one whose process died with a long ttl.

    If the instance's process is still running it registers again on its next heartbeat.
    """
    opts = NatsOptions(nats, creds, prefix)

    async def body() -> None:
        async with opts.tenant_connection(tenant, name="disco-deregister") as conn:
            t = conn.tenant_or(None)
            await _find(conn, service, instance_id, timeout)
            ack = await request(conn, conn.subjects.bye(t, service), encode(Bye(id=instance_id)), AnnounceAck,
                                timeout)
        if as_json:
            out(dumps({"tenant": t, "service": service, "id": instance_id, "deregistered": ack.changed,
                       "revision": ack.revision}))
        elif ack.changed:
            out(f"deregistered {service}/{instance_id} (tenant {t}) at revision {ack.revision}")
        else:
            out(f"{service}/{instance_id} (tenant {t}) was already gone")

    run(body)


# -- status-set / maint -------------------------------------------------------------------------------------
async def _set_status(conn: Connection, service: str, iid: str, status: Status, timeout: float) -> tuple[str, int]:
    """Set the status of a running instance (a heartbeat with a status, on its behalf) and wait until the
    aggregators have written it: returns ("set" or "unchanged", revision)."""
    t = conn.tenant_or(None)
    current = await _find(conn, service, iid, timeout)
    if current.status is status:
        return "unchanged", 0
    async with bus_watch(conn, service, resync_interval=None) as w:
        await conn.nc.publish(conn.subjects.hb(t, service), encode(Heartbeat(id=iid, status=status)))
        with anyio.move_on_after(timeout):
            async for ev in w:
                if ev.instance.id == iid and ev.instance.status is status:
                    return "set", ev.revision
            raise CliError("the watch ended")
    raise CliError(f"no aggregator wrote the status of {service}/{iid} within {timeout:g} s")


def _status_result(as_json: bool, t: str, service: str, iid: str, status: Status, result: tuple[str, int]) -> None:
    what, revision = result
    if as_json:
        out(dumps({"tenant": t, "service": service, "id": iid, "status": status.value,
                   "changed": what == "set", "revision": revision or None}))
    elif what == "set":
        out(f"{service}/{iid} (tenant {t}) is now {status.value} (revision {revision})")
    else:
        out(f"{service}/{iid} (tenant {t}) is already {status.value}")


def status_set(
    service: ServiceOpt,
    instance_id: IdOpt,
    status: Annotated[Status, typer.Option("--status", help="The new status.")],
    tenant: MaybeTenantOpt = None,
    as_json: JsonOpt = False,
    timeout: TimeoutOpt = 5.0,
    nats: NatsOpt = DEFAULT_URL,
    creds: CredsOpt = None,
    prefix: PrefixOpt = DEFAULT_PREFIX,
) -> None:
    """Set the status of a running instance (passing, warning, critical, maintenance).

    Sent as a heartbeat carrying the status on the instance's behalf; the aggregators write it and publish an
    update (reason health). The instance keeps it until its owner announces another status (`disco announce`
    follows such changes, so its re-announces keep it).
    """
    opts = NatsOptions(nats, creds, prefix)

    async def body() -> None:
        async with opts.tenant_connection(tenant, name="disco-status-set") as conn:
            result = await _set_status(conn, service, instance_id, status, timeout)
            _status_result(as_json, conn.tenant_or(None), service, instance_id, status, result)

    run(body)


def maint(
    service: ServiceOpt,
    instance_id: IdOpt,
    enable: Annotated[
        bool, typer.Option("--enable/--disable", help="Enter maintenance, or leave it (back to passing).")
    ] = True,
    tenant: MaybeTenantOpt = None,
    as_json: JsonOpt = False,
    timeout: TimeoutOpt = 5.0,
    nats: NatsOpt = DEFAULT_URL,
    creds: CredsOpt = None,
    prefix: PrefixOpt = DEFAULT_PREFIX,
) -> None:
    """Put a running instance in maintenance (or take it out), like `consul maint`: resolves skip it."""
    opts = NatsOptions(nats, creds, prefix)
    status = Status.maintenance if enable else Status.passing

    async def body() -> None:
        async with opts.tenant_connection(tenant, name="disco-maint") as conn:
            result = await _set_status(conn, service, instance_id, status, timeout)
            _status_result(as_json, conn.tenant_or(None), service, instance_id, status, result)

    run(body)


# -- status / stats -----------------------------------------------------------------------------------------
async def gather_status(conn: Connection, timeout: float, quiet: float = 0.3) -> list[dict[str, Any]]:
    """The status of every aggregator of the prefix: replies to one request on ``<prefix>._sys.status``,
    gathered until ``quiet`` seconds pass without a new one (at most ``timeout`` s); sorted by id."""
    nc = conn.nc
    inbox = nc.new_inbox()
    replies: list[dict[str, Any]] = []
    sub = await nc.subscribe(inbox)
    try:
        await nc.publish(f"{conn.subjects.prefix}._sys.status", b"", reply=inbox)
        with anyio.move_on_after(timeout):
            while True:
                wait = quiet if replies else timeout
                try:
                    msg = await sub.next_msg(timeout=wait)
                except Exception:  # nats TimeoutError: quiet long enough
                    break
                if not msg.data:
                    if msg.headers and msg.headers.get("Status") == "503":
                        break  # "no responders": nobody subscribes to it, no need to wait
                    continue
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    continue
                if isinstance(data, dict):
                    replies.append(data)
    finally:
        try:
            await sub.unsubscribe()
        except Exception:
            pass
    return sorted(replies, key=lambda r: str(r.get("id", "")))


async def _statuses(opts: NatsOptions, timeout: float) -> list[dict[str, Any]]:
    async with opts.connected(name="disco-status") as conn:
        found = await gather_status(conn, timeout)
        denied = conn.denied.get(f"{opts.prefix}._sys.status")
    if denied:
        raise CliError(f"the NATS server does not allow these credentials to {denied} to {opts.prefix}._sys.status "
                       "(use the operator's credentials)")
    if not found:
        raise CliError(f"no aggregator answered on {opts.prefix}._sys.status "
                       "(is `disco up` or `disco aggregator` running with this --prefix?)")
    return found


def status(
    as_json: JsonOpt = False,
    timeout: TimeoutOpt = 2.0,
    nats: NatsOpt = DEFAULT_URL,
    creds: CredsOpt = None,
    prefix: PrefixOpt = DEFAULT_PREFIX,
) -> None:
    """Which aggregators are up: id, version, view revision, instances, read lag."""
    opts = NatsOptions(nats, creds, prefix)

    async def body() -> None:
        found = await _statuses(opts, timeout)
        if as_json:
            out(dumps({"prefix": prefix, "aggregators": [{k: v for k, v in a.items() if k != "counters"}
                                                         for a in found]}))
            return
        rows = [[str(a.get("id")), str(a.get("version")), "yes" if a.get("ready") else "no", str(a.get("revision")),
                 str(a.get("instances")), str(a.get("tenants")), f"{float(a.get('read_lag') or 0) * 1000:.1f}ms",
                 str(a.get("started") or "-")] for a in found]
        for line in table(["AGGREGATOR", "VERSION", "READY", "REVISION", "INSTANCES", "TENANTS", "READ LAG",
                           "STARTED"], rows):
            out(line)

    run(body)


def stats(
    as_json: JsonOpt = False,
    timeout: TimeoutOpt = 2.0,
    nats: NatsOpt = DEFAULT_URL,
    creds: CredsOpt = None,
    prefix: PrefixOpt = DEFAULT_PREFIX,
) -> None:
    """The status of every aggregator with its counters (announces refused, expired, events, ...)."""
    opts = NatsOptions(nats, creds, prefix)

    async def body() -> None:
        found = await _statuses(opts, timeout)
        if as_json:
            out(dumps({"prefix": prefix, "aggregators": found}))
            return
        for agg in found:
            out(f"aggregator {agg.get('id')} (disco {agg.get('version')}): revision {agg.get('revision')}, "
                f"{agg.get('instances')} instances of {agg.get('tenants')} tenants, "
                f"read lag {float(agg.get('read_lag') or 0) * 1000:.1f} ms")
            counters = agg.get("counters") or {}
            for line in table(["  COUNTER", "VALUE"], [[f"  {k}", str(v)] for k, v in sorted(counters.items())]):
                out(line)

    run(body)


def register(app: typer.Typer) -> None:
    """Add these commands to the ``disco`` command."""
    app.command()(services)
    app.command()(deregister)
    app.command("status-set")(status_set)
    app.command()(maint)
    app.command()(status)
    app.command()(stats)

