"""How many stderr lines a `disco watch` prints across a NATS outage (default 20 s), and how many of them are
per-attempt "Connect call failed" lines. Run from a worktree: ``.venv/bin/python scripts/cli_outage_lines.py [S]``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from services.natsserver import NatsServer


def main(outage: float) -> None:
    server = NatsServer(Path(tempfile.mkdtemp()) / "nats", name="outage")
    server.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISCO_")}
    disco = [sys.executable, "-m", "services"]
    agg = subprocess.Popen([*disco, "aggregator", "--nats", server.url], env=env, stderr=subprocess.DEVNULL)
    try:
        time.sleep(3)  # a measurement script, not a test: fixed pauses are fine here
        watch = subprocess.Popen([*disco, "watch", "-t", "acme", "--nats", server.url], env=env,
                                 stderr=subprocess.PIPE, text=True)
        time.sleep(2)
        server.stop()
        time.sleep(outage)
        server.start()
        time.sleep(4)
        watch.terminate()
        err = watch.communicate()[1]
    finally:
        agg.terminate()
        agg.wait()
        server.stop()
    lines = [line for line in err.splitlines() if line.strip()]
    failed = sum("Connect call failed" in line for line in lines)
    print(f"{outage:g} s outage: {len(lines)} lines on stderr, {failed} mention 'Connect call failed'")
    for line in lines:
        print("  ", line[:160])


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 20.0)
