"""Counters of what the aggregator did and refused, per tenant; served on ``<prefix>._sys.stats``."""

from __future__ import annotations

from collections import Counter

__all__ = ["Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.counters: Counter[tuple[str, str]] = Counter()

    def inc(self, name: str, tenant: str = "", n: int = 1) -> None:
        self.counters[(name, tenant)] += n

    def get(self, name: str, tenant: str | None = None) -> int:
        if tenant is not None:
            return self.counters[(name, tenant)]
        return sum(v for (n, _), v in self.counters.items() if n == name)

    def as_map(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for (name, tenant), value in self.counters.items():
            out.setdefault(name, {})[tenant or "_"] = value
        return out
