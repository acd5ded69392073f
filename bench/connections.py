"""Concurrent connections: N registered IRC clients held open against one server process.

Reads the server's VmRSS (``/proc/<pid>/status``) before connecting and once the clients
are registered (and have settled for a moment); reports KiB per connection, the
registration rate over the first and the last tenth (a rate that falls as connections
grow means per-login work proportional to the number online, or connects the server's
listen backlog dropped), and the CPU the server and this generator used while connecting.
Connecting stops after ``--budget`` seconds; clients not registered by then count as
failed. Raises this process's open-file limit to the hard limit first; the server's limit
is its starter's business (``bench/run_all.py`` raises its own before it starts one).
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

from bench.ircload import IrcConnection, close_all
from bench.servers import cpu_seconds, rss_kib


def raise_nofile() -> int:
    """Set the soft open-file limit to the hard one; returns it."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


async def register_within(args) -> tuple[list[IrcConnection], list[float], int]:
    """Connect and register up to ``--count`` clients within ``--budget`` seconds.

    Returns the connections, the times (seconds from the start) at which each registered,
    and how many failed or ran out of time.
    """
    loop = asyncio.get_running_loop()
    start = time.monotonic()
    deadline = start + args.budget
    gate = asyncio.Semaphore(args.parallel)
    conns: list[IrcConnection] = []
    registered_at: list[float] = []
    failed = 0

    async def one(nick):
        nonlocal failed
        async with gate:
            if time.monotonic() >= deadline:
                failed += 1
                return
            try:
                _, conn = await asyncio.wait_for(
                    loop.create_connection(lambda: IrcConnection(nick, args.password), args.host, args.port),
                    deadline - time.monotonic())
                conns.append(conn)
                await asyncio.wait_for(conn.registered, max(0.01, deadline - time.monotonic()))
                registered_at.append(time.monotonic() - start)
            except (TimeoutError, OSError, ConnectionError):
                failed += 1

    await asyncio.gather(*(one(f"{args.nick_prefix}{i}") for i in range(args.count)))
    return conns, registered_at, failed


def rate(times: list[float], first: bool) -> int | None:
    """Registrations/s over the first (or last) tenth of them."""
    tenth = len(times) // 10
    if tenth < 10:
        return None
    times = sorted(times)
    span = times[tenth - 1] - 0.0 if first else times[-1] - times[-tenth - 1]
    return round(tenth / span) if span > 0 else None


async def run(args) -> dict:
    before = rss_kib(args.server_pid)
    client0, server0, started = cpu_seconds(None), cpu_seconds(args.server_pid), time.monotonic()
    conns, registered_at, failed = await register_within(args)
    took = time.monotonic() - started
    client_cpu, server_cpu = cpu_seconds(None) - client0, cpu_seconds(args.server_pid) - server0
    try:
        await asyncio.sleep(args.settle)
        held = rss_kib(args.server_pid)
        alive = sum(1 for c in conns if c.registered.done() and not c.transport.is_closing())
    finally:
        await close_all(conns, timeout=args.settle * 5)
    elapsed = max(registered_at) if registered_at else args.budget
    return {
        "connections": args.count,
        "alive": alive,
        "failed": failed,
        "connect_s": round(elapsed, 2),
        "connects_per_s": round(len(registered_at) / elapsed) if elapsed else None,
        "connects_per_s_first_tenth": rate(registered_at, True),
        "connects_per_s_last_tenth": rate(registered_at, False),
        "rss_before_kib": before,
        "rss_held_kib": held,
        "kib_per_connection": round((held - before) / alive, 2) if alive else None,
        # cores busy while connecting: a generator near 1.0 is the limit, not the server
        "client_cpu": round(client_cpu / took, 2),
        "server_cpu": round(server_cpu / took, 2),
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
    parser.add_argument("--budget", type=float, default=60.0, help="seconds to connect in; the rest fail")
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("loopback only")
    limit = raise_nofile()
    if args.count + 100 > limit:
        parser.error(f"--count {args.count} needs more open files than the hard limit {limit}")
    report = asyncio.run(asyncio.wait_for(run(args), args.budget + args.settle * 10 + 30))
    json.dump(report, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
