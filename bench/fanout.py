"""Fan-out load generator: R rooms x N members over IRC, one sender per room.

Every room has one sender connection plus N member connections, all registered as
guests and joined to ``#benchN``; a message therefore makes N deliveries. Two phases run
on the same connections:

- ``max``: each sender stays at most ``--window`` messages ahead of its slowest member
  (closed loop), so the figure is what the server sustains.
- ``rate``: the senders send at a fixed total of ``--rate`` deliveries/s (open loop, with
  a backlog bound), each message stamped with the time it was *due*, so client lag counts
  against latency rather than hiding it.

- ``ceiling`` (``--ceiling-p99 MS``): the highest fixed rate whose p99 stays under MS
  milliseconds, searched on the same connections: the rate doubles from ``--rate`` until a
  probe fails (p99 at or over MS, less than 98% of the rate delivered, or messages shed),
  then halves the gap ``--ceiling-steps`` times. Each probe is a ``rate`` phase.

Latency: each received chunk contributes one sample for its first (oldest) message, weighted
by the number of messages in the chunk: an upper bound per chunk. ``p50_ms``/``p99_ms`` are
the server's, socket to socket: from the moment the sender wrote the message to the moment the
member's kernel received the chunk (``SO_TIMESTAMPING``, read with ``recvmsg``; on loopback,
when the server sent it). ``client_p50_ms``/``client_p99_ms`` are what the generator saw: from
the time the message was due to the time the generator got round to reading it, so its own lag
on either side counts (the only figure before the kernel's stamps were used).
``client_cpu`` is the generator's own CPU (cores) over the phase: one asyncio process tops
out at one core, and near there the figure measures the generator, not the server. With
``--processes N`` the rooms are dealt out among N generator processes that start every
phase together; their figures are merged (percentiles over all their samples) and
``client_cpu_per_process`` shows whether any of them was saturated.

The result is one JSON object on stdout. Loopback only; every wait has a time bound.

    python -m bench.fanout --port 6667 --rooms 4 --members 50 --duration 8 --rate 20000
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import sys
import time

from bench.ircload import IrcConnection, close_all, now_ns, open_many
from bench.servers import cpu_seconds


class Stats:
    """Counters of one phase; ``active`` says whether arrivals are counted now."""

    def __init__(self):
        self.active = False
        self.deliveries = 0
        self.latencies: list[int] = []  # written to received by the kernel, ns
        self.lags: list[int] = []  # due to read by the generator, ns
        self.weights: list[int] = []

    def reset(self):
        self.deliveries = 0
        self.latencies = []
        self.lags = []
        self.weights = []

    def add(self, other: Stats):
        self.deliveries += other.deliveries
        self.latencies += other.latencies
        self.lags += other.lags
        self.weights += other.weights


# A message body is ~@<seq>~<written ns>~<due ns>~<padding>, the same on every wire.
MARK = b"~@"


def _body(buf: bytes, start: int, end: int):
    """(seq, written_ns, due_ns) of the message in the line ``buf[start:end]``, or None."""
    line = buf[start:end]
    at = line.find(MARK)
    if at < 0:
        return None
    fields = line[at + 2:].split(b"~", 3)
    try:
        return int(fields[0]), int(fields[1]), int(fields[2])
    except (ValueError, IndexError):
        return None


class Counting:
    """Mixin for a receiving member: per chunk, a count and two parsed lines."""

    room: Room
    index: int
    stats: Stats
    _tail = b""

    def count(self, data: bytes, arrived: int | None = None):
        buf = self._tail + data if self._tail else data
        end = buf.rfind(b"\n")
        if end < 0:
            self._tail = buf
            return
        self._tail = buf[end + 1:]
        count = buf.count(MARK, 0, end)
        if not count:
            return
        stats = self.stats
        if stats.active:
            stats.deliveries += count
            first = _body(buf, 0, buf.find(b"\n"))
            if first is not None:
                now = now_ns()
                stats.latencies.append((arrived or now) - first[1])
                stats.lags.append(now - first[2])
                stats.weights.append(count)
        last = _body(buf, buf.rfind(b"\n", 0, end) + 1, end)
        if last is not None:
            room = self.room
            room.acked[self.index] = last[0]
            if room.closed_loop:
                room.pump()


class Member(Counting, IrcConnection):
    def on_chunk(self, data: bytes, arrived: int | None = None):
        if data.startswith(b"PING") or b"\nPING" in data:
            self._answer_pings(data)
        self.count(data, arrived)


class Room:
    def __init__(self, channel: str, sender: IrcConnection, members: list[Counting], window: int, pad: bytes,
                 phase: float = 0.0):
        self.channel = channel.encode()
        self.phase = phase  # where in each step of the open loop this room's messages fall due
        self.sender = sender
        self.members = members
        self.window = window
        self.refill = max(1, window // 4)
        self.pad = pad
        self.acked = [0] * len(members)
        self.sent = 0
        self.closed_loop = False
        self.shed = 0  # messages the open-loop phase did not send because the backlog was full
        for index, member in enumerate(members):
            member.room = self
            member.index = index

    def backlog(self) -> int:
        return self.sent - min(self.acked)

    def pump(self):
        """Closed loop: top the window up once a quarter of it is free."""
        free = self.window - self.backlog()
        if free >= self.refill:
            self.send(free, now_ns(), 0)

    def send(self, count: int, first_due: int, step_ns: int):
        channel, pad, seq, written = self.channel, self.pad, self.sent, now_ns()
        self.sender.transport.write(b"".join(
            b"PRIVMSG %s :~@%d~%d~%d~%s\r\n" % (channel, seq + i, written, first_due + i * step_ns, pad)
            for i in range(1, count + 1)
        ))
        self.sent += count

    def drained(self) -> bool:
        return min(self.acked) >= self.sent


def server_cpu_seconds(pids: list[int]) -> float:
    """The CPU seconds of the server's processes together (the nodes of a cluster)."""
    return sum(cpu_seconds(pid) for pid in pids)


