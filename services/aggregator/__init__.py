"""The aggregator: validates announces, keeps the live view (JetStream KV), expires silent instances, answers
resolves and snapshots from memory, and publishes change events (DESIGN.md §2, §6)."""

from services.aggregator.service import Aggregator
from services.aggregator.settings import AggregatorSettings

__all__ = ["Aggregator", "AggregatorSettings"]
