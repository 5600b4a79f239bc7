"""Mutation check, run before a release: plant realistic one-line bugs in bus/, services/aggregator/ and
services/tenants/ and see the tests fail.

Each mutant is one (file, old, new) text replacement plus the pytest selection that should kill it. The tree is
copied once to a temporary directory; each mutant is applied there, its tests run with that copy first on the
import path, and the file restored. The working tree is never modified.

    .venv/bin/python scripts/mutants.py               # every mutant
    .venv/bin/python scripts/mutants.py -k watch      # mutants whose id contains "watch"
    .venv/bin/python scripts/mutants.py --list

Prints one line per mutant (killed / SURVIVED / equivalent, with the reason, for a survivor shown to behave
exactly as the original / n/a when the code it plants into has changed) and the score killed / (killed +
survived; equivalent mutants are left out). Exit status 1 if a mutant survived without an explanation.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

U = "tests/unit"
INT = "tests/integration"
EVENT_ORDER = f"{INT}/test_event_durability.py::test_a_keys_events_are_stored_in_revision_order_whoever_hands_them_over"


@dataclass(frozen=True)
class Mutant:
    id: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    #: why it may survive: an equivalent mutant (behaves exactly as the original), or a known gap
    why: str = ""
    equivalent: bool = False


MUTANTS: list[Mutant] = [
    # -- the issue's planted bugs (issue 13's table) --------------------------------------------------------------
    Mutant("resolver-rebuild-forgets-leases", "bus/resolver.py",
           "prefer_zone=self.prefer_zone, rng=self._rng, outstanding=self._outstanding,",
           "prefer_zone=self.prefer_zone, rng=self._rng, outstanding={},",
           (f"{U}/test_resolver_lease.py",)),
    Mutant("watch-no-tombstone-check", "bus/watch.py",
           "        if self._tombstones.get(key, 0) >= ev.revision:\n            return\n", "",
           (f"{U}/test_watch_apply.py",)),
    Mutant("bucket-no-burst-cap", "services/aggregator/admission.py",
           "self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)",
           "self.tokens = self.tokens + (now - self.stamp) * self.rate",
           (f"{U}/test_token_bucket.py",)),
    Mutant("store-delete-without-cas", "services/aggregator/store.py",
           'headers: dict[str, str] = {KV_OP: "DEL", api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE: str(last)}',
           'headers: dict[str, str] = {KV_OP: "DEL"}',
           (f"{INT}/test_store_cas.py",)),
    Mutant("watch-relist-emits-no-diff", "bus/watch.py",
           "        if not first or self.include_initial:\n            await self._emit_diff(",
           "        if first and self.include_initial:\n            await self._emit_diff(",
           (f"{U}/test_watch_apply.py",)),
    # -- the watch ----------------------------------------------------------------------------------------------
    Mutant("watch-keeps-events-at-list-revision", "bus/watch.py",
           "if ev.tenant != self.tenant or ev.revision <= self.revision:",
           "if ev.tenant != self.tenant or ev.revision < self.revision:",
           (f"{U}/test_watch_apply.py",)),
    Mutant("watch-ignores-tenant", "bus/watch.py",
           "if ev.tenant != self.tenant or ev.revision <= self.revision:",
           "if ev.revision <= self.revision:",
           (f"{U}/test_watch_apply.py",)),
    Mutant("watch-takes-older-event", "bus/watch.py",
           "if held is not None and ev.revision <= held.revision:",
           "if held is not None and ev.revision < held.revision:",
           (f"{U}/test_watch_apply.py",),
           equivalent=True,
           why="an event at the held revision is the held write itself (a revision names one KV "
               "write), so it carries the held instance and returns unemitted at the `held.instance == "
               "ev.instance` check, leaving the same state"),
    Mutant("watch-forgets-removal-of-unknown", "bus/watch.py",
           "            if held is None:\n                self._tombstones[key] = ev.revision\n                return",
           "            if held is None:\n                return",
           (f"{U}/test_watch_apply.py",)),
    Mutant("watch-overflow-not-flagged", "bus/watch.py",
           'self.tenant)\n            self._relist_pending = True', "self.tenant)",
           (f"{U}/test_watch_apply.py",)),
    Mutant("watch-diff-misses-updates", "bus/watch.py",
           "elif before.instance != held.instance:", "elif before.instance is None:",
           (f"{U}/test_watch_apply.py",)),
    Mutant("watch-no-relist-on-reconnect", "bus/watch.py",
           "        w._after_reconnect = True\n        w.request_relist()",
           "        w._after_reconnect = True",
           (f"{INT}/test_core_resilience.py",)),
    Mutant("watch-no-relist-on-slow-consumer", "bus/watch.py",
           "        if slow_sid == sid:\n            w.request_relist()",
           "        if slow_sid == sid:\n            pass",
           (f"{INT}/test_watch_relists.py",)),
    # -- the resolver and balancing ----------------------------------------------------------------------------
    Mutant("resolver-release-never-decrements", "bus/resolver.py",
           "n = self._outstanding.get(iid, 0) - 1", "n = self._outstanding.get(iid, 0)",
           (f"{U}/test_resolver_lease.py",)),
    Mutant("resolver-ignores-removals", "bus/resolver.py",
           "            self._instances.pop(ev.instance.id, None)\n", "            pass\n",
           (f"{U}/test_resolver_lease.py", f"{INT}/test_resolver.py")),
    Mutant("leastloaded-low-not-lowered", "bus/balancing.py",
           "if m < self.low or (n == self.low and n not in self.buckets):",
           "if n == self.low and n not in self.buckets:",
           (f"{U}/test_balancing.py", f"{U}/test_resolver_lease.py")),
    Mutant("balancer-round-robin-skips", "bus/balancing.py",
           "self._next = i + 1 if i + 1 < self._n else 0", "self._next = i + 2 if i + 2 < self._n else 0",
           (f"{U}/test_balancing.py",)),
    # -- the aggregator's view, liveness, admission, scheduler --------------------------------------------------
    Mutant("view-put-over-tombstone", "services/aggregator/view.py",
           "        if key is not None and tombstones.get(key, 0) >= revision:\n            return False\n",
           "",
           (f"{U}/test_view.py",)),
    Mutant("view-put-older-revision", "services/aggregator/view.py",
           "if old is not None and old.revision >= revision:\n            return False\n        if key is not None:",
           "if old is not None and old.revision > revision:\n            return False\n        if key is not None:",
           (f"{U}/test_view.py",)),
    Mutant("view-delete-keeps-no-tombstone", "services/aggregator/view.py",
           "        self._tombstones[key] = revision\n        if svc is not None:",
           "        if svc is not None:",
           (f"{U}/test_view.py",)),
    Mutant("view-reply-cache-not-cleared", "services/aggregator/view.py",
           "            svc.revision = revision\n        if svc.replies:\n"
           "            svc.replies.clear()\n        return old",
           "            svc.revision = revision\n        return old",
           (f"{U}/test_view.py",)),
    Mutant("liveness-ignores-grace", "services/aggregator/liveness.py",
           "return max(last, self.floor) + self._ttl[key]", "return last + self._ttl[key]",
           (f"{U}/test_liveness.py",)),
    Mutant("liveness-longer-ttl-kept", "services/aggregator/liveness.py",
           "        if old_ttl is not None and ttl < old_ttl:\n            self._push(now + ttl, key)",
           "        if old_ttl is None:\n            self._push(now + ttl, key)",
           (f"{U}/test_liveness.py",)),
    Mutant("liveness-due-early", "services/aggregator/liveness.py",
           "                if deadline <= now:\n                    out.append(key)",
           "                if deadline <= now + 1.0:\n                    out.append(key)",
           (f"{U}/test_liveness.py",)),
    Mutant("preservation-share-inclusive", "services/aggregator/admission.py",
           "mass = silent >= p.min_count and total > 0 and silent > p.share * total",
           "mass = silent > p.min_count and total > 0 and silent > p.share * total",
           (f"{U}/test_preservation_rule.py",)),
    Mutant("preservation-share-reached", "services/aggregator/admission.py",
           "mass = silent >= p.min_count and total > 0 and silent > p.share * total",
           "mass = silent >= p.min_count and total > 0 and silent >= p.share * total",
           (f"{U}/test_preservation_rule.py",)),
    Mutant("quota-off-by-one", "services/aggregator/admission.py",
           "if limits.max_instances is not None and instances >= limits.max_instances:",
           "if limits.max_instances is not None and instances > limits.max_instances:",
           (f"{INT}/test_quotas.py",)),
    Mutant("quota-creates-not-counted", "services/aggregator/admission.py",
           "        instances += self._creating.get(tenant, 0)\n", "",
           (f"{INT}/test_quotas.py",)),
    Mutant("scheduler-per-tenant-bound-off", "services/aggregator/scheduler.py",
           "if len(q) >= self.per_tenant:", "if len(q) > self.per_tenant:",
           (f"{U}/test_scheduler.py",)),
    Mutant("scheduler-no-round-robin", "services/aggregator/scheduler.py",
           "        if q:\n            self._ready.append(tenant)",
           "        if q:\n            self._ready.appendleft(tenant)",
           (f"{U}/test_scheduler.py",)),
    # -- the aggregator's write path ----------------------------------------------------------------------------
    Mutant("announce-stale-seq-accepted", "services/aggregator/writes.py",
           "if inst.seq <= held.seq or inst.same_registration(held):",
           "if inst.seq < held.seq or inst.same_registration(held):",
           (f"{INT}/test_write_rules.py",)),
    Mutant("announce-create-ignores-tombstone", "services/aggregator/writes.py",
           "self.store.create, kvk, value, self.view.tombstone(t, s, inst.id), hdr))",
           "self.store.create, kvk, value, 0, hdr))",
           (f"{INT}/test_core_lifecycle.py", f"{INT}/test_resolver.py")),
    Mutant("expiry-ignores-late-heartbeat", "services/aggregator/writes.py",
           "if deadline is not None and deadline > self.clock():",
           "if deadline is not None and deadline > self.clock() + 3600:",
           (f"{INT}/test_write_rules.py",)),
    Mutant("heartbeat-status-ignored", "services/aggregator/writes.py",
           "if entry is not None and entry.status != hb.status:",
           "if entry is not None and entry.status == hb.status:",
           (f"{INT}/test_core_lifecycle.py::test_heartbeat_status_changes_are_written_and_published",)),
    Mutant("follower-delete-keeps-liveness", "services/aggregator/follower.py",
           "            if removed:\n                self.live.forget((t, s, i))\n            return",
           "            return",
           (f"{INT}/test_core_resilience.py",)),
    Mutant("store-wrong-last-not-conflict", "services/aggregator/store.py",
           "if exc.err_code in _WRONG_LAST:", "if exc.err_code in ():",
           (f"{INT}/test_store_cas.py",)),
    Mutant("events-key-order-ignored", "services/aggregator/events.py",
           "                if prev is not None:\n                    await prev.wait()\n"
           "                await self.store",
           "                await self.store",
           (EVENT_ORDER,)),
    Mutant("events-takeover-alone", "services/aggregator/events.py",
           "if k[1] <= upto.get(held.key, -1)", "if k[1] == upto.get(held.key, -1)",
           (EVENT_ORDER,)),
    # tenancy (the "publish permission widened" row, in the account model): a tenant's user may forge
    # change events, or a tenant imports another tenant's streams
    Mutant("tenant-may-forge-changes", "services/tenants/accounts.py",
           'else [f"{p}.{t}.changes.>", f"{p}.{t}.ctl.>"]', 'else [f"{p}.{t}.ctl.>"]',
           (f"{U}/test_authz.py",)),
    Mutant("tenant-imports-every-tenant", "services/tenants/operator.py",
           'return f"{prefix}.{tenant}.{kind}.>"', 'return f"{prefix}.*.{kind}.>"',
           (f"{U}/test_authz.py",)),
]


def copy_tree(dest: Path) -> None:
    """The files git tracks (tests read some besides the code: docker/ configs, the README)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in files.decode().split("\0"):
        if name and (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)


