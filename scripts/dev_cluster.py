"""Start a local 3-node nats-server cluster with JetStream for development; Ctrl-C stops it.

    python scripts/dev_cluster.py [--data-dir ./dev-cluster] [--base-port 4222]

Prints the URLs to give aggregators (`disco aggregator --nats URL1,URL2,URL3 --replicas 3`).
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.natsserver import NatsServer, NatsServerError


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="./dev-cluster")
    ap.add_argument("--base-port", type=int, default=4222, help="client ports base, base+1, base+2")
    ap.add_argument("--nodes", type=int, default=3)
    args = ap.parse_args()
    base = Path(args.data_dir)
    client_ports = [args.base_port + i for i in range(args.nodes)]
    route_ports = [args.base_port + 2000 + i for i in range(args.nodes)]
    nodes = [
        NatsServer(base / f"n{i}", port=client_ports[i], name=f"n{i}", cluster_name="disco-dev",
                   cluster_port=route_ports[i],
                   routes=[f"nats-route://127.0.0.1:{p}" for j, p in enumerate(route_ports) if j != i])
        for i in range(args.nodes)
    ]
    try:
        for n in nodes:
            n.start()
    except NatsServerError as exc:
        print(f"dev_cluster: error: {exc}", file=sys.stderr)
        for n in nodes:
            n.stop()
        return 1
    print("cluster up: " + ",".join(n.url for n in nodes), flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        for n in nodes:
            n.stop()
    return 0


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    sys.exit(main())
