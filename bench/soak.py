"""Soak: mixed traffic on every port of a real ``twistd -n chatserv`` for a set time, watching
the daemon's memory (VmRSS) and open file descriptors for growth.

The daemon runs from this source tree with a SQLite file in a temporary directory and every
port on a free loopback port (``bench.servers.chatserv``: message rate and connection limits
off, so the load is steady). A few clients per port loop through that port's everyday
requests, logging in and out and reconnecting as real clients do; one more sends garbage,
overlong lines and abandoned connections to every port. RSS and the descriptor count are
read after start, after the warm-up, in the middle, at the end of the traffic, and once the
last clients have gone; the run is *flat* when the end is within 10% (plus 8 MiB of RSS, 16
descriptors) of the value after warm-up, and the descriptors after traffic are back within
16 of those at start. Prints a summary and one JSON object; exits 1 when not flat.

    python -m bench.soak --duration 60
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
import urllib.parse
from collections import Counter
from pathlib import Path

from bench.servers import chatserv, chatserv_ports, free_port, rss_kib

FAST_HASH = ["--argon2-time-cost", "1", "--argon2-memory-cost", "1024", "--argon2-parallelism", "1"]
# Every soak client comes from 127.0.0.1: the per-address limit on logins hashing at once
# would tell most of their logins "busy, try again" (bench/loginflood.py measures that limit).
ONE_ADDRESS = ["--logins-per-ip", "0"]
STEP_TIMEOUT = 10.0  # seconds one request may take before the client counts an error and reconnects
PASSWORD = "soak-pw"


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Lines:
    """An asyncio connection read by lines or by fixed sizes, every read bounded in time."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Lines:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), STEP_TIMEOUT)
        return cls(reader, writer)

    def send(self, data: bytes):
        self.writer.write(data)

    async def line(self) -> bytes:
        line = await asyncio.wait_for(self.reader.readline(), STEP_TIMEOUT)
        if not line:
            raise ConnectionError("closed by the server")
        return line.rstrip(b"\r\n")

    async def until(self, predicate) -> bytes:
        """Lines until one satisfies ``predicate`` (at most 10000: pushes in between are skipped)."""
        for _ in range(10000):
            line = await self.line()
            if predicate(line):
                return line
        raise RuntimeError("no expected line in 10000")

    async def exactly(self, size: int) -> bytes:
        return await asyncio.wait_for(self.reader.readexactly(size), STEP_TIMEOUT)

    def close(self):
        self.writer.close()


