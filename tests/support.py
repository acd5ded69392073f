"""The daemon on loopback port 0, and small clients that speak to it as real clients do."""

from __future__ import annotations

from twisted.internet import defer, endpoints, protocol, reactor

from chatserv.protocols.framing import LineFramer
from chatserv.tap import PORTS, Options, build

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
