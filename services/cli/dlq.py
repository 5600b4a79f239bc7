"""``disco dlq``: the dead letters of a tenant's worker groups (see :mod:`bus.deadletters`).

::

    disco dlq ls --tenant acme [--group billing-sync] [--json]
    disco dlq replay --tenant acme --group billing-sync 12 15     # or --all; --keep leaves the originals

``ls`` prints one line per dead letter, oldest first: its sequence in the dead-letter stream, when it was
dead-lettered, the group, the attempts, the event (service/instance, type, revision) and the handler's last
error. ``replay`` hands the chosen dead letters back to their group: one process of the group handles each
again (with the same retries; a new failure dead-letters it again), and the originals are deleted.
Registered by :mod:`services.cli.worker`.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from bus.deadletters import DeadLetter, dead_letters, replay
from bus.errors import InvalidName
from bus.subjects import DEFAULT_CHANGES_STREAM, Subjects
from services.cli.common import (
    DEFAULT_PREFIX,
    DEFAULT_URL,
    CliError,
    CredsOpt,
    NatsOpt,
    NatsOptions,
    PrefixOpt,
    TenantOpt,
    out,
    run,
    warn,
)

__all__ = ["dlq_app", "group_cb"]

dlq_app = typer.Typer(help="Dead letters of worker groups: list them, hand them back to their group.",
                      no_args_is_help=True)

StreamOpt = Annotated[
    str, typer.Option("--stream", envvar="DISCO_STREAM", help="Prefix of the per-tenant change streams.")
]


def group_cb(value: str | None) -> str | None:
    """Typer callback: a worker group name (a DNS label); shared with ``disco worker``."""
    if value is None:
        return None
    try:
        Subjects().dlq("x", value)
    except InvalidName as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


GroupOpt = Annotated[
    str | None, typer.Option("--group", "-g", callback=group_cb, metavar="GROUP", help="Only this worker group.")
]


def as_map(dl: DeadLetter) -> dict[str, Any]:
    ev = dl.event
    return {
        "seq": dl.seq, "time": dl.time.isoformat() if dl.time else None, "group": dl.group,
        "replay": dl.replay, "attempts": dl.attempts, "error": dl.error, "subject": dl.subject,
        "origin_stream": dl.origin_stream, "origin_seq": dl.origin_seq,
        "event": ev.model_dump(mode="json") if ev is not None else None,
    }


def as_line(dl: DeadLetter) -> str:
    ev = dl.event
    what = (f"{ev.service}/{ev.instance.id} {ev.type.value} rev {ev.revision}" if ev is not None
            else f"undecodable ({len(dl.data)} bytes)")
    when = dl.time.strftime("%Y-%m-%dT%H:%M:%SZ") if dl.time else "-"
    attempts = "-" if dl.attempts is None else str(dl.attempts)
    kind = " (replay pending)" if dl.replay else ""
    return f"{dl.seq}  {when}  {dl.group}{kind}  attempts {attempts}  {what}  {dl.error}"


@dlq_app.command("ls")
def ls_command(
    tenant: TenantOpt,
    group: GroupOpt = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, oldest first.")] = 1000,
    replays: Annotated[bool, typer.Option("--replays", help="Also replays not consumed yet.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="A JSON list.")] = False,
    stream: StreamOpt = DEFAULT_CHANGES_STREAM,
    nats: NatsOpt = DEFAULT_URL,
    creds: CredsOpt = None,
    prefix: PrefixOpt = DEFAULT_PREFIX,
) -> None:
    """List a tenant's dead letters, oldest first."""
    opts = NatsOptions(nats, creds, prefix)

    async def body() -> None:
        async with opts.connected(tenant=tenant, name="disco-dlq") as conn:
            found = await dead_letters(conn, tenant=tenant, group=group, stream_prefix=stream, limit=limit,
                                       include_replays=replays)
        if as_json:
            out(json.dumps([as_map(d) for d in found], separators=(",", ":"), ensure_ascii=False))
        else:
            for d in found:
                out(as_line(d))

    run(body)


@dlq_app.command("replay")
def replay_command(
    tenant: TenantOpt,
    group: Annotated[
        str, typer.Option("--group", "-g", callback=group_cb, metavar="GROUP", help="The worker group.")
    ],
    seqs: Annotated[
        list[int] | None, typer.Argument(metavar="SEQ...", help="Sequences shown by `disco dlq ls`.")
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every dead letter of the group.")] = False,
    keep: Annotated[bool, typer.Option("--keep", help="Leave the originals in the dead letters.")] = False,
    stream: StreamOpt = DEFAULT_CHANGES_STREAM,
    nats: NatsOpt = DEFAULT_URL,
    creds: CredsOpt = None,
    prefix: PrefixOpt = DEFAULT_PREFIX,
) -> None:
    """Hand dead letters back to their group (one process of the group handles each again)."""
    if bool(seqs) == all_:
        raise typer.BadParameter("give the sequences to replay, or --all", param_hint="'SEQ...'")
    opts = NatsOptions(nats, creds, prefix)

    async def body() -> None:
        async with opts.connected(tenant=tenant, name="disco-dlq") as conn:
            done = await replay(conn, group, None if all_ else seqs, tenant=tenant, stream_prefix=stream,
                                remove=not keep)
        if not done and all_:
            raise CliError(f"group {group} of tenant {tenant} has no dead letters")
        warn(f"replayed {len(done)} dead letter(s) to group {group}: {' '.join(map(str, done))}")

    run(body)
