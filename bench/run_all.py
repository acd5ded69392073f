"""``make bench``: every benchmark in one run, one table, and bench/RESULTS.md.

1. storage: add_message throughput of the SQLite and PostgreSQL stores with bounded outstanding
   writes (group commit);
2. fan-out: the same IRC load (R rooms x N members, closed loop then a fixed rate) against
   chatserv (SQLite file), twisted.words and ngIRCd, then chatserv with ``--db memory``;
3. a profile of chatserv under the closed-loop load (py-spy, top functions), with each store;
4. cross-protocol: one IRC sender in the lobby, members on IRC, chat-room JSON, salted JSON
   and Socket.IO at once (bench/crossproto.py);
5. connections: N concurrent registered IRC clients per server process, RSS per connection;
6. rounds: chatserv and twisted.words closed loop, ``--rounds`` times in alternating order:
   the ratio per round, its median and its worst;
7. ceiling: the highest fixed rate at which chatserv's p99 stays under ``--ceiling-p99`` ms.

bench/RESULTS.md is rewritten, but its ``## `` sections this does not write (figures measured
side by side by hand, with their commands) are kept, before "How to read it".

Every server is a real process on a free loopback port, started and stopped here; chatserv
is ``twistd -n chatserv`` from this source tree with flood control off. The machine's two
cores are shared by server and client, so ``server CPU/delivery`` (microseconds of server
CPU per delivered message) is printed beside the rates: it does not depend on who won the
cores.

    python -m bench.run_all [--quick] [--connections 10000] [--only fanout profile ...]
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import platform
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import servers

ROOT = servers.ROOT
PYTHON = servers.PYTHON
SATURATED = 0.85  # a generator process using this much of a core limits the figure


def source() -> dict:
    """Which chatserv was measured: the commit, and whether its tree had uncommitted changes."""
    def git(*argv):
        done = subprocess.run(["git", "-C", str(servers.SOURCE), *argv], capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return {"path": str(servers.SOURCE), "commit": "unknown (not a git tree)"}
    dirty = bool(git("status", "--porcelain", "--", "chatserv", "twisted"))
    return {"path": str(servers.SOURCE), "commit": commit, "uncommitted_changes": dirty}


def machine() -> dict:
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    return {
        "nproc": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "cpu": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def loadavg() -> str:
    """The 1-minute load average: other work on the machine competes for the same cores."""
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


def run_json(argv: list[str], timeout: float) -> dict:
    """Run a bench client module; its last stdout line is its JSON report."""
    done = subprocess.run([PYTHON, "-m", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:1])} failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def progress(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


class Bench:
    def __init__(self, args, workdir: Path):
        self.args = args
        self.workdir = workdir
        self.results: dict = {"fanout": {}, "connections": {}, "notes": []}
        self.irc_ready = "irc" in servers.chatserv_ports()

    # servers

    def server(self, kind: str, *, db: str = "sqlite", profile_to: Path | None = None) -> servers.Server:
        port = servers.free_port()
        if kind == "chatserv":
            path = "memory" if db == "memory" else str(self.workdir / f"chatserv-{port}.sqlite3")
            return servers.chatserv(self.workdir, {"irc": port}, path, profile_to=profile_to)
        if kind == "twisted.words":
            return servers.twisted_words(self.workdir, port)
        return servers.ngircd(self.workdir, port)

    @staticmethod
    def password(kind: str) -> list[str]:
        return ["--password", "bench"] if kind == "twisted.words" else []

    @staticmethod
    def parallel(kind: str) -> str:
        """Connects in flight: ngIRCd listens with a backlog of 10, more only cost SYN retries."""
        return "8" if kind == "ngircd" else "100"

    def with_server(self, label: str, server: servers.Server, work):
        self.results.setdefault("loadavg", {})[label] = loadavg()
        progress(f"{label}: starting {server.name} on port {server.port} (load average {loadavg()})")
        try:
            server.start()
        except Exception as e:
            self.results["notes"].append(f"{label}: {server.name} did not start: {e}\n{server.tail()}")
            progress(f"{label}: {server.name} did not start: {e}")
            return None
        try:
            return work(server)
        except Exception as e:
            self.results["notes"].append(f"{label}: {e}".strip()[:3000])
            progress(f"{label}: failed: {e}")
            return None
        finally:
            server.stop()

    # the runs

    def storage(self):
        a = self.args
        progress("storage: add_message, SQLite then PostgreSQL")
        try:
            self.results["storage"] = run_json(
                ["bench.store", "--seconds", str(a.duration), "--outstanding", str(a.outstanding)],
                timeout=2 * (a.duration + 90))
        except Exception as e:
            self.results["notes"].append(f"storage: {e}")

    def fanout_timeout(self) -> float:
        return 4 * (self.args.duration + self.args.warmup) + 150

    def fanout_argv(self, server: servers.Server, kind: str, rate: int, processes: int = 1) -> list[str]:
        a = self.args
        return ["bench.fanout", "--port", str(server.port), "--server-pid", str(server.pid),
                "--rooms", str(a.rooms), "--members", str(a.members), "--window", str(a.window),
                "--duration", str(a.duration), "--warmup", str(a.warmup), "--rate", str(rate),
                "--parallel", self.parallel(kind), "--processes", str(processes), *self.password(kind)]

    def fanout(self, label: str, kind: str, db: str = "sqlite"):
        """One server under the fan-out load; while a generator process is saturated (and more
        may run), the run is repeated with twice the generator processes, and the last one counts."""
        a = self.args
        processes = a.generators

        def work(server):
            report = run_json(self.fanout_argv(server, kind, a.rate, processes),
                              timeout=self.fanout_timeout())
            report["rss_kib"] = server.rss_kib()
            return report

        while True:
            result = self.with_server(label, self.server(kind, db=db), work)
            if result is None:
                return
            busiest = max(result["max"].get("client_cpu_per_process") or [result["max"]["client_cpu"]])
            more = min(processes * 2, a.max_generators, a.rooms)
            if busiest < SATURATED or more <= processes:
                break
            self.results["notes"].append(
                f"{label}: a generator process used {busiest} of a core with {processes} of them: "
                f"measured again with {more}")
            progress(f"{label}: generator saturated ({busiest} of a core): again with {more} processes")
            processes = more
        self.results["fanout"][label] = result
        progress(f"{label}: {result['max']['deliveries_per_s']} deliveries/s, "
                 f"generator CPU {result['max']['client_cpu']} over {result.get('processes', 1)} process(es)")

    def profile(self, db: str):
        a = self.args
        out = self.workdir / f"chatserv-profile-{db}.txt"
        server = self.server("chatserv", db=db, profile_to=out)

        def work(server):
            return run_json(self.fanout_argv(server, "chatserv", 0), timeout=self.fanout_timeout())

        if self.with_server(f"profile --db {db}", server, work) is None:
            return
        if out.exists():
            self.results.setdefault("profile", {})[db] = top_functions(out.read_text(), a.top)
        else:
            self.results["notes"].append(f"profile --db {db}: py-spy wrote nothing\n{server.tail()}")

    def profile_logins(self, count: int):
        """py-spy while ``count`` IRC clients register: where per-login time goes."""
        a = self.args
        out = self.workdir / "chatserv-profile-logins.txt"
        server = self.server("chatserv", profile_to=out)

        def work(server):
            return run_json(["bench.connections", "--port", str(server.port), "--server-pid", str(server.pid),
                             "--count", str(count), "--budget", "20", "--nick-prefix", "p"], timeout=120)

        if self.with_server("profile logins", server, work) is None:
            return
        if out.exists():
            self.results.setdefault("profile", {})[f"sqlite, {count} IRC logins"] = top_functions(
                out.read_text(), a.top)

    def crossproto(self):
        a = self.args
        wires = ["irc", "chatroom", "salted", "web"]
        missing = [w for w in wires if w not in servers.chatserv_ports()]
        if missing:
            self.results["notes"].append(f"cross-protocol run skipped: no {', '.join(missing)} port")
            return
        ports = {w: servers.free_port() for w in wires}
        cheap_hash = ["--argon2-time-cost", "1", "--argon2-memory-cost", "1024", "--argon2-parallelism", "1"]
        server = servers.chatserv(self.workdir, ports, str(self.workdir / "chatserv-cross.sqlite3"),
                                  extra=cheap_hash)

        def work(server):
            return run_json(["bench.crossproto", *[f"--{w}={p}" for w, p in ports.items()],
                             "--server-pid", str(server.pid), "--members", str(a.cross_members),
                             "--duration", str(a.duration), "--warmup", str(a.warmup)],
                            timeout=self.fanout_timeout())

        result = self.with_server("cross-protocol", server, work)
        if result is not None:
            self.results["crossproto"] = result
            progress(f"cross-protocol: {result['max']['deliveries_per_s']} deliveries/s")

    def rounds(self):
        """chatserv against twisted.words, closed loop only, in alternating order: a ratio from
        one round is only as good as the machine's quiet during it."""
        a = self.args
        kinds = [("chatserv", "chatserv"), ("twisted.words", "twisted.words")]
        found = self.results["rounds"] = {"rounds": [], "window": a.window}
        for round_ in range(a.rounds):
            figures = {}
            for label, kind in (kinds if round_ % 2 == 0 else kinds[::-1]):
                def work(server, kind=kind):
                    return run_json(self.fanout_argv(server, kind, 0, a.generators),
                                    timeout=self.fanout_timeout())

                result = self.with_server(f"round {round_ + 1} {label}", self.server(kind), work)
                if result is None:
                    return
                figures[label] = {key: result["max"].get(key) for key in (
                    "deliveries_per_s", "server_us_per_delivery", "server_cpu", "client_cpu")}
            figures["ratio"] = round(figures["chatserv"]["deliveries_per_s"]
                                     / figures["twisted.words"]["deliveries_per_s"], 2)
            found["rounds"].append(figures)
            progress(f"round {round_ + 1}: chatserv / twisted.words {figures['ratio']}x")

    def ceiling(self):
        a = self.args

        def work(server):
            argv = self.fanout_argv(server, "chatserv", a.rate) + ["--ceiling-p99", str(a.ceiling_p99)]
            return run_json(argv, timeout=self.fanout_timeout() * 6)

        result = self.with_server("ceiling", self.server("chatserv"), work)
        if result is not None:
            self.results["ceiling"] = {**result["ceiling"], "rate": result["rate"]}
            progress(f"ceiling: p99 < {a.ceiling_p99} ms up to {result['ceiling']['highest_rate']:,}/s")

    def connections(self, label: str, kind: str):
        a = self.args

        def work(server):
            return run_json(["bench.connections", "--port", str(server.port), "--server-pid", str(server.pid),
                             "--count", str(a.connections), "--parallel", self.parallel(kind),
                             "--budget", str(a.connect_budget), *self.password(kind)],
                            timeout=a.connect_budget + 90)

        result = self.with_server(f"connections {label}", self.server(kind), work)
        if result is not None:
            self.results["connections"][label] = result
            progress(f"connections {label}: {result['alive']} registered, "
                     f"{result['kib_per_connection']} KiB each")

    def run(self):
        a = self.args
        if "storage" in a.only:
            self.storage()
        peers = [("twisted.words", "twisted.words")]
        if Path(servers.NGIRCD).exists():
            peers.append(("ngIRCd", "ngircd"))
        else:
            self.results["notes"].append("ngIRCd is not installed (Debian package ngircd): not measured")
        targets = ([("chatserv", "chatserv")] if self.irc_ready else []) + peers
        if not self.irc_ready:
            self.results["notes"].append("chatserv has no --irc port yet: only the peers were measured")
        if "fanout" in a.only:
            for label, kind in targets:
                self.fanout(label, kind)
            if self.irc_ready:
                self.fanout("chatserv --db memory", "chatserv", db="memory")
        if "profile" in a.only and self.irc_ready:
            if not Path(servers.PY_SPY).exists():
                self.results["notes"].append("py-spy is not installed in the venv: no profile")
            else:
                self.profile("sqlite")
                self.profile("memory")
                self.profile_logins(min(2000, a.connections or 2000))
        if "crossproto" in a.only:
            self.crossproto()
        if "connections" in a.only and a.connections:
            for label, kind in targets:
                self.connections(label, kind)
        if "rounds" in a.only and self.irc_ready and a.rounds:
            self.rounds()
        if "ceiling" in a.only and self.irc_ready:
            self.ceiling()


