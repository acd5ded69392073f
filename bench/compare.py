"""A/B: the same load against two chatserv source trees, measured in one interleaved run.

On a shared machine timings drift from minute to minute, so a ratio is only worth something
when both sides were measured in the same run, next to each other. Each round runs every
chosen benchmark against each tree, alternating which goes first (ABBA...), so that a change
in the machine's load weighs on both alike. Prints each figure's median per tree, the ratio,
and the figures of every round (the spread says how far a median is to be trusted); the last
line is the same as JSON. The load generator is this tree's bench/ in every case.

- ``fanout``: ``bench.fanout`` against a daemon from each tree (``--rate`` adds its
  fixed-rate phase and that phase's p99);
- ``store``: ``bench.store`` with each tree, for each of ``--engines``;
- ``connections``: ``bench.connections`` (``--connections`` registered IRC clients): KiB per
  connection, and the registration rate of the last tenth against the first.

    git archive main | tar -x -C /tmp/before
    python -m bench.compare --before /tmp/before --after . --rounds 3
    python -m bench.compare --before /tmp/before --rounds 5 --only connections fanout
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import servers
from bench.run_all import progress, run_json

# Which way is better, per figure; figures not named here are shown but not judged.
LOWER = {"kib_per_connection", "server_us_per_delivery", "p99_ms", "rate_p50_ms", "rate_p99_ms",
         "rate_client_p99_ms", "rate_server_cpu"}
SHOWN_FIRST = ("kib_per_connection", "last_over_first_tenth", "deliveries_per_s", "server_us_per_delivery")


def with_daemon(source: Path, workdir: Path, work) -> dict:
    port = servers.free_port()
    db = str(workdir / f"chatserv-{port}.sqlite3")
    server = servers.chatserv(workdir, {"irc": port}, db, source=source)
    server.start()
    try:
        return work(server)
    finally:
        server.stop()


def fanout(source: Path, workdir: Path, args) -> dict:
    def work(server):
        report = run_json(["bench.fanout", "--port", str(server.port), "--server-pid", str(server.pid),
                           "--rooms", str(args.rooms), "--members", str(args.members),
                           "--duration", str(args.duration), "--warmup", "1", "--rate", str(args.rate),
                           "--processes", str(args.processes)],
                          timeout=4 * (args.duration + 1) + 150)
        m = report["max"]
        figures = {key: m.get(key) for key in ("deliveries_per_s", "server_us_per_delivery", "p99_ms")}
        figures["fanout_server_cpu"] = m.get("server_cpu")
        figures["fanout_generator_cpu"] = m.get("client_cpu")
        if report.get("rate"):
            rate = report["rate"]
            figures.update(rate_p50_ms=rate["p50_ms"], rate_p99_ms=rate["p99_ms"],
                           rate_client_p99_ms=rate.get("client_p99_ms"),
                           rate_server_cpu=rate.get("server_cpu"))
        return figures

    return with_daemon(source, workdir, work)


def store(source: Path, workdir: Path, args) -> dict:
    done = subprocess.run([sys.executable, "-m", "bench.store", "--seconds", str(args.duration),
                           "--engines", args.engines], cwd=servers.ROOT, capture_output=True, text=True,
                          timeout=4 * args.duration + 200, env=dict(os.environ, CHATSERV_SOURCE=str(source)))
    if done.returncode != 0:
        raise RuntimeError(f"bench.store failed: {done.stderr[-2000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return {f"{engine}_stored_per_s": figures.get("stored_per_s") for engine, figures in report.items()}


def connections(source: Path, workdir: Path, args) -> dict:
    def work(server):
        report = run_json(["bench.connections", "--port", str(server.port), "--server-pid", str(server.pid),
                           "--count", str(args.connections), "--parallel", "100",
                           "--budget", str(args.budget)], timeout=args.budget + 90)
        first, last = report["connects_per_s_first_tenth"], report["connects_per_s_last_tenth"]
        return {"kib_per_connection": report["kib_per_connection"],
                "last_over_first_tenth": round(last / first, 2) if first and last else None,
                "connects_per_s": report["connects_per_s"], "first_tenth_per_s": first,
                "last_tenth_per_s": last, "connect_server_cpu": report["server_cpu"],
                "connect_generator_cpu": report["client_cpu"]}

    return with_daemon(source, workdir, work)


RUNS = {"fanout": fanout, "store": store, "connections": connections}


def median(values: list):
    found = [v for v in values if v is not None]
    return statistics.median(found) if found else None


def _number(value) -> str:
    return "-" if value is None else f"{value:,.2f}".rstrip("0").rstrip(".")


def report(samples: dict, args) -> tuple[str, dict]:
    """The table (markdown) and the JSON summary of every figure."""
    keys = sorted({k for found in samples.values() for k in found},
                  key=lambda k: (SHOWN_FIRST.index(k) if k in SHOWN_FIRST else len(SHOWN_FIRST), k))
    medians = {label: {k: median(found.get(k, [])) for k in keys} for label, found in samples.items()}
    ratios = {k: round(medians["after"][k] / medians["before"][k], 3)
              for k in keys if medians["before"][k] and medians["after"][k] is not None}
    lines = [f"median of {args.rounds} rounds, each round every tree once", "",
             "| figure | before | after | after / before |", "| --- | ---: | ---: | ---: |"]
    for k in keys:
        better = "lower" if k in LOWER else "-" if k.endswith("_cpu") else "higher"
        ratio = f"{ratios[k]:.2f}x" if k in ratios else "-"
        lines.append(f"| {k} ({better}) | {_number(medians['before'][k])} | "
                     f"{_number(medians['after'][k])} | {ratio} |")
    lines += ["", "per round:"]
    lines += [f"- {k}: before {samples['before'].get(k)}; after {samples['after'].get(k)}"
              for k in keys if not k.endswith("_cpu")]
    return "\n".join(lines), {"medians": medians, "after_over_before": ratios, "samples": samples}


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, type=Path, help="the tree to compare with")
    parser.add_argument("--after", default=str(servers.ROOT), type=Path, help="the tree measured against it")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", nargs="+", choices=sorted(RUNS), default=("fanout", "store"))
    parser.add_argument("--duration", type=float, default=5.0, help="fanout, store: seconds measured per run")
    parser.add_argument("--rooms", type=int, default=4)
    parser.add_argument("--members", type=int, default=50)
    parser.add_argument("--rate", type=int, default=0,
                        help="fanout: fixed-rate phase, deliveries/s (0: none)")
    parser.add_argument("--processes", type=int, default=1, help="fanout: load-generator processes")
    parser.add_argument("--engines", default="sqlite,postgresql", help="store: the engines")
    parser.add_argument("--connections", type=int, default=10000, help="connections: clients registered")
    parser.add_argument("--budget", type=float, default=40.0, help="connections: seconds to register in")
    args = parser.parse_args(argv)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by servers and clients
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    samples: dict[str, dict[str, list]] = {label: {} for label in trees}
    with tempfile.TemporaryDirectory(prefix="chatserv-compare-") as tmp:
        for round_ in range(args.rounds):
            order = list(trees) if round_ % 2 == 0 else list(reversed(trees))
            for run in args.only:
                for label in order:
                    progress(f"round {round_ + 1}/{args.rounds}: {run}, {label} ({trees[label]})")
                    figures = RUNS[run](trees[label], Path(tmp), args)
                    for key, value in figures.items():
                        samples[label].setdefault(key, []).append(value)
    table, summary = report(samples, args)
    print(f"before: {trees['before']}\nafter: {trees['after']}\n\n{table}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
