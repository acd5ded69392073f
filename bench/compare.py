"""A/B: fan-out and storage of two source trees, measured in one interleaved run.

Each round runs ``bench.fanout`` against a daemon started from each tree, then ``bench.store``
with each tree, alternating which goes first (ABBA...), so that a change in the machine's
load weighs on both alike. Prints the median of each figure per tree and their ratio.

    git archive main | tar -x -C /tmp/before
    python -m bench.compare --before /tmp/before --after . --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import servers
from bench.run_all import run_json

FANOUT = ("deliveries_per_s", "server_us_per_delivery")


def fanout(source: Path, workdir: Path, args) -> dict:
    port = servers.free_port()
    server = servers.chatserv(workdir, {"irc": port}, str(workdir / f"fanout-{port}.sqlite3"), source=source)
    server.start()
    try:
        report = run_json(["bench.fanout", "--port", str(port), "--server-pid", str(server.pid),
                           "--rooms", str(args.rooms), "--members", str(args.members),
                           "--duration", str(args.duration), "--warmup", "1", "--rate", "0"],
                          timeout=4 * args.duration + 150)
    finally:
        server.stop()
    return {key: report["max"][key] for key in FANOUT}


def store(source: Path, args) -> dict:
    done = subprocess.run([sys.executable, "-m", "bench.store", "--seconds", str(args.duration),
                           "--engines", args.engines], cwd=servers.ROOT, capture_output=True, text=True,
                          timeout=4 * args.duration + 200, env=dict(os.environ, CHATSERV_SOURCE=str(source)))
    if done.returncode != 0:
        raise RuntimeError(f"bench.store failed: {done.stderr[-2000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return {f"{engine}_stored_per_s": figures.get("stored_per_s") for engine, figures in report.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, type=Path)
    parser.add_argument("--after", default=str(servers.ROOT), type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per run")
    parser.add_argument("--rooms", type=int, default=4)
    parser.add_argument("--members", type=int, default=50)
    parser.add_argument("--engines", default="sqlite,postgresql")
    parser.add_argument("--only", nargs="+", choices=("fanout", "store"), default=("fanout", "store"))
    args = parser.parse_args(argv)
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    samples: dict[str, dict[str, list]] = {label: {} for label in trees}
    with tempfile.TemporaryDirectory(prefix="chatserv-compare-") as tmp:
        for round_ in range(args.rounds):
            order = list(trees) if round_ % 2 == 0 else list(reversed(trees))
            for label in order:
                figures = {}
                if "fanout" in args.only:
                    figures.update(fanout(trees[label], Path(tmp), args))
                if "store" in args.only:
                    figures.update(store(trees[label], args))
                print(f"round {round_ + 1} {label}: {figures}", file=sys.stderr, flush=True)
                for key, value in figures.items():
                    samples[label].setdefault(key, []).append(value)
    medians = {label: {key: statistics.median(v for v in values if v is not None)
                       for key, values in found.items()} for label, found in samples.items()}
    ratios = {key: round(medians["after"][key] / medians["before"][key], 3)
              for key in medians["before"] if medians["before"][key]}
    print(json.dumps({"medians": medians, "after_over_before": ratios, "samples": samples}))


if __name__ == "__main__":
    main()