def percentile(values: list[int], weights: list[int], q: float) -> float | None:
    """Weighted percentile of nanosecond values, in milliseconds."""
    if not values:
        return None
    pairs = sorted(zip(values, weights, strict=True))
    goal = q * sum(weights)
    seen = 0
    for value, weight in pairs:
        seen += weight
        if seen >= goal:
            return value / 1e6
    return pairs[-1][0] / 1e6


def figures(stats: Stats, elapsed: float) -> dict:
    return {
        "deliveries": stats.deliveries,
        "deliveries_per_s": round(stats.deliveries / elapsed),
        "p50_ms": percentile(stats.latencies, stats.weights, 0.50),
        "p99_ms": percentile(stats.latencies, stats.weights, 0.99),
        "client_p50_ms": percentile(stats.lags, stats.weights, 0.50),
        "client_p99_ms": percentile(stats.lags, stats.weights, 0.99),
        "samples": len(stats.latencies),
    }


async def measure(rooms: list[Room], groups: dict[str, Stats], warmup: float, duration: float,
                  server_pid: int | None) -> dict:
    """Run (warmup, then duration) seconds and return that phase's figures, in total and,
    when members come in several groups, per group. ``server_pid``: one process, or several
    (the nodes of a cluster) whose CPU use adds up."""
    pids = [server_pid] if isinstance(server_pid, int) else list(server_pid or ())
    await asyncio.sleep(warmup)
    for stats in groups.values():
        stats.reset()
        stats.active = True
    sent0 = sum(r.sent for r in rooms)
    cpu0, server0, t0 = cpu_seconds(None), server_cpu_seconds(pids), time.monotonic()
    await asyncio.sleep(duration)
    for stats in groups.values():
        stats.active = False
    elapsed = time.monotonic() - t0
    total = Stats()
    for stats in groups.values():
        total.add(stats)
    result = {
        "seconds": round(elapsed, 2),
        **figures(total, elapsed),
        "messages_per_s": round((sum(r.sent for r in rooms) - sent0) / elapsed),
        "client_cpu": round((cpu_seconds(None) - cpu0) / elapsed, 2),
    }
    if pids:
        server_cpu = server_cpu_seconds(pids) - server0
        result["server_cpu"] = round(server_cpu / elapsed, 2)
        result["server_us_per_delivery"] = (
            round(server_cpu * 1e6 / total.deliveries, 2) if total.deliveries else None)
    if len(groups) > 1:
        result["by_group"] = {name: figures(stats, elapsed) for name, stats in groups.items()}
    return result


