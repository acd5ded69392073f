"""Persistence throughput: room messages/s the SQLite store commits under sustained load.

Drives ``chatserv.store.sqlite.SQLiteStore`` directly on the Twisted reactor, keeping
``--outstanding`` ``add_message`` Deferreds in flight (a new write starts as soon as one is
durable), so group commit gets the chance to batch. Prints one JSON object.

    python -m bench.store --seconds 5 --outstanding 2000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from twisted.internet import defer, task

sys.path.insert(0, os.environ.get("CHATSERV_SOURCE", str(Path(__file__).resolve().parent.parent)))

from chatserv.model import Message  # noqa: E402
from chatserv.store.sqlite import SQLiteStore  # noqa: E402


@defer.inlineCallbacks
def run(reactor, path: str, seconds: float, warmup: float, outstanding: int, body: str):
    store = SQLiteStore(path, reactor)
    snapshot = yield store.open()
    next_id = snapshot.next_message_id
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
        "stored": window["stored"],
        "seconds": round(elapsed, 2),
        "stored_per_s": round(window["stored"] / elapsed),
        "outstanding": outstanding,
        "commit_p50_ms": pct(0.50),
        "commit_p99_ms": pct(0.99),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--outstanding", type=int, default=2000, help="add_message Deferreds in flight")
    parser.add_argument("--body", type=int, default=80, help="characters per message")
    args = parser.parse_args(argv)

    async def go(reactor):
        with tempfile.TemporaryDirectory(prefix="chatserv-bench-store-") as tmp:
            d = run(reactor, str(Path(tmp) / "store.sqlite3"), args.seconds, args.warmup,
                    args.outstanding, "x" * args.body)
            d.addTimeout(args.seconds + args.warmup + 60, reactor)
            json.dump(await d, sys.stdout)
            sys.stdout.write("\n")

    task.react(lambda reactor: defer.ensureDeferred(go(reactor)))


if __name__ == "__main__":
    main()