class Soak:
    def __init__(self, ports: dict[str, int], deadline: float, seed: int):
        self.ports = ports
        self.deadline = deadline
        self.random = random.Random(seed)
        self.counts: Counter = Counter()
        self.errors: Counter = Counter()
        self.first_errors: list[str] = []

    def running(self) -> bool:
        return time.monotonic() < self.deadline

    async def worker(self, name: str, cycle, *args):
        """Run ``cycle`` again and again until the deadline; a failure is counted, then it starts over."""
        while self.running():
            try:
                await cycle(*args)
            except Exception as exc:  # counted and reported: the soak is about the daemon, not us
                self.errors[name] += 1
                if len(self.first_errors) < 10:
                    self.first_errors.append(f"{name}: {exc.__class__.__name__}: {exc}")
                await asyncio.sleep(0.2)

    # one cycle per port: connect, log in, the everyday requests, leave

    async def skype(self, user: str, other: str):
        client = await Lines.open(self.ports["skype"])
        try:
            for request, expected in [(f"LOGIN {user} {PASSWORD}", b"200"), (f"SEARCH {other}", b"201"),
                                      (f"ADD {other}", b"200"), (f"AVAILABLE {other}", b""), ("LIST", b"201"),
                                      ("PING", b"200"), ("EXIT", b"201")]:
                client.send(request.encode() + b"\n")
                reply = await client.line()
                if not reply.startswith(expected) and not request.startswith("ADD"):
                    raise RuntimeError(f"{request!r} -> {reply!r}")
                self.counts["skype requests"] += 1
        finally:
            client.close()

    async def skype_framed(self, user: str):
        client = await Lines.open(self.ports["skype-framed"])

        async def frame() -> bytes:
            return await client.exactly(int(await client.exactly(10)))

        try:
            assert await frame() == b"200 OK"
            for request in [f"LOGIN {user} {PASSWORD}", f"SEARCH {user}", "PING", "LIST", "EXIT"]:
                client.send(b"%010d%s" % (len(request), request.encode()))
                await frame()
                self.counts["skype-framed requests"] += 1
        finally:
            client.close()

    async def salted(self, user: str):
        client = await Lines.open(self.ports["salted"])

        async def answer(request: dict, wanted) -> dict:
            client.send(json.dumps(request).encode() + b"\n")
            line = await client.until(lambda line: wanted(json.loads(line)) or b'"error"' in line)
            return json.loads(line)

        try:
            salt = (await answer({"type": "salt", "user": user}, lambda r: r["type"] == "salt"))["salt"]
            digest = hashlib.sha256((salt + PASSWORD).encode()).hexdigest()
            login = await answer({"type": "login", "user": user, "password": digest},
                                 lambda r: r["type"] == "login")
            if login.get("success") != "true":
                raise RuntimeError(f"salted login: {login}")
            for number in range(50):
                mine = {"type": "message", "from": user, "message": f"salted {number}"}
                if await answer({"type": "message", "user": user, "message": mine["message"]},
                                mine.__eq__) != mine:
                    raise RuntimeError("salted message refused")
                self.counts["salted messages"] += 1
            await answer({"type": "userlist", "user": user, "onlinetype": "true"},
                         lambda r: r["type"] == "userlist")
            client.send(b'{"type":"disconnect"}\n')
        finally:
            client.close()

    async def chatroom(self, user: str, other: str):
        client = await Lines.open(self.ports["chatroom"])

        async def result(request: dict) -> dict:
            client.send(json.dumps(request).encode() + b"\n")
            return json.loads(await client.until(lambda line: b'"type"' not in line))  # replies have no type

        try:
            if await result({"type": "auth", "username": user, "password": PASSWORD}) != {"result": "ok"}:
                raise RuntimeError("chat-room login refused")
            for number in range(20):
                await result({"type": "broadcast", "from": user, "msg": f"chatroom {number}"})
                await result({"type": "message", "from": user, "to": other, "msg": f"direct {number}"})
                self.counts["chatroom messages"] += 2
            await result({"type": "online"})
            await result({"type": "logout", "from": user})
        finally:
            client.close()

    async def rooms(self, user: str, other: str):
        from chatserv.protocols.framing import LiteralFramer

        client = await Lines.open(self.ports["rooms"])
        framer = LiteralFramer(1 << 16)

        async def reply(request: list) -> bytes:
            client.send(repr(request).encode())
            frames: list = []
            while not frames:
                frames = framer.feed(await asyncio.wait_for(client.reader.read(4096), STEP_TIMEOUT))
            return frames[0]

        try:
            await client.line()  # the greeting
            await reply([2, [user, PASSWORD]])
            await reply([3, ["soakroom", user]])  # an error once it exists: fine
            await reply([5, ["soakroom", user]])  # an error once joined: fine
            for number in range(10):
                if await reply([8, [user, "soakroom", f"rooms {number}"]]) != b"['OK']":
                    raise RuntimeError("rooms message refused")
                await reply([11, [user, other, f"personal {number}"]])
                self.counts["rooms messages"] += 2
            await reply([9, [user, "soakroom"]])
            await reply([12, [user]])
            self.counts["rooms history reads"] += 2
        finally:
            client.close()

    async def irc(self, user: str):
        client = await Lines.open(self.ports["irc"])
        try:
            client.send(b"PASS %s\r\nNICK %s\r\nUSER %s 0 * :soak\r\n" % (PASSWORD.encode(), user.encode(),
                                                                           user.encode()))
            await client.until(lambda line: b" 376 " in line or b" 422 " in line)
            client.send(b"JOIN #soak\r\n")
            await client.until(lambda line: b" 366 " in line)
            for number in range(20):
                client.send(b"PRIVMSG #soak :irc %d\r\n" % number)
                self.counts["irc messages"] += 1
            client.send(b"CHATHISTORY LATEST #soak * 20\r\nPING :soak-%d\r\n" % id(client))
            await client.until(lambda line: line.endswith(b"soak-%d" % id(client)))
            client.send(b"QUIT :bye\r\n")
            await client.until(lambda line: line.startswith(b"ERROR"))
        finally:
            client.close()

    async def http(self, method: str, path: str, params: dict, body: bytes = b"") -> tuple[int, bytes]:
        client = await Lines.open(self.ports["web"])
        try:
            target = path + "?" + urllib.parse.urlencode(params)
            client.send(f"{method} {target} HTTP/1.0\r\nHost: 127.0.0.1\r\n"
                        f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            response = await asyncio.wait_for(client.reader.read(), STEP_TIMEOUT)
        finally:
            client.close()
        head, _, content = response.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), content

    async def web(self, user: str, other: str):
        status, body = await self.http("POST", "/login", {"username": user, "password": PASSWORD})
        if status != 200:
            raise RuntimeError(f"web login: {status} {body[:100]!r}")
        session = json.loads(body)["sessionID"]
        for number in range(5):
            await self.http("POST", "/saveMessage", {"sessionID": session, "recipientID": other,
                                                     "content": f"web {number}"})
            self.counts["web messages"] += 1
        await self.http("GET", "/getContactMessages", {"sessionID": session, "contact": other})
        status, body = await self.http("GET", "/socket.io/", {"EIO": "4", "transport": "polling",
                                                             "sessionID": session})
        sid = json.loads(body[1:])["sid"]
        polling = {"EIO": "4", "transport": "polling", "sid": sid}
        await self.http("POST", "/socket.io/", polling, b"40")
        await self.http("GET", "/socket.io/", polling)  # the CONNECT answer
        await self.http("POST", "/socket.io/", polling, b"1")  # Engine.IO close
        await self.http("POST", "/logout", {"sessionID": session})
        self.counts["web sessions"] += 1

    async def hostile(self):
        """Garbage, an overlong line and an abandoned request on a random port."""
        option = self.random.choice(sorted(self.ports))
        client = await Lines.open(self.ports[option])
        try:
            kind = self.random.randrange(3)
            if kind == 0:
                size = self.random.randrange(1, 600)
                client.send(bytes(self.random.randrange(256) for _ in range(size)) + b"\n")
            elif kind == 1:
                client.send(b"x" * 20000 + b"\n")
            else:
                client.send(b'{"type":"auth","username":')  # and leave mid-request
            await client.writer.drain()
            self.counts["hostile connections"] += 1
        finally:
            client.close()
        await asyncio.sleep(0.05)  # churn, not a connection storm