async def drain(rooms: list[Room], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(r.drained() for r in rooms):
            return True
        await asyncio.sleep(0.05)
    return False


async def open_loop(rooms: list[Room], per_room_rate: float, max_backlog: int, stop: asyncio.Event):
    """Send on schedule: message k of a room is due at its start + k / rate and stamped so.
    The rooms' schedules are spread over one step (``Room.phase``), as independent senders
    would be, rather than every room's message falling due at the same instant."""
    step_ns = int(1e9 / per_room_rate)
    begin_ns = now_ns()
    starts = [begin_ns + int(room.phase * step_ns) for room in rooms]
    issued = [0] * len(rooms)  # messages due so far: sent, or shed because the backlog was full
    while not stop.is_set():
        now = now_ns()
        for k, room in enumerate(rooms):
            count = max(0, (now - starts[k]) // step_ns) - issued[k]
            if count <= 0:
                continue
            allowed = max(0, min(count, max_backlog - room.backlog()))
            if allowed:
                room.send(allowed, starts[k] + issued[k] * step_ns, step_ns)
            room.shed += count - allowed
            issued[k] += count
        next_due_ns = min(start + (n + 1) * step_ns for start, n in zip(starts, issued, strict=True))
        await asyncio.sleep(min(0.005, max(0.0, (next_due_ns - now_ns()) / 1e9)))


async def open_rooms(args, numbers, stats: Stats) -> tuple[list[Room], list[IrcConnection]]:
    """Connect, register and join the rooms ``numbers`` (each a sender and its members), then
    switch every connection to counting into ``stats``."""
    pad = b"x" * max(0, args.body - 40)
    prefix = args.nick_prefix
    senders = await open_many(args.host, args.port, [f"{prefix}{r}s" for r in numbers],
                              args.password, timeout=args.timeout, parallel=args.parallel)
    member_nicks = [f"{prefix}{r}m{m}" for r in numbers for m in range(args.members)]
    members = await open_many(args.host, args.port, member_nicks[::2] if args.member_port else member_nicks,
                              args.password, timeout=args.timeout, factory=Member, parallel=args.parallel)
    if args.member_port:  # every other member on the other node: each room split between two
        elsewhere = await open_many(args.host, args.member_port, member_nicks[1::2], args.password,
                                    timeout=args.timeout, factory=Member, parallel=args.parallel)
        here, members = members, [m for pair in zip(members, elsewhere, strict=False) for m in pair]
        members += here[len(elsewhere):]  # the last one, when the count is odd
    everyone = senders + members
    try:
        rooms = []
        for k, (r, sender) in enumerate(zip(numbers, senders, strict=True)):
            mine = members[k * args.members:(k + 1) * args.members]
            rooms.append(Room(f"#{prefix}room{r}", sender, mine, args.window, pad, phase=r / args.rooms))
        joins = [room.sender.join(room.channel.decode()) for room in rooms]
        if args.member_port or args.cluster:  # the rooms exist (on every node) before members join
            await asyncio.wait_for(asyncio.gather(*joins), args.timeout)
            await asyncio.sleep(0.5)
        joins += [member.join(room.channel.decode()) for room in rooms for member in room.members]
        await asyncio.wait_for(asyncio.gather(*joins), args.timeout)
        await asyncio.sleep(0.5)  # let the JOIN notices of the last joiners arrive
    except BaseException:
        await close_all(everyone)
        raise
    for conn in everyone:
        conn._tail = conn._buffer
        conn.measuring = True
        conn.stats = stats
    for room in rooms:
        for member in room.members:
            member.read_stamped()
    return rooms, everyone


async def max_phase(rooms: list[Room], groups: dict[str, Stats], args, server_pid: int | None) -> dict:
    """Closed loop: what the server sustains."""
    for room in rooms:
        room.closed_loop = True
        room.pump()
    result = await measure(rooms, groups, args.warmup, args.duration, server_pid)
    for room in rooms:
        room.closed_loop = False
    result["drained"] = await drain(rooms, args.timeout)
    return result


async def rate_phase(rooms: list[Room], groups: dict[str, Stats], args, server_pid: int | None) -> dict:
    """Open loop at ``--rate`` deliveries/s in all (each room its share)."""
    stop = asyncio.Event()
    sending = asyncio.ensure_future(open_loop(
        rooms, args.rate / (args.rooms * args.members), args.max_backlog, stop))
    try:
        result = await measure(rooms, groups, args.warmup, args.duration, server_pid)
    finally:
        stop.set()
        await sending
    result["target_deliveries_per_s"] = args.rate
    result["shed_messages"] = sum(r.shed for r in rooms)
    result["drained"] = await drain(rooms, args.timeout)
    return result


def holds(result: dict, limit_ms: float) -> bool:
    """A fixed-rate probe kept its p99 under ``limit_ms``, delivered its rate, shed nothing."""
    p99 = result.get("p99_ms")
    return (p99 is not None and p99 < limit_ms and not result["shed_messages"]
            and result["deliveries_per_s"] >= 0.98 * result["target_deliveries_per_s"])


async def ceiling_phase(rooms: list[Room], groups: dict[str, Stats], args, server_pid: int | None) -> dict:
    """The highest fixed rate (deliveries/s) whose p99 stays under ``--ceiling-p99`` ms."""
    limit = args.ceiling_p99
    probes = []

    async def probe(rate: int) -> bool:
        at_rate = argparse.Namespace(**{**vars(args), "rate": rate})
        result = await rate_phase(rooms, groups, at_rate, server_pid)
        probes.append({key: result.get(key) for key in (
            "target_deliveries_per_s", "deliveries_per_s", "p50_ms", "p99_ms", "shed_messages",
            "server_cpu", "client_cpu")})
        return holds(result, limit) and result["drained"]

    good, bad = 0, None
    rate = max(1000, args.rate)
    while bad is None and rate <= args.ceiling_max:
        if await probe(rate):
            good, rate = rate, rate * 2
        else:
            bad = rate
    for _ in range(args.ceiling_steps if bad is not None else 0):
        middle = (good + bad) // 2
        if bad - good <= 1000:
            break
        if await probe(middle):
            good = middle
        else:
            bad = middle
    return {"p99_limit_ms": limit, "highest_rate": good, "lowest_failed_rate": bad, "probes": probes}


PHASES = {"max": max_phase, "rate": rate_phase, "ceiling": ceiling_phase}


def phase_names(args) -> list[str]:
    names = ["max", "rate"] if args.rate else ["max"]
    return names + ["ceiling"] if args.ceiling_p99 else names


async def run(args) -> dict:
    """Every room in this one process."""
    stats = Stats()
    groups = {"irc": stats}
    report: dict = {"rooms": args.rooms, "members": args.members, "window": args.window, "processes": 1}
    started = time.monotonic()
    rooms, everyone = await open_rooms(args, range(args.rooms), stats)
    try:
        report["setup_s"] = round(time.monotonic() - started, 2)
        report["connections"] = len(everyone)
        gc.collect()
        gc.disable()  # no collector pauses in the client's latency; the phases are short
        for name in phase_names(args):
            report[name] = await PHASES[name](rooms, groups, args, args.server_pid)
    finally:
        gc.enable()
        await close_all(everyone)
    return report


# several generator processes: one asyncio process tops out at one core


async def worker(args, numbers: list[int], pipe) -> None:
    """One generator process: its share of the rooms, each phase when the driver says go.

    Sends ("ready", connections), then per phase ("done", figures, stats);
    the driver merges them and measures the server.
    """
    loop = asyncio.get_running_loop()
    stats = Stats()
    groups = {"irc": stats}
    rooms, everyone = await open_rooms(args, numbers, stats)
    try:
        gc.collect()
        gc.disable()
        pipe.send(("ready", len(everyone)))
        while True:
            name, start_at = await loop.run_in_executor(None, pipe.recv)
            if name == "close":
                break
            await asyncio.sleep(max(0.0, start_at - time.monotonic()))
            result = await PHASES[name](rooms, groups, args, None)
            pipe.send(("done", result, stats))
    finally:
        gc.enable()
        await close_all(everyone)


def worker_main(args, numbers: list[int], pipe) -> None:
    try:
        asyncio.run(worker(args, numbers, pipe))
    except BaseException as e:
        pipe.send(("failed", repr(e)))
        raise


def _receive(pipe, timeout: float, expected: str):
    if not pipe.poll(timeout):
        raise TimeoutError(f"a generator process sent no {expected!r} in {timeout:.0f} s")
    message = pipe.recv()
    if message[0] != expected:
        raise RuntimeError(f"a generator process: {message}")
    return message[1:]


def merge(parts: list, elapsed: float, server_cpu: float | None) -> dict:
    """One phase's figures from every process's: sums, and percentiles over all the samples."""
    total = Stats()
    for _, stats in parts:
        total.add(stats)
    results = [result for result, _ in parts]
    merged = {
        "seconds": round(elapsed, 2),
        **figures(total, elapsed),
        "messages_per_s": sum(r["messages_per_s"] for r in results),
        "client_cpu": round(sum(r["client_cpu"] for r in results), 2),
        "client_cpu_per_process": [r["client_cpu"] for r in results],
        "drained": all(r["drained"] for r in results),
    }
    if server_cpu is not None:
        merged["server_cpu"] = round(server_cpu / elapsed, 2)
        merged["server_us_per_delivery"] = (
            round(server_cpu * 1e6 / total.deliveries, 2) if total.deliveries else None)
    if "target_deliveries_per_s" in results[0]:  # the open-loop phase
        merged["target_deliveries_per_s"] = results[0]["target_deliveries_per_s"]
        merged["shed_messages"] = sum(r["shed_messages"] for r in results)
    return merged


def run_processes(args) -> dict:
    """``--processes`` generator processes, the rooms dealt out among them, every phase started
    at the same moment in all of them; this process measures the server over the phase."""
    count = min(args.processes, args.rooms)
    context = multiprocessing.get_context("fork")  # no threads or event loop here yet
    pipes, processes = [], []
    for w in range(count):
        mine, theirs = context.Pipe()
        process = context.Process(target=worker_main, args=(args, list(range(w, args.rooms, count)), theirs),
                                  daemon=True)
        process.start()
        pipes.append(mine)
        processes.append(process)
    report: dict = {"rooms": args.rooms, "members": args.members, "window": args.window, "processes": count}
    started = time.monotonic()
    try:
        report["connections"] = sum(_receive(p, args.timeout * 3, "ready")[0] for p in pipes)
        report["setup_s"] = round(time.monotonic() - started, 2)
        for name in phase_names(args):
            start_at = time.monotonic() + 0.2
            for pipe in pipes:
                pipe.send((name, start_at))
            time.sleep(max(0.0, start_at + args.warmup - time.monotonic()))
            pids = args.server_pid or []
            server0, t0 = server_cpu_seconds(pids), time.monotonic()
            time.sleep(args.duration)
            elapsed = time.monotonic() - t0
            server_cpu = server_cpu_seconds(pids) - server0 if pids else None
            parts = [_receive(p, args.timeout * 2 + args.duration, "done") for p in pipes]
            report[name] = merge(parts, elapsed, server_cpu)
    finally:
        for pipe in pipes:
            try:
                pipe.send(("close", 0.0))
            except OSError:
                pass
        for process in processes:
            process.join(args.timeout)
            if process.is_alive():
                process.kill()
    return report


def options(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--password", default=None, help="send PASS first (twisted.words needs one)")
    parser.add_argument("--rooms", type=int, default=4)
    parser.add_argument("--members", type=int, default=50, help="receiving members per room")
    parser.add_argument("--window", type=int, default=64, help="messages a sender may be ahead")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds measured per phase")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before each phase counts")
    parser.add_argument("--rate", type=int, default=20000, help="open-loop deliveries/s (0: skip)")
    parser.add_argument("--max-backlog", type=int, default=2000, help="open loop: unanswered per room")
    parser.add_argument("--body", type=int, default=80, help="bytes of message text")
    parser.add_argument("--nick-prefix", default="b")
    parser.add_argument("--parallel", type=int, default=100, help="connects in flight while setting up")
    parser.add_argument("--server-pid", type=int, action="append", default=None,
                        help="report this process's CPU use (several: their sum)")
    parser.add_argument("--member-port", type=int, default=None,
                        help="another node's port: every other member connects there")
    parser.add_argument("--cluster", action="store_true",
                        help="the port leads to several nodes: senders make the rooms before members join")
    parser.add_argument("--timeout", type=float, default=30.0, help="bound on connecting, joining, draining")
    parser.add_argument("--processes", type=int, default=1,
                        help="generator processes, the rooms dealt out among them (one tops out at a core)")
    parser.add_argument("--ceiling-p99", type=float, default=0.0,
                        help="also search the highest fixed rate whose p99 stays under this many ms (0: no)")
    parser.add_argument("--ceiling-steps", type=int, default=4, help="ceiling: halvings after the doubling")
    parser.add_argument("--ceiling-max", type=int, default=1_000_000, help="ceiling: rates probed at most")
    args = parser.parse_args(argv)
    if args.ceiling_p99 and args.processes > 1:
        parser.error("--ceiling-p99 runs in one generator process")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("loopback only")
    return args


def main(argv=None):
    args = options(argv)
    probes = 4 + args.ceiling_steps + 16 if args.ceiling_p99 else 0
    budget = args.timeout * 4 + (2 + probes) * (args.warmup + args.duration) + 30
    if args.processes > 1:
        report = run_processes(args)
    else:
        report = asyncio.run(asyncio.wait_for(run(args), budget))
    json.dump(report, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
