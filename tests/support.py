"""The daemon on loopback port 0, and small clients that speak to it as real clients do."""

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

from chatserv.protocols.framing import LineFramer
from chatserv.tap import PORTS, Options, build

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 10  # seconds a test waits for an answer before it fails (never a measurement)
FAST_HASH = ["--argon2-time-cost", "1", "--argon2-memory-cost", "1024", "--argon2-parallelism", "1"]


class Daemon:
    """The whole service tree, every port on 127.0.0.1:0, started and stopped in-process."""

    def __init__(self, db="memory", extra=()):
        self.db = db
        self.extra = list(extra)
        self.root = self.chat = None
        self.ports = {}

    async def start(self):
        options = Options()
        args = ["--db", self.db, *FAST_HASH, "--shutdown-grace", "1"]
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
             "-n", "--pidfile=", "chatserv", *FAST_HASH, *args, *extra],
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
