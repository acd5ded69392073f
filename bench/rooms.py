"""Seed 003 figures: the literal framer in process, and round trips as the CS494 client makes them.

The client is the real one's loop (``sendall(str([code, body]).encode())``, then one
``recv(2048)``), one request at a time, against ``twistd -n chatserv`` on a free loopback port.

    python -m bench.rooms [--requests 2000] [--db memory]
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import time
from pathlib import Path

from bench import servers
from chatserv.protocols.framing import LiteralFramer


def per_second(count: int, seconds: float) -> str:
    return f"{count / seconds:,.0f}/s"


def framer_figures(count: int):
    request = str(["send_room_message", ["alice", "lobby", "hello [there] 'you'" * 3]]).encode()
    stream = request * count
    started = time.perf_counter()
    assert len(LiteralFramer(8192).feed(stream)) == count
    print(f"framer, {count} requests of {len(request)} bytes in one feed: "
          f"{per_second(count, time.perf_counter() - started)}")
    framer = LiteralFramer(8192)
    largest = str(["send_room_message", ["alice", "lobby", "x" * 8100]]).encode()
    started = time.perf_counter()
    frames = [f for byte in range(len(largest)) for f in framer.feed(largest[byte : byte + 1])]
    assert frames == [largest]
    print(f"framer, one {len(largest)}-byte request fed byte by byte: "
          f"{(time.perf_counter() - started) * 1000:.1f} ms")


def round_trips(port: int, count: int):
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.recv(2048)

        def call(code, body=None) -> bytes:
            sock.sendall(str([code, body]).encode())
            return sock.recv(2048)

        assert call(1, ["bench", "pw"]) == b"['OK']"
        assert call(3, ["bench-room", "bench"]) == b"['OK']"
        for name, code, body in [
            ("liveness probe [666, None]", 666, None),
            ("send_room_message (stored, then answered)", 8, ["bench", "bench-room", "m" * 100]),
            ("view_room_messages (50 newest, trimmed to 2048 bytes)", 9, ["bench", "bench-room"]),
        ]:
            started = time.perf_counter()
            for _ in range(count):
                reply = call(code, body)
            assert len(reply) <= 2048 and b"ERROR" not in reply, reply
            print(f"{name}: {per_second(count, time.perf_counter() - started)} sequential round trips")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--db", default="sqlite", help="'memory', or 'sqlite' for a file in a temp dir")
    args = parser.parse_args()
    framer_figures(args.requests * 10)
    with tempfile.TemporaryDirectory() as workdir:
        port = servers.free_port()
        db = "memory" if args.db == "memory" else str(Path(workdir) / "chat.sqlite3")
        daemon = servers.chatserv(Path(workdir), {"rooms": port}, db,
                                  extra=["--argon2-time-cost", "1", "--argon2-memory-cost", "1024"]).start()
        try:
            round_trips(port, args.requests)
        finally:
            daemon.stop()


if __name__ == "__main__":
    main()