# the profile


def _short(frame: str) -> str:
    """``func (path:line)`` with the path cut to the project or the package."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", str(ROOT) + "/", "lib/python3."):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker == "lib/python3.":
                path = "stdlib/" + path.split("/", 1)[-1]
            break
    return f"{name} ({path})"


def top_functions(raw: str, count: int) -> dict:
    """Self shares per function, and inclusive shares of chatserv's own functions, from py-spy's
    raw (collapsed) output; start-up stacks (imports) are left out."""
    own = collections.Counter()
    inclusive = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack or not samples.isdigit() or "importlib" in stack:
            continue
        n = int(samples)
        total += n
        frames = [_short(f) for f in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            if "(chatserv/" in frame:
                inclusive[frame] += n

    def share(counter):
        return [(name, round(100 * n / total, 1)) for name, n in counter.most_common(count)]

    return {"samples": total, "self": share(own), "inclusive": share(inclusive)}


# the report


def _ms(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def _cpu(phase: dict, run: dict) -> str:
    """Cores the server and the load generator used in a phase: ``0.99 / 0.23`` (or ``/ 1.4 in 2``
    when several generator processes shared the load)."""
    if "client_cpu" not in phase:
        return "-"
    processes = run.get("processes", 1)
    generator = f"{phase['client_cpu']}" + (f" in {processes}" if processes > 1 else "")
    return f"{phase.get('server_cpu', '-')} / {generator}"


def _ratio(a, b) -> str:
    return "-" if not a or not b else f"{a / b:.2f}x"


def table(results: dict, args) -> str:
    fan = results["fanout"]
    lines = [] if not fan else [
        f"Fan-out: {args.rooms} rooms x {args.members} members over IRC, window {args.window}, "
        f"{args.duration:g} s per phase",
        "",
        "| server | closed loop deliveries/s | p50 ms | p99 ms | server CPU/delivery | "
        f"server / generator CPU | at {args.rate}/s: got/s | p50 ms | p99 ms | "
        "server / generator CPU | server RSS MiB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, r in fan.items():
        m, f = r["max"], r.get("rate") or {}
        lines.append(
            f"| {label} | {m['deliveries_per_s']:,} | {_ms(m['p50_ms'])} | {_ms(m['p99_ms'])} | "
            f"{m.get('server_us_per_delivery', '-')} us | {_cpu(m, r)} | {f.get('deliveries_per_s', 0):,} | "
            f"{_ms(f.get('p50_ms'))} | {_ms(f.get('p99_ms'))} | {_cpu(f, r)} | {r['rss_kib'] / 1024:.0f} |")
    pairs = [(ours, peer) for ours in ("chatserv", "chatserv --db memory")
             for peer in ("twisted.words", "ngIRCd") if ours in fan and peer in fan]
    if "chatserv" in fan and "chatserv --db memory" in fan:
        pairs.append(("chatserv", "chatserv --db memory"))
    if pairs:
        lines += ["", "| ratio | deliveries/s (higher: better) | server CPU per delivery (lower: better) |",
                  "| --- | ---: | ---: |"]
        for ours, peer in pairs:
            mine, theirs = fan[ours]["max"], fan[peer]["max"]
            rate = _ratio(mine["deliveries_per_s"], theirs["deliveries_per_s"])
            cpu = _ratio(mine.get("server_us_per_delivery"), theirs.get("server_us_per_delivery"))
            lines.append(f"| {ours} / {peer} | {rate} | {cpu} |")
    cross = results.get("crossproto")
    if cross:
        m = cross["max"]
        lines += ["", f"Cross-protocol lobby: one IRC sender, {cross['members_per_wire']} members on "
                      f"each wire, window {cross['window']}: {m['deliveries_per_s']:,} deliveries/s in all, "
                      f"server CPU {m.get('server_us_per_delivery', '-')} us/delivery, "
                      f"server / generator CPU {_cpu(m, cross)}",
                  "", "| wire | deliveries/s | p50 ms | p99 ms |", "| --- | ---: | ---: | ---: |"]
        for wire, g in m["by_group"].items():
            lines.append(f"| {wire} | {g['deliveries_per_s']:,} | {_ms(g['p50_ms'])} | {_ms(g['p99_ms'])} |")
    for engine, store in results.get("storage", {}).items():
        if "error" in store:
            lines += ["", f"Storage ({engine}): not measured: {store['error']}"]
            continue
        lines += ["", f"Storage ({engine} add_message, {store['outstanding']} in flight): "
                      f"{store['stored_per_s']:,} stored messages/s, commit p50 {store['commit_p50_ms']} ms, "
                      f"p99 {store['commit_p99_ms']} ms"]
    conns = results["connections"]
    if conns:
        lines += ["", f"Connections: up to {args.connections:,} registered IRC clients per server process, "
                      f"{args.connect_budget:g} s to connect",
                  "", "| server | registered | connects/s | first tenth /s | last tenth /s | "
                      "server / generator CPU | RSS before MiB | RSS held MiB | KiB per connection |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for label, c in conns.items():
            lines.append(f"| {label} | {c['alive']:,}/{c['connections']:,} | {c['connects_per_s'] or 0:,} | "
                         f"{c['connects_per_s_first_tenth'] or '-'} | "
                         f"{c['connects_per_s_last_tenth'] or '-'} | {_cpu(c, c)} | "
                         f"{c['rss_before_kib'] / 1024:.0f} | {c['rss_held_kib'] / 1024:.0f} | "
                         f"{c['kib_per_connection']} |")
    rounds = (results.get("rounds") or {}).get("rounds")
    if rounds:
        lines += ["", f"Fan-out rounds: chatserv and twisted.words, closed loop, {len(rounds)} rounds in "
                      "alternating order",
                  "", "| round | chatserv deliveries/s | server CPU/delivery | twisted.words deliveries/s | "
                      "server CPU/delivery | chatserv / twisted.words |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: |"]
        for n, r in enumerate(rounds, 1):
            ours, peer = r["chatserv"], r["twisted.words"]
            lines.append(f"| {n} | {ours['deliveries_per_s']:,} | {ours['server_us_per_delivery']} us | "
                         f"{peer['deliveries_per_s']:,} | {peer['server_us_per_delivery']} us | "
                         f"{r['ratio']}x |")
        ratios = [r["ratio"] for r in rounds]
        lines.append(f"| median | | | | | {statistics.median(ratios):.2f}x (worst {min(ratios):.2f}x) |")
    ceiling = results.get("ceiling")
    if ceiling:
        lines += ["", f"Fixed-rate ceiling (chatserv, SQLite): the highest rate with p99 under "
                      f"{ceiling['p99_limit_ms']:g} ms: {ceiling['highest_rate']:,} deliveries/s "
                      f"(the next probe up, {ceiling['lowest_failed_rate'] or 0:,}/s, did not hold)",
                  "", "| rate /s | got /s | p50 ms | p99 ms | shed | server / generator CPU |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: |"]
        for probe in ceiling["probes"]:
            lines.append(f"| {probe['target_deliveries_per_s']:,} | {probe['deliveries_per_s']:,} | "
                         f"{_ms(probe['p50_ms'])} | {_ms(probe['p99_ms'])} | {probe['shed_messages']} | "
                         f"{probe.get('server_cpu', '-')} / {probe.get('client_cpu', '-')} |")
    return "\n".join(lines)


def targets(results: dict, args) -> str:
    fan, lines = results["fanout"], []
    ours = fan.get("chatserv")
    for label in ("chatserv", "chatserv --db memory"):
        if label in fan and "twisted.words" in fan:
            got = fan[label]["max"]["deliveries_per_s"] / fan["twisted.words"]["max"]["deliveries_per_s"]
            lines.append(f"- fan-out >= 2.5x twisted.words ({label}): {got:.2f}x: "
                         f"{'met' if got >= 2.5 else 'NOT met'}")
    if ours:
        us = ours["max"].get("server_us_per_delivery")
        lines.append(f"- server CPU per delivery <= 1.5 us (chatserv, SQLite): {us} us: "
                     f"{'met' if us is not None and us <= 1.5 else 'NOT met'}")
    rounds = (results.get("rounds") or {}).get("rounds")
    if rounds:
        ratios = [r["ratio"] for r in rounds]
        median, worst = statistics.median(ratios), min(ratios)
        met = median >= 3 and worst >= 2.5
        lines.append(f"- fan-out >= 3x twisted.words, median of {len(ratios)} rounds, the worst >= 2.5x: "
                     f"{median:.2f}x, worst {worst:.2f}x: {'met' if met else 'NOT met'}")
    if ours and ours.get("rate"):
        p99 = ours["rate"]["p99_ms"]
        ok = p99 is not None and p99 < 5 and ours["rate"]["deliveries_per_s"] >= 0.98 * args.rate
        lines.append(f"- p99 < 5 ms at {args.rate:,} deliveries/s: {_ms(p99)} ms at "
                     f"{ours['rate']['deliveries_per_s']:,}/s: {'met' if ok else 'NOT met'}")
    if results.get("ceiling"):
        c = results["ceiling"]
        lines.append(f"- the highest fixed rate with p99 < {c['p99_limit_ms']:g} ms: {c['highest_rate']:,} "
                     "deliveries/s (reported, no target)")
    c = results["connections"].get("chatserv")
    if c:
        ok = c["alive"] >= 10000 and (c["kib_per_connection"] or 99) <= 3
        lines.append(f"- 10,000 connections at most 3 KiB each: {c['alive']:,} at "
                     f"{c['kib_per_connection']} KiB: {'met' if ok else 'NOT met'}")
        first, last = c["connects_per_s_first_tenth"], c["connects_per_s_last_tenth"]
        if first and last:
            lines.append(f"- connects that don't slow down, last tenth >= 0.9x the first: {last:,}/s after "
                         f"{first:,}/s ({last / first:.2f}x): {'met' if last >= 0.9 * first else 'NOT met'}")
    for engine, s in results.get("storage", {}).items():
        if "stored_per_s" in s:
            lines.append(f"- >= 20,000 stored messages/s ({engine}): {s['stored_per_s']:,}: "
                         f"{'met' if s['stored_per_s'] >= 20000 else 'NOT met'}")
    return "\n".join(lines)


def profile_text(profile: dict, db: str) -> str:
    load = "while the clients register" if "logins" in db else "under the closed-loop fan-out load"
    lines = [f"### chatserv --db {db}", "",
             f"py-spy --gil (samples of whichever thread holds the GIL), {profile['samples']} samples "
             f"{load}. Self: time in the function itself; inclusive: chatserv functions anywhere on "
             "the stack.", "",
             "| self % | function |", "| ---: | --- |"]
    lines += [f"| {pct} | `{name}` |" for name, pct in profile["self"]]
    lines += ["", "| inclusive % | chatserv function |", "| ---: | --- |"]
    lines += [f"| {pct} | `{name}` |" for name, pct in profile["inclusive"]]
    return "\n".join(lines)


GENERATED = {"Against the targets", "Profiles", "How to read it", "Raw figures"}


def kept_sections(path: Path) -> list[str]:
    """The ``## `` sections of the existing file that this does not write (figures measured side
    by side by hand), each as it was."""
    try:
        text = path.read_text()
    except OSError:
        return []
    kept, keeping = [], False
    for line in text.splitlines():
        if line.startswith("## "):
            keeping = line[3:].strip() not in GENERATED
            if keeping:
                kept.append("")
        if keeping:
            kept.append(line)
    return kept


def write_results(path: Path, results: dict, args, command: str, took: float) -> None:
    m = results["machine"]
    parts = [
        "# chatserv benchmark results",
        "",
        f"- date: {results['date']}",
        f"- command: `{command}` ({took:.0f} s)",
        f"- chatserv measured: {results['source']['path']} at {results['source']['commit']}"
        + (" with uncommitted changes in chatserv/" if results["source"].get("uncommitted_changes") else ""),
        f"- machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory_gib']} GiB, Linux {m['kernel']}, "
        f"Python {m['python']}; server and load generator share the CPUs",
        "- load average (1 min) when each run started, other work on the machine included: "
        + ", ".join(f"{label} {load}" for label, load in results.get("loadavg", {}).items()),
        "",
        table(results, args),
        "",
        "## Against the targets",
        "",
        targets(results, args) or "- (no chatserv figures)",
    ]
    for db, profile in results.get("profile", {}).items():
        parts += ["", "## Profiles" if db == "sqlite" else "", profile_text(profile, db)]
    parts += kept_sections(path)
    parts += [
        "",
        "## How to read it",
        "",
        "- A room is one sender plus N members; a message makes N deliveries. Closed loop: each sender "
        f"stays at most {args.window} messages ahead of its slowest member. Fixed rate: senders send on "
        "schedule and stamp each message with the time it was due (client lag counts as latency).",
        "- Latency: the age of the oldest message of every received chunk, weighted by the messages in "
        "that chunk (an upper bound). Closed-loop latency is mostly the window's queue.",
        "- \"server / generator CPU\": cores each used during the phase. A Python load-generator "
        "process tops out at one core; when one does (0.85 or more) the fan-out run is repeated with "
        f"twice the processes (up to {args.max_generators}), the rooms dealt out among them. On two "
        "shared cores a generator can still be the limit (ngIRCd's usually is): then the server's "
        "rate is a lower bound, and its CPU per delivery is the figure to compare.",
        "",
        "## Raw figures",
        "",
        "```json",
        json.dumps({k: v for k, v in results.items() if k != "profile"}, indent=1),
        "```",
        "",
    ]
    path.write_text("\n".join(parts))


RUNS = ["storage", "fanout", "profile", "crossproto", "connections", "rounds", "ceiling"]


def options(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rooms", type=int, default=4)
    parser.add_argument("--members", type=int, default=50)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--rate", type=int, default=20000, help="fixed-rate phase, deliveries/s")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds measured per phase")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--outstanding", type=int, default=2000, help="storage: writes in flight")
    parser.add_argument("--connections", type=int, default=10000, help="0 skips the connections run")
    parser.add_argument("--connect-budget", type=float, default=25.0,
                        help="connections run: seconds each server gets to register them")
    parser.add_argument("--cross-members", type=int, default=12, help="cross-protocol: members per wire")
    parser.add_argument("--generators", type=int, default=1,
                        help="fan-out: load-generator processes to start with")
    parser.add_argument("--max-generators", type=int, default=max(2, os.cpu_count() or 1),
                        help="fan-out: at most this many generator processes when one is saturated")
    parser.add_argument("--only", nargs="+", choices=RUNS, default=RUNS, help="the runs to do")
    parser.add_argument("--top", type=int, default=15, help="profile: functions listed")
    parser.add_argument("--quick", action="store_true", help="short phases, 2,000 connections")
    parser.add_argument("--rounds", type=int, default=5, help="rounds: chatserv / twisted.words rounds")
    parser.add_argument("--ceiling-p99", type=float, default=10.0, help="ceiling: the p99 to hold, ms")
    parser.add_argument("--output", default=str(ROOT / "bench" / "RESULTS.md"))
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.connections = 3.0, 0.5, min(args.connections, 2000)
        args.connect_budget = min(args.connect_budget, 20.0)
    return args


def _stop_on_sigterm(signum, frame):
    raise SystemExit(f"stopped by signal {signum}")  # so every started server is stopped too


def main(argv=None):
    args = options(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by servers and clients
    if args.connections + 200 > hard:
        progress(f"open-file hard limit {hard}: connections run lowered to {hard - 200}")
        args.connections = max(0, hard - 200)
    started = time.monotonic()
    command = " ".join(["python -m bench.run_all", *map(shlex.quote, sys.argv[1:])])
    with tempfile.TemporaryDirectory(prefix="chatserv-bench-") as tmp:
        bench = Bench(args, Path(tmp))
        bench.results["machine"] = machine()
        bench.results["source"] = source()
        bench.results["date"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        bench.results["settings"] = {k: v for k, v in vars(args).items() if k != "output"}
        bench.run()
    took = time.monotonic() - started
    print(table(bench.results, args))
    print()
    print(targets(bench.results, args))
    for db, profile in bench.results.get("profile", {}).items():
        print()
        print(profile_text(profile, db))
    for note in bench.results["notes"]:
        print(f"\nnote: {note}")
    write_results(Path(args.output), bench.results, args, command, took)
    print(f"\nwrote {args.output} ({took:.0f} s)")


if __name__ == "__main__":
    main()
