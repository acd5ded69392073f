"""Cross-protocol fan-out: one lobby, members on four wires at once.

An IRC sender talks in ``#lobby``; the lobby's members listen on IRC (guests), the
chat-room port (seed 001, JSON lines, registered users), the salted port (seed 002,
guests) and Socket.IO over a WebSocket (seed 004, registered users who joined the lobby
group). The sender stays at most ``--window`` messages ahead of the slowest member of any
wire. Reports deliveries/s and latency per wire. Registered users are created through the
REST port first (run the server with a low argon2 cost). Prints one JSON object.

    python -m bench.crossproto --irc 6667 --chatroom 6789 --salted 5050 --web 5000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import urllib.parse
import urllib.request

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)

from bench.fanout import Counting, Member, Room, Stats, drain, measure
from bench.ircload import close_all, open_many

PASSWORD = "benchpw"


class StreamMember(Counting, asyncio.Protocol):
    """A member on a JSON-lines wire: sends ``hello``, is in once a line holds ``ok``."""

    joined = None

    def __init__(self, hello: bytes, ok: bytes):
        self.hello = hello
        self.ok = ok
        self.transport = None
        loop = asyncio.get_running_loop()
        self.registered = loop.create_future()
        self.closed = loop.create_future()
        self._seen = b""

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.hello)

    def data_received(self, data):
        if not self.registered.done():
            self._seen += data
            if self.ok in self._seen:
                self.registered.set_result(None)
            return
        self.count(data)

    def connection_lost(self, exc):
        if not self.registered.done():
            self.registered.set_exception(ConnectionError("connection lost before login"))
        if not self.closed.done():
            self.closed.set_result(None)

    def quit(self):
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class SocketIOMember(Counting, asyncio.Protocol):
    """Socket.IO v5 over an Engine.IO v4 WebSocket, with the REST session in the query."""

    joined = None

    def __init__(self, port: int, session_id: str):
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.target = f"/socket.io/?EIO=4&transport=websocket&sessionID={urllib.parse.quote(session_id)}"
        self.host = f"127.0.0.1:{port}"
        self.transport = None
        loop = asyncio.get_running_loop()
        self.registered = loop.create_future()
        self.closed = loop.create_future()
        self._partial = ""

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.ws.send(Request(host=self.host, target=self.target)))

    def _send_text(self, text: str):
        self.transport.write(self.ws.send(TextMessage(data=text)))

    def data_received(self, data):
        self.ws.receive_data(data)
        events = []
        for event in self.ws.events():
            if isinstance(event, TextMessage):
                self._partial += event.data
                if not event.message_finished:
                    continue
                text, self._partial = self._partial, ""
                if text.startswith("42"):
                    events.append(text)
                elif text == "2":
                    self._send_text("3")  # Engine.IO ping -> pong
                elif text.startswith("40") and not self.registered.done():
                    self.registered.set_result(None)
                elif text.startswith("0"):
                    self._send_text("40")  # Engine.IO open -> Socket.IO connect
                elif text.startswith("44") and not self.registered.done():
                    self.registered.set_exception(ConnectionError(f"Socket.IO refused: {text}"))
            elif isinstance(event, Ping):
                self.transport.write(self.ws.send(event.response()))
            elif isinstance(event, (RejectConnection, CloseConnection)):
                if not self.registered.done():
                    self.registered.set_exception(ConnectionError(f"WebSocket refused: {event!r}"))
                self.transport.close()
            elif isinstance(event, AcceptConnection):
                pass
        if events:
            self.count(("\n".join(events) + "\n").encode())

    def connection_lost(self, exc):
        if not self.registered.done():
            self.registered.set_exception(ConnectionError("connection lost before connect"))
        if not self.closed.done():
            self.closed.set_result(None)

    def quit(self):
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


def rest(port: int, path: str, **fields) -> dict:
    """POST form fields to the REST port (loopback); the JSON answer."""
    body = urllib.parse.urlencode(fields).encode()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", data=body, timeout=30) as answer:
        return json.loads(answer.read())


def accounts(web: int, names: list[str]) -> None:
    for name in names:
        rest(web, "/register", username=name, password=PASSWORD)


def web_sessions(web: int, names: list[str]) -> list[str]:
    sessions = []
    for name in names:
        session = rest(web, "/login", username=name, password=PASSWORD)["sessionID"]
        rest(web, "/joinGroup", sessionID=session, group="lobby")
        sessions.append(session)
    return sessions


async def connect_all(factories, timeout: float) -> list:
    loop = asyncio.get_running_loop()

    async def one(make):
        _, conn = await asyncio.wait_for(loop.create_connection(make, "127.0.0.1", make.port), timeout)
        await asyncio.wait_for(conn.registered, timeout)
        return conn

    return list(await asyncio.gather(*(one(f) for f in factories)))


class Dial:
    """A protocol factory that also knows its port."""

    def __init__(self, port: int, make):
        self.port = port
        self.make = make

    def __call__(self):
        return self.make()


async def run(args) -> dict:
    k = args.members
    chatroom_names = [f"xc{i}" for i in range(k)]
    web_names = [f"xw{i}" for i in range(k)]
    await asyncio.to_thread(accounts, args.web, chatroom_names + web_names)
    sessions = await asyncio.to_thread(web_sessions, args.web, web_names)

    groups = {name: Stats() for name in ("irc", "chatroom", "salted", "socketio")}
    senders = await open_many("127.0.0.1", args.irc, ["xsend"], None, timeout=args.timeout)
    irc_members = await open_many("127.0.0.1", args.irc, [f"xi{i}" for i in range(k)], None,
                                  timeout=args.timeout, factory=Member)
    conns = senders + irc_members
    try:
        await asyncio.wait_for(asyncio.gather(*(c.join("#lobby") for c in conns)), args.timeout)
        chatroom = await connect_all([Dial(args.chatroom, lambda n=n: StreamMember(
            json.dumps({"type": "auth", "username": n, "password": PASSWORD}).encode() + b"\n", b'"ok"'))
            for n in chatroom_names], args.timeout)
        conns += chatroom
        salted = await connect_all([Dial(args.salted, lambda i=i: StreamMember(
            json.dumps({"user": f"xs{i}", "type": "guest"}).encode() + b"\n", b'"success":"true"'))
            for i in range(k)], args.timeout)
        conns += salted
        socketio = await connect_all([Dial(args.web, lambda s=s: SocketIOMember(args.web, s))
                                      for s in sessions], args.timeout)
        conns += socketio
        await asyncio.sleep(0.5)  # presence and join notices of the last arrivals
        for conn in irc_members:
            conn._tail = conn._buffer
            conn.measuring = True
        for name, members in (("irc", irc_members), ("chatroom", chatroom), ("salted", salted),
                              ("socketio", socketio)):
            for member in members:
                member.stats = groups[name]
        for conn in senders:
            conn.measuring = True
        pad = b"x" * max(0, args.body - 40)
        room = Room("#lobby", senders[0], irc_members + chatroom + salted + socketio, args.window, pad)
        report = {"members_per_wire": k, "window": args.window}
        room.closed_loop = True
        room.pump()
        report["max"] = await measure([room], groups, args.warmup, args.duration, args.server_pid)
        room.closed_loop = False
        report["max"]["drained"] = await drain([room], args.timeout)
        return report
    finally:
        await close_all(conns)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for port in ("irc", "chatroom", "salted", "web"):
        parser.add_argument(f"--{port}", type=int, required=True, help=f"chatserv's {port} port")
    parser.add_argument("--members", type=int, default=12, help="lobby members on each wire")
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--body", type=int, default=80)
    parser.add_argument("--server-pid", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    report = asyncio.run(asyncio.wait_for(run(args), args.timeout * 6 + args.duration + args.warmup))
    json.dump(report, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
