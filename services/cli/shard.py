"""``disco shard``: what a sharded deployment needs from the NATS server (services/aggregator/shard.py).

``disco shard config N`` prints the server's subject mappings for N shards; ``disco shard of TENANT… --shards N``
names the shard of each tenant (the server's partition, computed here the same way).
"""

from __future__ import annotations

from typing import Annotated

import typer

from services.cli.common import DEFAULT_PREFIX, PrefixOpt, out

__all__ = ["parse_shard", "register"]

_MAX = 1024
CountArg = Annotated[int, typer.Argument(min=1, max=_MAX, help="Number of shards.", show_default=False)]


def parse_shard(value: str | None, flag: str = "--shard") -> str | None:
    """``K/N`` normalised, or a usage error naming ``flag``."""
    from services.aggregator.shard import Shard

    if value is None:
        return None
    try:
        return Shard.parse(value).label
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=f"'{flag}'") from None


def config(count: CountArg, prefix: PrefixOpt = DEFAULT_PREFIX) -> None:
    """Print the nats-server `mappings` block that partitions the subjects of PREFIX by tenant into COUNT shards
    (put it in every server's configuration, then run `disco aggregator --shard K/COUNT` for each K)."""
    from services.aggregator.shard import server_config

    out(server_config(prefix, count).rstrip("\n"))


def of(
    tenants: Annotated[list[str], typer.Argument(help="Tenant names.", show_default=False)],
    shards: Annotated[int, typer.Option("--shards", min=1, max=_MAX, help="Number of shards.")],
) -> None:
    """Print the shard of each tenant among --shards (as the server's `partition` computes it)."""
    from bus.errors import InvalidName
    from bus.subjects import validate_tenant
    from services.aggregator.shard import partition

    for t in tenants:
        try:
            validate_tenant(t)
        except InvalidName as exc:
            raise typer.BadParameter(str(exc), param_hint="'TENANTS'") from None
        out(f"{t} {partition(t, shards)}")


def register(app: typer.Typer) -> None:
    """Add ``disco shard`` to the ``disco`` command."""
    group = typer.Typer(help="Sharding aggregators by tenant: the server's subject mappings.", no_args_is_help=True)
    group.command()(config)
    group.command()(of)
    app.add_typer(group, name="shard")
