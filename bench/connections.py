"""Concurrent connections: N registered IRC clients held open against one server process.

Reads the server's VmRSS (``/proc/<pid>/status``) before connecting, once all N are
registered (and have settled for a moment), and after they QUIT; reports KiB per
connection. Raises this process's open-file limit to the hard limit first; the server's
limit is its starter's business (``bench/run_all.py`` raises its own before it starts one).
Prints one JSON object.

    python -m bench.connections --port 6667 --server-pid 1234 --count 10000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time

from bench.ircload import close_all, open_many
from bench.servers import rss_kib


def raise_nofile() -> int:
    """Set the soft open-file limit to the hard one; returns it."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


async def run(args) -> dict:
    before = rss_kib(args.server_pid)
    started = time.monotonic()
    nicks = [f"{args.nick_prefix}{i}" for i in range(args.count)]
    conns = await open_many(args.host, args.port, nicks, args.password, parallel=args.parallel,
                            timeout=args.timeout)
    elapsed = time.monotonic() - started
    try:
        await asyncio.sleep(args.settle)
        held = rss_kib(args.server_pid)
        alive = sum(1 for c in conns if not c.transport.is_closing())
    finally:
        await close_all(conns, timeout=args.timeout)
    await asyncio.sleep(args.settle)
    return {
        "connections": args.count,
        "alive": alive,
        "connect_s": round(elapsed, 2),
        "connects_per_s": round(args.count / elapsed),
        "rss_before_kib": before,
        "rss_held_kib": held,
        "rss_after_quit_kib": rss_kib(args.server_pid),
        "kib_per_connection": round((held - before) / args.count, 2),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--server-pid", type=int, required=True)
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--password", default=None, help="send PASS first (twisted.words needs one)")
    parser.add_argument("--parallel", type=int, default=500, help="registrations in flight")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds before reading RSS")
    parser.add_argument("--nick-prefix", default="c")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("loopback only")
    limit = raise_nofile()
    if args.count + 100 > limit:
        parser.error(f"--count {args.count} needs more open files than the hard limit {limit}")
    report = asyncio.run(asyncio.wait_for(run(args), args.timeout * 3 + 30))
    json.dump(report, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
