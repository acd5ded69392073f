"""Login flood: can a user still log in while one address floods the daemon with logins?

Starts ``twistd -n chatserv`` from this source tree (``bench.servers.chatserv``: SQLite file
in a temporary directory, the seed 000 line port on a free loopback port, the real argon2
cost) and registers ``alice``. Then ``--flooders`` connections from 127.0.0.2 send
``LOGIN <random name> <random password>`` back to back, each as soon as its last reply came
(reconnecting when the daemon closes them), while ``alice`` logs in from 127.0.0.1
``--tries`` times, one connection each, a second apart. Reports the median (and every)
latency of alice's login before and during the flood, the daemon's peak and last RSS during
the flood, and how the flood's attempts were answered. Prints one JSON object last.

    python -m bench.loginflood [--flooders 50] [--tries 7] [-- daemon options...]

Targets (issue 13): median login under 1 s and RSS under 250 MB during the flood.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import shutil
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.servers import chatserv, free_port, rss_kib

FLOOD_SOURCE = "127.0.0.2"
USER_SOURCE = "127.0.0.1"
PASSWORD = "alice-pw"
LOGIN_TIMEOUT = 60.0  # seconds a measured login may take before it counts as failed
TARGET_SECONDS = 1.0
TARGET_RSS_MB = 250


async def request(port: int, source: str, line: bytes) -> bytes:
    """One connection: send ``line``, read one reply line, close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        writer.write(line + b"\n")
        return (await asyncio.wait_for(reader.readline(), LOGIN_TIMEOUT)).strip()
    finally:
        writer.close()


async def timed_login(port: int) -> tuple[float, str]:
    started = time.monotonic()
    try:
        reply = await request(port, USER_SOURCE, b"LOGIN alice " + PASSWORD.encode())
    except (TimeoutError, OSError) as exc:
        reply = repr(exc).encode()
    return time.monotonic() - started, reply.decode(errors="replace")


async def flooder(port: int, replies: Counter, stop: asyncio.Event):
    """Logins with random names and passwords, one at a time, as fast as they are answered."""
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(FLOOD_SOURCE, 0))
        except OSError:
            replies["connect failed"] += 1
            await asyncio.sleep(0.1)
            continue
        try:
            while not stop.is_set():
                writer.write(f"LOGIN x{secrets.token_hex(6)} {secrets.token_hex(8)}\n".encode())
                line = await reader.readline()
                if not line:
                    replies["closed by the daemon"] += 1
                    break
                replies[line.strip().decode(errors="replace")] += 1
        except OSError:
            replies["connection error"] += 1
        finally:
            writer.close()


async def sample_rss(pid: int, samples: list[int], stop: asyncio.Event):
    while not stop.is_set():
        samples.append(rss_kib(pid))
        await asyncio.sleep(0.2)


async def measure(port: int, pid: int, args) -> dict:
    quiet = [await timed_login(port) for _ in range(3)]
    rss_before = rss_kib(pid)
    stop, replies, samples = asyncio.Event(), Counter(), []
    tasks = [asyncio.create_task(flooder(port, replies, stop)) for _ in range(args.flooders)]
    tasks.append(asyncio.create_task(sample_rss(pid, samples, stop)))
    flood_started = time.monotonic()
    await asyncio.sleep(args.warmup)
    flooded = []
    for _ in range(args.tries):
        flooded.append(await timed_login(port))
        await asyncio.sleep(1.0)
    flood_seconds = time.monotonic() - flood_started
    rss_last = rss_kib(pid)
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    answered = sum(n for reply, n in replies.items() if reply[:3].isdigit())
    return {
        "flooders": args.flooders,
        "daemon_options": args.daemon_options,
        "quiet_login_s": [round(s, 3) for s, _ in quiet],
        "quiet_median_s": round(statistics.median(s for s, _ in quiet), 3),
        "flood_login_s": [round(s, 3) for s, _ in flooded],
        "flood_login_replies": sorted({reply for _, reply in flooded}),
        "flood_median_s": round(statistics.median(s for s, _ in flooded), 3),
        "rss_before_mb": round(rss_before / 1024, 1),
        "rss_peak_mb": round(max(samples, default=rss_last) / 1024, 1),
        "rss_last_mb": round(rss_last / 1024, 1),
        "flood_attempts_per_s": round(answered / flood_seconds, 1),
        "flood_replies": dict(replies.most_common()),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flooders", type=int, default=50, help="flooding connections from 127.0.0.2")
    parser.add_argument("--tries", type=int, default=7, help="measured logins during the flood")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of flood before measuring")
    parser.add_argument("daemon_options", nargs="*", help="more twistd chatserv options (after --)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="chatserv-loginflood-"))
    port = free_port()
    server = chatserv(workdir, {"skype": port}, str(workdir / "flood.sqlite3"), extra=args.daemon_options)
    try:
        server.start()
        created = asyncio.run(request(port, USER_SOURCE, b"CREATE alice " + PASSWORD.encode()))
        if created != b"200 OK":
            raise SystemExit(f"cannot create alice: {created!r}")
        result = asyncio.run(measure(port, server.pid, args))
    except BaseException:
        print(server.tail())
        raise
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    met_time = result["flood_median_s"] < TARGET_SECONDS and result["flood_login_replies"] == ["200 OK"]
    met_rss = result["rss_peak_mb"] < TARGET_RSS_MB
    print(f"alice's login: {result['quiet_median_s']} s median without the flood, "
          f"{result['flood_median_s']} s with {args.flooders} flooders "
          f"(target < {TARGET_SECONDS} s: {'met' if met_time else 'NOT met'}); "
          f"replies {result['flood_login_replies']}")
    print(f"daemon RSS: {result['rss_before_mb']} MB before, "
          f"peak {result['rss_peak_mb']} MB during the flood "
          f"(target < {TARGET_RSS_MB} MB: {'met' if met_rss else 'NOT met'}); "
          f"flood answered {result['flood_attempts_per_s']} attempts/s")
    print(json.dumps(result))
    return 0 if met_time and met_rss else 1


if __name__ == "__main__":
    raise SystemExit(main())
