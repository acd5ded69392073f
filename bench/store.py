"""Persistence throughput: room messages/s each SQL store commits under sustained load.

Drives each store (SQLite, then PostgreSQL) directly on the Twisted reactor, keeping
``--outstanding`` ``add_message`` Deferreds in flight (a new write starts as soon as one is
durable), so group commit gets the chance to batch. SQLite writes a file in a temporary
directory; PostgreSQL a scratch database created through ``--postgresql-admin`` and dropped
after (skipped, with the reason, if the server cannot be reached). Prints one JSON object, by
engine.

    python -m bench.store --seconds 5 --outstanding 2000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from twisted.internet import defer, task

sys.path.insert(0, os.environ.get("CHATSERV_SOURCE", str(Path(__file__).resolve().parent.parent)))

from chatserv.model import Message  # noqa: E402
from chatserv.store import open_store  # noqa: E402

ENGINES = ("sqlite", "postgresql")


@defer.inlineCallbacks
def run(reactor, db: str, seconds: float, warmup: float, outstanding: int, body: str):
    store = open_store(db, reactor)
    snapshot = yield store.open()
    engine = type(store).__name__
    next_id = getattr(snapshot, "next_message_id", 0)  # an older tree: the caller numbers messages
    window = {"counting": False, "stored": 0, "latencies": []}
    finished = defer.Deferred()
    stop_at = time.monotonic() + warmup + seconds
    in_flight = 0

    def write():
        nonlocal next_id, in_flight
        message = Message(next_id, 1, "bench", body, time.time(), room_id=1)
        next_id += 1
        in_flight += 1
        started = time.monotonic()
        d = store.add_message(message)
        d.addCallback(stored, started)
        d.addErrback(failed)

    def stored(_, started):
        nonlocal in_flight
        in_flight -= 1
        now = time.monotonic()
        if window["counting"]:
            window["stored"] += 1
            window["latencies"].append(now - started)
        if now < stop_at:
            write()
        elif not in_flight and not finished.called:
            finished.callback(None)

    def failed(failure):
        if not finished.called:
            finished.errback(failure)

    for _ in range(outstanding):
        write()
    yield task.deferLater(reactor, warmup, lambda: None)
    window["counting"] = True
    t0 = time.monotonic()
    yield task.deferLater(reactor, seconds, lambda: None)
    window["counting"] = False
    elapsed = time.monotonic() - t0
    yield finished
    yield store.close()
    latencies = sorted(window["latencies"])

    def pct(q):
        if not latencies:
            return None
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e3, 2)

    return {
        "store": engine,
        "stored": window["stored"],
        "seconds": round(elapsed, 2),
        "stored_per_s": round(window["stored"] / elapsed),
        "outstanding": outstanding,
        "commit_p50_ms": pct(0.50),
        "commit_p99_ms": pct(0.99),
    }


@contextlib.contextmanager
def scratch_database(engine: str, admin_url: str):
    """A ``--db`` for a new, empty database of ``engine``, removed afterwards."""
    if engine == "sqlite":
        with tempfile.TemporaryDirectory(prefix="chatserv-bench-store-") as tmp:
            yield str(Path(tmp) / "store.sqlite3")
        return
    import psycopg

    name = f"chatserv_bench_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f"CREATE DATABASE {name}")
        try:
            yield urlsplit(admin_url)._replace(path=f"/{name}").geturl()
        finally:
            admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--outstanding", type=int, default=2000, help="add_message Deferreds in flight")
    parser.add_argument("--body", type=int, default=80, help="characters per message")
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma-separated: sqlite, postgresql")
    parser.add_argument("--postgresql-admin", default="postgresql://127.0.0.1:5432/postgres",
                        help="a server connection that may create and drop databases")
    args = parser.parse_args(argv)

    async def go(reactor):
        report = {}
        for engine in args.engines.split(","):
            try:
                with scratch_database(engine, args.postgresql_admin) as db:
                    d = run(reactor, db, args.seconds, args.warmup, args.outstanding, "x" * args.body)
                    d.addTimeout(args.seconds + args.warmup + 60, reactor)
                    report[engine] = await d
            except Exception as e:
                report[engine] = {"error": " ".join(str(e).split())}
        json.dump(report, sys.stdout)
        sys.stdout.write("\n")

    task.react(lambda reactor: defer.ensureDeferred(go(reactor)))


if __name__ == "__main__":
    main()
