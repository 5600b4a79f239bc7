"""Profile an aggregator's start (py-spy attached from its start to "ready") with N entries in the KV bucket.

    python scripts/profile_start.py --entries 200000 --out prof.txt    # needs py-spy (pip install py-spy)
    python scripts/profile_start.py --top prof.txt                     # top self / inclusive frames of a profile

Uses ``scripts/load.py``'s bucket filler and aggregator launcher; prints the start-to-ready time.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.load import fill_bucket, start_aggregator, wait_ready  # noqa: E402
from services.natsserver import NatsServer  # noqa: E402


def top(path: Path, k: int = 15) -> None:
    """Print the top ``k`` self and inclusive frames of a py-spy ``--format raw`` (collapsed) profile."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        try:
            n = int(count)
        except ValueError:
            continue
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    print(f"{total} samples\n-- self")
    for f, n in own.most_common(k):
        print(f"{100 * n / total:5.1f}% {f}")
    print("-- inclusive")
    for f, n in incl.most_common(k + 15):
        print(f"{100 * n / total:5.1f}% {f}")


async def profile(entries: int, out: Path) -> None:
    spy_bin = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        server = NatsServer(tmp / "nats", name="profile")
        server.start()
        try:
            await fill_bucket(server.url, f"ready_{entries}", entries)
            log = tmp / "agg.log"
            proc = start_aggregator(server.url, f"ready_{entries}", log)
            spy = subprocess.Popen(  # noqa: ASYNC220 - started once, before measuring
                [spy_bin, "record", "-p", str(proc.pid), "-r", "200", "--format", "raw", "-o", str(out),
                 "--nonblocking", "-d", "600"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                ready = await anyio.to_thread.run_sync(wait_ready, log, proc, 600.0)
                print(f"ready in {ready:.2f} s with {entries:,} entries; profile in {out}")
            finally:
                spy.send_signal(signal.SIGINT)
                spy.wait(60)
                proc.terminate()
                proc.wait(30)
        finally:
            server.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=200_000)
    ap.add_argument("--out", type=Path, default=Path("prof-start.txt"))
    ap.add_argument("--top", type=Path, help="only summarise this profile")
    args = ap.parse_args()
    if args.top is not None:
        top(args.top)
        return 0
    anyio.run(profile, args.entries, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