def run_tests(tree: Path, tests: tuple[str, ...], timeout: float, show: bool = False) -> tuple[bool, float]:
    """True when the selection passed (the mutant survived); ``show`` prints the tail of a failing run."""
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE="1")
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
            cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout, text=True,
        )
    except subprocess.TimeoutExpired:
        return False, time.monotonic() - started  # a hang is caught by the global timeout in CI: killed
    if show and proc.returncode != 0:  # the assertion lines, then the summary
        lines = proc.stdout.splitlines()
        print("\n".join([x for x in lines if x.startswith(("E ", ">  "))][:40] + lines[-5:]), file=sys.stderr)
    return proc.returncode == 0, time.monotonic() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-k", default="", help="only mutants whose id contains this")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per mutant's test run")
    args = ap.parse_args()
    chosen = [m for m in MUTANTS if args.k in m.id]
    if args.list:
        for m in chosen:
            print(f"{m.id:40} {m.file:36} {' '.join(m.tests)}")
        return 0
    killed: list[str] = []
    survived: list[str] = []
    skipped: list[str] = []
    equivalent: list[str] = []
    explained: list[str] = []
    with tempfile.TemporaryDirectory(prefix="disco-mutants-") as tmp:
        tree = Path(tmp)
        copy_tree(tree)
        # the copy must be what the tests import, not the editable install of the working tree
        probe = subprocess.run([sys.executable, "-c", "import bus; print(bus.__file__)"], cwd=tree,
                               env=dict(os.environ, PYTHONPATH=str(tree)), capture_output=True, text=True)
        if not probe.stdout.startswith(str(tree)):
            print(f"mutants: error: the copy is not imported first ({probe.stdout.strip()})", file=sys.stderr)
            return 2
        ok, secs = run_tests(tree, tuple(sorted({t for m in chosen for t in m.tests})), args.timeout, show=True)
        if not ok:
            print("mutants: error: the selected tests fail without any mutant; fix them first", file=sys.stderr)
            return 2
        print(f"baseline: the selected tests pass ({secs:.0f} s)")
        for m in chosen:
            path = tree / m.file
            original = path.read_text()
            if original.count(m.old) != 1:
                skipped.append(m.id)
                print(f"n/a       {m.id}: the code it plants into has changed ({original.count(m.old)} matches)")
                continue
            path.write_text(original.replace(m.old, m.new))
            try:
                passed, secs = run_tests(tree, m.tests, args.timeout)
            finally:
                path.write_text(original)
            if passed and m.equivalent:
                equivalent.append(m.id)
                print(f"equivalent {m.id} ({secs:.0f} s): {m.why}", flush=True)
                continue
            (survived if passed else killed).append(m.id)
            if passed and m.why:
                explained.append(m.id)
            why = f": {m.why}" if passed and m.why else ""
            print(f"{'SURVIVED' if passed else 'killed  '}  {m.id} ({secs:.0f} s){why}", flush=True)
    total = len(killed) + len(survived)
    score = 100.0 * len(killed) / total if total else 0.0
    print(f"\nmutation score: {len(killed)}/{total} killed ({score:.0f} %); {len(equivalent)} equivalent, "
          f"{len(skipped)} not applicable")
    if survived:
        print("survived: " + ", ".join(survived))
    return 1 if set(survived) - set(explained) else 0


if __name__ == "__main__":
    raise SystemExit(main())