async def create_accounts(port: int, names: list[str]):
    for name in names:
        client = await Lines.open(port)
        client.send(f"CREATE {name} {PASSWORD}\nEXIT\n".encode())
        await client.line()
        client.close()


def sample(pid: int) -> dict:
    return {"rss_kib": rss_kib(pid), "fds": fd_count(pid), "at": round(time.monotonic(), 1)}


async def run(args) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="chatserv-soak-"))
    ports = {option: free_port() for option in chatserv_ports()}
    server = chatserv(workdir, ports, str(workdir / "soak.sqlite3"), extra=FAST_HASH + ONE_ADDRESS).start()
    samples = {}
    try:
        samples["start"] = sample(server.pid)
        kinds = ["skype", "framed", "salted", "chatroom", "rooms", "irc", "web"]
        users = {kind: [f"soak_{kind}_{n}" for n in range(args.clients)] for kind in kinds}
        names = [u for kind in kinds for u in users[kind]]
        await create_accounts(ports["skype"], [*names, "soak_target"])
        started = time.monotonic()
        soak = Soak(ports, started + args.duration, args.seed)
        tasks = []
        for n in range(args.clients):
            tasks += [
                soak.worker("skype", soak.skype, users["skype"][n], "soak_target"),
                soak.worker("skype-framed", soak.skype_framed, users["framed"][n]),
                soak.worker("salted", soak.salted, users["salted"][n]),
                soak.worker("chatroom", soak.chatroom, users["chatroom"][n], "soak_target"),
                soak.worker("rooms", soak.rooms, users["rooms"][n], "soak_target"),
                soak.worker("irc", soak.irc, users["irc"][n]),
                soak.worker("web", soak.web, users["web"][n], "soak_target"),
            ]
        tasks.append(soak.worker("hostile", soak.hostile))
        running = [asyncio.ensure_future(task) for task in tasks]
        for name, at in [("after warm-up", args.warmup), ("middle", args.duration / 2),
                         ("end of traffic", args.duration - 0.5)]:
            await asyncio.sleep(max(0.0, started + at - time.monotonic()))
            samples[name] = sample(server.pid)
        await asyncio.gather(*running)
        await asyncio.sleep(args.settle)
        samples["after traffic"] = sample(server.pid)
        status, metrics = await soak.http("GET", "/metrics", {})
        totals = {line.split()[0]: int(float(line.split()[1])) for line in metrics.decode().splitlines()
                  if line.startswith("chatserv_") and line.split()[0].endswith("_total")}
    finally:
        server.stop()
    log = server.log.read_text(errors="replace")
    warm, end = samples["after warm-up"], samples["end of traffic"]
    flat = {
        "rss": end["rss_kib"] <= warm["rss_kib"] * 1.10 + 8192,
        "fds": end["fds"] <= warm["fds"] * 1.10 + 16,
        "fds back after traffic": samples["after traffic"]["fds"] <= samples["start"]["fds"] + 16,
    }
    return {
        "duration_s": args.duration, "clients_per_port": args.clients, "samples": samples,
        "flat": flat, "client_counts": dict(soak.counts), "client_errors": dict(soak.errors),
        "first_errors": soak.first_errors, "server_totals": totals,
        "tracebacks_in_log": log.count("Traceback"), "workdir": str(workdir),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of traffic")
    parser.add_argument("--warmup", type=float, default=None, help="seconds before the baseline (a fifth)")
    parser.add_argument("--clients", type=int, default=2, help="clients per port")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds after traffic, then a sample")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    args.warmup = args.duration / 5 if args.warmup is None else args.warmup
    report = asyncio.run(run(args))
    for name, values in report["samples"].items():
        print(f"{name:>15}: RSS {values['rss_kib'] / 1024:7.1f} MiB   open fds {values['fds']:4d}")
    print("client counts: " + ", ".join(f"{k} {v}" for k, v in sorted(report["client_counts"].items())))
    errors = ", ".join(f"{k} {v}" for k, v in sorted(report["client_errors"].items()))
    print("client errors: " + (errors or "none"))
    print("server totals: " + ", ".join(f"{k.removeprefix('chatserv_').removesuffix('_total')} {v}"
                                        for k, v in sorted(report["server_totals"].items())))
    print(f"tracebacks in the daemon's log: {report['tracebacks_in_log']}")
    verdict = all(report["flat"].values())
    print("flat: " + ("yes" if verdict else "NO") + " (" +
          ", ".join(f"{k} {'ok' if v else 'grew'}" for k, v in report["flat"].items()) + ")")
    print(json.dumps(report))
    if verdict and not report["tracebacks_in_log"]:
        shutil.rmtree(report["workdir"])
        return 0
    print(f"kept for a look: {report['workdir']}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
