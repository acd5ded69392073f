"""Before and after: the same load against two chatserv trees, interleaved, several rounds.

On a shared machine timings drift from minute to minute, so a ratio is only worth something
when both sides were measured in the same run, next to each other: each round runs every
tree once (in alternating order, so neither always goes first), and the report gives each
figure's median over the rounds and the ratio of the medians. Memory figures (KiB per
connection) hardly vary; rates do. The load generator is this tree's bench/ in every case.

    python -m bench.compare --before /tmp/base [--after .] --rounds 5 --runs connections fanout

``--before`` is typically a ``git archive`` export of the commit to compare with.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
from pathlib import Path

from bench import servers
from bench.run_all import progress, run_json

# (run, figure, better): the figures each run reports, and which way is better
FIGURES = {
    "connections": [
        ("kib_per_connection", "lower"),
        ("connects_per_s", "higher"),
        ("connects_per_s_first_tenth", "higher"),
        ("connects_per_s_last_tenth", "higher"),
        ("last_over_first_tenth", "higher"),
        ("client_cpu", "-"),
        ("server_cpu", "-"),
    ],
    "fanout": [
        ("deliveries_per_s", "higher"),
        ("server_us_per_delivery", "lower"),
        ("p99_ms", "lower"),
        ("rate_p99_ms", "lower"),
        ("client_cpu", "-"),
        ("server_cpu", "-"),
    ],
}


def connections(args, server: servers.Server) -> dict:
    report = run_json(["bench.connections", "--port", str(server.port), "--server-pid", str(server.pid),
                       "--count", str(args.connections), "--parallel", "100",
                       "--budget", str(args.budget)], timeout=args.budget + 90)
    first, last = report["connects_per_s_first_tenth"], report["connects_per_s_last_tenth"]
    report["last_over_first_tenth"] = round(last / first, 2) if first and last else None
    return report


def fanout(args, server: servers.Server) -> dict:
    report = run_json(["bench.fanout", "--port", str(server.port), "--server-pid", str(server.pid),
                       "--rooms", str(args.rooms), "--members", str(args.members),
                       "--duration", str(args.duration), "--warmup", "1", "--rate", str(args.rate),
                       "--processes", str(args.processes)],
                      timeout=4 * (args.duration + 1) + 150)
    figures = dict(report["max"])
    figures["rate_p99_ms"] = (report.get("rate") or {}).get("p99_ms")
    return figures


RUNS = {"connections": connections, "fanout": fanout}


def measure(args, tree: Path, run: str, workdir: Path) -> dict | None:
    port = servers.free_port()
    db = "memory" if args.db == "memory" else str(workdir / f"chatserv-{port}.sqlite3")
    server = servers.chatserv(workdir, {"irc": port}, db, source=tree)
    try:
        server.start()
        return RUNS[run](args, server)
    except Exception as e:  # one failed round is reported, the others still count
        progress(f"{tree} {run}: failed: {e}\n{server.tail()}")
        return None
    finally:
        server.stop()


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def report(results: dict, args) -> str:
    labels = list(results)
    lines = []
    for run in args.runs:
        lines += ["", f"{run}: median of {args.rounds} rounds (each round: every tree once)", "",
                  "| figure | " + " | ".join(labels) + " | after / before |",
                  "| --- | " + " | ".join("---:" for _ in labels) + " | ---: |"]
        for figure, better in FIGURES[run]:
            medians = [median(r.get(figure) for r in results[label][run]) for label in labels]
            before, after = medians[0], medians[-1]
            ratio = f"{after / before:.2f}x" if before and after is not None else "-"
            shown = ["-" if m is None else f"{m:,.2f}".rstrip("0").rstrip(".") for m in medians]
            lines.append(f"| {figure} ({better}) | " + " | ".join(shown) + f" | {ratio} |")
        lines.append("\nper round:")
        for figure, better in FIGURES[run]:
            if better != "-":
                lines.append(f"- {figure}: " + "; ".join(
                    f"{label} {[r.get(figure) for r in results[label][run]]}" for label in labels))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="the chatserv tree to compare with")
    parser.add_argument("--after", type=Path, default=servers.SOURCE, help="the tree measured against it")
    parser.add_argument("--runs", nargs="+", choices=sorted(RUNS), default=["connections"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--db", choices=["sqlite", "memory"], default="sqlite")
    parser.add_argument("--connections", type=int, default=10000)
    parser.add_argument("--budget", type=float, default=40.0, help="connections: seconds to register in")
    parser.add_argument("--rooms", type=int, default=4)
    parser.add_argument("--members", type=int, default=50)
    parser.add_argument("--duration", type=float, default=4.0, help="fanout: seconds per phase")
    parser.add_argument("--rate", type=int, default=20000, help="fanout: fixed-rate phase (0: skip)")
    parser.add_argument("--processes", type=int, default=1, help="fanout: load-generator processes")
    args = parser.parse_args(argv)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by servers and clients
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    results = {label: {run: [] for run in args.runs} for label in trees}
    with tempfile.TemporaryDirectory(prefix="chatserv-compare-") as tmp:
        for round_ in range(args.rounds):
            order = list(trees) if round_ % 2 == 0 else list(reversed(trees))
            for run in args.runs:
                for label in order:
                    progress(f"round {round_ + 1}/{args.rounds}: {run}, {label} ({trees[label]})")
                    figures = measure(args, trees[label], run, Path(tmp))
                    if figures is not None:
                        results[label][run].append(figures)
    print(f"before: {trees['before']}\nafter: {trees['after']}")
    print(report(results, args))
    json.dump(results, sys.stderr)
    sys.stderr.write("\n")


if __name__ == "__main__":
    main()
