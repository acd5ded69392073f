"""Cluster figures: cross-node fan-out against one node on the same store, and --workers 2
against one process. Needs PostgreSQL and Redis on loopback (as the tests do); makes and drops
a database of its own.

- one node: PostgreSQL store, local bus, IRC fan-out (bench.fanout, closed loop);
- two nodes: the same store, a Redis bus; senders on node a, each room's members split
  between a and b (every other member on b); server CPU is both nodes' together;
- --workers 2 on one port against one process (the one-node run), the clients spread by
  the kernel.

    python -m bench.nodes [--rooms 4 --members 50 --duration 5]
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from bench import servers
from bench.run_all import run_json

POSTGRESQL = "127.0.0.1:5432"
REDIS = "redis://127.0.0.1:6379/0"


def fanout(args, port: int, pids: list[int], member_port: int | None = None, cluster=False) -> dict:
    argv = ["bench.fanout", "--port", str(port), "--rooms", str(args.rooms), "--members", str(args.members),
            "--duration", str(args.duration), "--rate", "0", "--nick-prefix", f"n{secrets.token_hex(2)}"]
    argv += [arg for pid in pids for arg in ("--server-pid", str(pid))]
    if member_port:
        argv += ["--member-port", str(member_port)]
    if cluster:
        argv += ["--cluster"]
    report = run_json(argv, timeout=300)["max"]
    return {key: report[key] for key in ("deliveries_per_s", "p50_ms", "p99_ms", "server_us_per_delivery",
                                         "server_cpu")}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rooms", type=int, default=4)
    parser.add_argument("--members", type=int, default=50)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args(argv)
    admin = psycopg.connect(f"postgresql://root@{POSTGRESQL}/postgres", autocommit=True)
    name = f"chatserv_bench_{secrets.token_hex(4)}"
    admin.execute(f"CREATE DATABASE {name}")
    db = f"postgresql://root@{POSTGRESQL}/{name}"
    bus = f"{REDIS}?channel=bench-{secrets.token_hex(4)}"
    results = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            port = servers.free_port()
            one = servers.chatserv(work, {"irc": port}, db).start()
            try:
                results["one node"] = fanout(args, port, [one.pid])
            finally:
                one.stop()
            ports = servers.free_port(), servers.free_port()
            nodes = [servers.chatserv(work / name, {"irc": p}, db, extra=["--bus", bus, "--node-name", name])
                     for name, p in zip("ab", ports, strict=True)]
            for node in nodes:
                node.workdir.mkdir()
                node.start()
            try:
                time.sleep(1.0)  # both on the channel
                results["two nodes"] = fanout(args, ports[0], [n.pid for n in nodes], member_port=ports[1])
            finally:
                for node in nodes:
                    node.stop()
            port = servers.free_port()
            workers = servers.chatserv(work, {"irc": port}, db, extra=["--bus", bus, "--workers", "2"])
            workers.start()
            try:
                time.sleep(1.5)  # worker 1 listening and on the channel
                pids = [workers.pid, *servers._children(workers.pid)]
                results["--workers 2"] = fanout(args, port, pids, cluster=True)
            finally:
                workers.stop()
    finally:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
    one, two = results["one node"], results["two nodes"]
    results["cross-node CPU per delivery / one node"] = round(
        two["server_us_per_delivery"] / one["server_us_per_delivery"], 2)
    json.dump(results, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
