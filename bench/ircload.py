"""IRC client side of the benchmarks: cheap connections that register, join and count.

One asyncio process holds every connection. Per received chunk a member does a constant
amount of Python work, whatever the chunk holds: it counts PRIVMSG lines with
``bytes.count`` and parses only two lines, the chunk's first (oldest) one for a latency
sample and its last one for the sequence number that drives the sender's window.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time

PRIVMSG = b" PRIVMSG "

# Linux's SO_TIMESTAMPING with software receive stamps: the kernel notes when each chunk reached
# the socket, on TCP too (on loopback, that is when the server sent it).
SO_TIMESTAMPING = 37
_RX_SOFTWARE = (1 << 3) | (1 << 4)  # SOF_TIMESTAMPING_RX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE
_STAMPS = socket.CMSG_SPACE(48)  # struct scm_timestamping: three timespecs, the first one ours
_READ_BUFFER = bytearray(65536)  # one for every connection of the process: each read is copied out
_READ_VIEW = memoryview(_READ_BUFFER)
_READ_INTO = [_READ_BUFFER]


class IrcConnection(asyncio.Protocol):
    """A client that registers (``PASS``/``NICK``/``USER``) and then JOINs one channel.

    Until it is ``joined`` it looks at whole lines (numerics and PINGs); after that only
    ``on_chunk`` sees the data, so measuring costs nothing per line.
    """

    def __init__(self, nick: str, password: str | None = None):
        self.nick = nick
        self.password = password
        self.transport: asyncio.Transport | None = None
        self.registered = asyncio.get_running_loop().create_future()
        self.joined: asyncio.Future | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self.measuring = False
        self._buffer = b""
        self._raw: socket.socket | None = None  # while reading_stamped: the socket, read directly

    # life

    def connection_made(self, transport):
        self.transport = transport
        hello = b""
        if self.password is not None:
            hello += b"PASS %s\r\n" % self.password.encode()
        hello += b"NICK %s\r\nUSER %s 0 * :bench\r\n" % (self.nick.encode(), self.nick.encode())
        transport.write(hello)

    def connection_lost(self, exc):
        for waiting in (self.registered, self.joined):
            if waiting is not None and not waiting.done():
                waiting.set_exception(ConnectionError(f"{self.nick}: connection lost"))
        if not self.closed.done():
            self.closed.set_result(None)

    def join(self, channel: str) -> asyncio.Future:
        self.joined = asyncio.get_running_loop().create_future()
        self.transport.write(b"JOIN %s\r\n" % channel.encode())
        return self.joined

    def quit(self):
        self.stop_stamped()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"QUIT :bench done\r\n")

    # reading with the kernel's receive times

    def read_stamped(self):
        """From now on read the socket directly and hand ``on_chunk`` the time the kernel
        received each chunk, so a busy generator does not count its own lag as the server's.
        Where the kernel gives no such stamps, chunks are timed when read, as before."""
        try:
            raw = socket.socket(fileno=os.dup(self.transport.get_extra_info("socket").fileno()))
            raw.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, _RX_SOFTWARE)
        except (OSError, AttributeError):
            return
        raw.setblocking(False)
        self._raw = raw
        self._realtime_offset = time.time_ns() - now_ns()  # kernel stamps are CLOCK_REALTIME
        self.transport.pause_reading()
        asyncio.get_running_loop().add_reader(raw.fileno(), self._read_stamped)

    def stop_stamped(self):
        """Back to reading through the transport (which then sees the end of the connection)."""
        raw, self._raw = self._raw, None
        if raw is None:
            return
        asyncio.get_running_loop().remove_reader(raw.fileno())
        raw.close()
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def _read_stamped(self):
        try:
            size, ancillary, _, _ = self._raw.recvmsg_into(_READ_INTO, _STAMPS)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            size = 0
        if not size:
            self.stop_stamped()
            return
        data = _READ_VIEW[:size].tobytes()
        arrived = None
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPING and len(payload) >= 16:
                seconds, nanoseconds = struct.unpack_from("qq", payload)
                if seconds:
                    arrived = seconds * 1_000_000_000 + nanoseconds - self._realtime_offset
        self.on_chunk(data, arrived)

    # reading

    def data_received(self, data):
        if self.measuring:
            self.on_chunk(data)
            return
        data = self._buffer + data
        lines = data.split(b"\n")
        self._buffer = lines.pop()
        for line in lines:
            self._line(line.rstrip(b"\r"))

    def _line(self, line: bytes):
        parts = line.split(b" ", 3)
        if parts[0] == b"PING":
            self.transport.write(b"PONG %s\r\n" % (parts[1] if len(parts) > 1 else b""))
            return
        if len(parts) < 2:
            return
        command = parts[1]
        if command == b"001" and not self.registered.done():
            self.registered.set_result(None)
        elif command in (b"433", b"432", b"464", b"465") and not self.registered.done():
            self.registered.set_exception(ConnectionError(f"{self.nick}: {line.decode(errors='replace')}"))
        elif command == b"366" and self.joined is not None and not self.joined.done():
            self.joined.set_result(None)
        elif command in (b"403", b"405", b"471", b"473", b"474", b"475") and self.joined is not None:
            if not self.joined.done():
                self.joined.set_exception(ConnectionError(f"{self.nick}: {line.decode(errors='replace')}"))

    def on_chunk(self, data: bytes, arrived: int | None = None):
        """Data after the join (``arrived``: when the kernel received it, if known): ignored
        here (members override it)."""
        if b"PING " in data:
            self._answer_pings(data)

    def _answer_pings(self, data: bytes):
        for line in data.split(b"\n"):
            if line.startswith(b"PING"):
                self.transport.write(b"PONG" + line[4:].rstrip(b"\r") + b"\r\n")


async def open_connection(host: str, port: int, nick: str, password: str | None, timeout: float):
    """Connect and register one client, within ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    _, conn = await asyncio.wait_for(
        loop.create_connection(lambda: IrcConnection(nick, password), host, port), timeout)
    await asyncio.wait_for(conn.registered, timeout)
    return conn


async def open_many(host: str, port: int, nicks: list[str], password: str | None, *,
                    parallel: int = 200, timeout: float = 30.0, factory=None) -> list[IrcConnection]:
    """Connect and register every nick, ``parallel`` at a time; fails if any of them fails."""
    loop = asyncio.get_running_loop()
    make = factory or IrcConnection
    gate = asyncio.Semaphore(parallel)

    async def one(nick):
        async with gate:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: make(nick, password), host, port), timeout)
            await asyncio.wait_for(conn.registered, timeout)
            return conn

    return list(await asyncio.gather(*(one(n) for n in nicks)))


async def close_all(conns: list[IrcConnection], timeout: float = 5.0):
    """QUIT every connection, give the server ``timeout`` seconds to close, then drop the rest."""
    for conn in conns:
        conn.quit()
    pending = [c.closed for c in conns if not c.closed.done()]
    if pending:
        await asyncio.wait(pending, timeout=timeout)
    for conn in conns:
        if conn.transport is not None and not conn.transport.is_closing():
            conn.transport.abort()
    await asyncio.sleep(0)
    for conn in conns:  # retrieve exceptions of futures nobody awaited any more
        for waiting in (conn.registered, conn.joined):
            if waiting is not None and waiting.done() and not waiting.cancelled():
                waiting.exception()


def now_ns() -> int:
    """CLOCK_MONOTONIC: the one clock every process on the machine shares."""
    return time.monotonic_ns()
