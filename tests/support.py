"""The daemon on loopback port 0, small clients that speak to it as real clients do, and the
hashers every unit test shares."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from twisted.internet import defer, endpoints, protocol, reactor
from twisted.python.failure import Failure

from chatserv.credentials import HashCost, Hasher
from chatserv.protocols.framing import LineFramer
from chatserv.tap import PORTS, Options, build

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 10  # seconds a test waits for an answer before it fails (never a measurement)
CHEAP_HASH = HashCost(time_cost=1, memory_cost=1024, parallelism=1)  # argon2id in about a millisecond
FAST_HASH = ["--argon2-time-cost", str(CHEAP_HASH.time_cost), "--argon2-memory-cost",
             str(CHEAP_HASH.memory_cost), "--argon2-parallelism", str(CHEAP_HASH.parallelism)]
GRACE = ["--shutdown-grace", "0.1"]  # what a stopping daemon waits for its clients to close


class InlineThreads:
    """A reactor and its thread pool in one, that run "threaded" work at once on the caller's
    thread: what defers to a thread (argon2 in ``Hasher``) has answered when the call returns,
    so a unit test on a fake clock needs no real reactor."""

    def callInThreadWithCallback(self, on_result, function, *args, **kwargs):
        try:
            result = function(*args, **kwargs)
        except BaseException:
            on_result(False, Failure())
        else:
            on_result(True, result)

    def callFromThread(self, function, *args, **kwargs):
        function(*args, **kwargs)


INLINE = InlineThreads()


def cheap_hasher(*, threads: bool = False) -> Hasher:
    """The real argon2id ``Hasher`` at its cheapest cost: inline, or (``threads``) in the real
    reactor's thread pool, where a password check takes time as it does in the daemon."""
    if threads:
        return Hasher(reactor, reactor.getThreadPool(), CHEAP_HASH)
    return Hasher(INLINE, INLINE, CHEAP_HASH)


class InstantHasher:
    """A hasher that costs nothing (its verifier is ``v:`` and the digest), for units that never
    look at a verifier: a whole session runs inside ``dataReceived``."""

    def make_verifier(self, digest):
        return defer.succeed("v:" + digest)

    def check(self, verifier, digest):
        return defer.succeed(verifier == "v:" + digest)


class HeldHasher(InstantHasher):
    """Checks passwords only when the test releases them (verifiers are made at once), as a
    busy hashing pool would: ``checks`` lists every check asked for, answered or not."""

    def __init__(self):
        self.checks: list[tuple[defer.Deferred, bool]] = []

    def check(self, verifier, digest):
        self.checks.append((defer.Deferred(), verifier == "v:" + digest))
        return self.checks[-1][0]

    def release(self):
        for waiting, ok in self.checks:
            if not waiting.called:
                waiting.callback(ok)


class Daemon:
    """The whole service tree, every port on 127.0.0.1:0, started and stopped in-process."""

    def __init__(self, db="memory", extra=()):
        self.db = db
        self.extra = list(extra)
        self.root = self.chat = None
        self.ports = {}

    async def start(self):
        options = Options()
        args = ["--db", self.db, *FAST_HASH, *GRACE]
        for spec in PORTS:
            args += [f"--{spec.option}", "tcp:0:interface=127.0.0.1"]
        options.parseOptions(args + self.extra)
        self.root, self.chat, self.ports = build(options, reactor)
        self.root.startService()
        for port in self.ports.values():
            await port.listening
        return self

    async def stop(self):
        if self.root is not None and self.root.running:
            await self.root.stopService()

    async def restart(self):
        await self.stop()
        return await self.start()

    def port(self, option: str) -> int:
        return self.ports[option].port.getHost().port


class FrameClient(protocol.Protocol):
    """Sends and receives frames with one of the server's own framers."""

    def __init__(self, framer):
        self.framer = framer
        self.frames = defer.DeferredQueue()
        self.closed = defer.Deferred()

    def dataReceived(self, data):
        for frame in self.framer.feed(data):
            self.frames.put(frame)

    def connectionLost(self, reason):
        self.closed.callback(None)

    def send(self, *payloads: bytes):
        self.transport.write(b"".join(self.framer.encode(p) for p in payloads))

    def send_raw(self, data: bytes):
        self.transport.write(data)

    def receive(self):
        """The next frame, or a failure after TIMEOUT seconds."""
        return self.frames.get().addTimeout(TIMEOUT, reactor)

    async def request(self, payload: bytes) -> bytes:
        self.send(payload)
        return await self.receive()

    async def wait_closed(self):
        await self.closed.addTimeout(TIMEOUT, reactor)


async def connect(port: int, framer=None) -> FrameClient:
    framer = framer or LineFramer(1 << 20)
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    return await endpoints.connectProtocol(endpoint, FrameClient(framer))


class Twistd:
    """``twistd -n chatserv`` in a directory, every port on 127.0.0.1:0, read through its log."""

    def __init__(self, cwd, *extra, preamble=""):
        """``preamble``: Python run first in the child, to inject a fault."""
        args = [f"--{p.option}=tcp:0:interface=127.0.0.1" for p in PORTS]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.process = subprocess.Popen(
            [sys.executable, "-c", preamble + "\nfrom twisted.scripts.twistd import run; run()",
             "-n", "--pidfile=", "chatserv", *FAST_HASH, *GRACE, *args, *extra],
            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        self.log = ""
        self.ports = {}
        while len(self.ports) < len(PORTS):
            line = self.readline()
            found = re.search(r"chatserv (\S+) \(.*\) starting on (\d+)", line)
            if found:
                self.ports[found.group(1)] = int(found.group(2))

    def readline(self) -> str:
        deadline = time.monotonic() + TIMEOUT
        line = b""
        while not line.endswith(b"\n"):
            ready, _, _ = select.select([self.process.stdout], [], [], deadline - time.monotonic())
            if not ready:
                raise AssertionError(f"twistd said nothing more; log so far:\n{self.log}")
            chunk = os.read(self.process.stdout.fileno(), 1)
            if not chunk:
                raise AssertionError(f"twistd exited; log:\n{self.log}")
            line += chunk
        self.log += line.decode()
        return line.decode()

    def kill(self):
        """SIGKILL: no goodbye, no flush, as in a crash."""
        self.process.kill()
        self.process.wait(timeout=TIMEOUT)

    def wait(self) -> int:
        """Wait for the daemon to exit on its own; its exit status."""
        rest, _ = self.process.communicate(timeout=TIMEOUT)
        self.log += rest.decode()
        return self.process.returncode

    def stop(self) -> str:
        self.process.send_signal(signal.SIGTERM)
        rest, _ = self.process.communicate(timeout=TIMEOUT)
        self.log += rest.decode()
        # twistd ends itself with the signal it got once shut down cleanly
        assert self.process.returncode in (0, -signal.SIGTERM), self.log
        return self.log


class PostgresOutage:
    """PostgreSQL going away and coming back, as a test's own database sees it, done from an
    admin connection to the server (``postgresql_admin``)."""

    def __init__(self, admin, url: str):
        self.admin = admin
        self.name = url.rsplit("/", 1)[1]

    def end_connections(self):
        """Every connection to the database ends, as when the server restarts."""
        self.admin.execute("SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity WHERE datname = %s",
                           (self.name,))

    def begin(self):
        """The database is gone: its connections end and it takes no new ones."""
        self.admin.execute(f"ALTER DATABASE {self.name} ALLOW_CONNECTIONS false")
        self.end_connections()

    def end(self):
        self.admin.execute(f"ALTER DATABASE {self.name} ALLOW_CONNECTIONS true")
