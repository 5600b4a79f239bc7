"""A short chaos run (scripts/chaos.py, about a minute of faults): a 3-node cluster, two aggregator processes,
durable workers of two groups, watchers and resolver caches under load, with a NATS node (the KV stream's
leader), an aggregator, a worker and a watcher's connection SIGKILLed in turn. The run is made once per module;
each test asserts one of its promises against the run's ledger."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.timeout(720)]

ROOT = Path(__file__).resolve().parents[2]
DURATION = 60


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("chaos") / "figures.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "chaos.py"), "--duration", str(DURATION), "--interval", "5",
         "--instances", "150", "--churners", "3", "--settle", "90", "--seed", "13", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures: dict[str, Any] = json.loads(out.read_text())
    print(proc.stdout)
    return figures


def test_the_run_faulted_every_kind_and_carried_load(run: dict[str, Any]) -> None:
    assert set(run["faults_by_kind"]) == {"nats", "aggregator", "worker", "watcher"}
    assert run["faults"] >= 4  # one of each kind at least (how many fit in 60 s depends on the machine)
    assert run["changes_acked"] > 100 and run["resolves"] > 100
    assert run["aggregators_answering"] == 2
    assert run["leader_elections_s"] and all(e < 60 for e in run["leader_elections_s"])


def test_no_instance_is_lost_or_left_behind(run: dict[str, Any]) -> None:
    assert run["lost"] == 0
    assert run["ghosts"] == 0


def test_no_false_expiry(run: dict[str, Any]) -> None:
    assert run["false_expiries"] == 0


def test_durable_groups_handle_every_event_their_stream_holds(run: dict[str, Any]) -> None:
    # what a group misses could only be what never reached the stream (checked below), nothing the workers lost
    assert run["missing_changes"] == {"audit": run["missing_from_streams"], "sync": run["missing_from_streams"]}


def test_every_acknowledged_change_reaches_every_durable_group(run: dict[str, Any]) -> None:
    assert run["missing_from_streams"] == 0
    assert run["missing_changes"] == {"audit": 0, "sync": 0}


def test_every_view_agrees_with_the_kv(run: dict[str, Any]) -> None:
    assert run["watchers_diverging"] == 0
    assert run["resolver_caches_diverging"] == 0
    assert run["aggregator_counts_diverging"] == 0
    assert run["snapshots"] > 0 and run["snapshots_diverging"] == 0


def test_no_resolve_is_answered_from_an_incomplete_view(run: dict[str, Any]) -> None:
    assert run["resolves_incomplete"] == 0


def test_resolves_are_unavailable_no_longer_than_a_leader_election(run: dict[str, Any]) -> None:
    assert run["longest_resolve_failure_s"] <= max(run["leader_elections_s"])
