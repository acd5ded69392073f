"""Hostile bytes, fuzzed: the Skype line and framed ports, IRC, the rooms port, Engine.IO/Socket.IO
and REST.

Each parser is fuzzed twice: fast, on one connection driven through a ``StringTransport``
(argon2 runs inline, so every answer is written before ``dataReceived`` returns), and once
over real sockets against a ``twistd -n chatserv`` child on SQLite, where a well-behaved session
must keep getting correct answers while the fuzzer works beside it. Text includes lone
surrogates wherever a wire can spell one (JSON escapes, Python literals, percent-encoded bytes),
and IRC history references odd timestamps. The in-memory store used in-process refuses what
SQLite could not keep. The conftest fixture fails a test whose in-process daemon logged an
error; the child's log is checked for tracebacks.
"""

from __future__ import annotations

import http.client
import itertools
import json
import socket
import threading
import urllib.parse

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.testing import MemoryReactorClock, StringTransport

from chatserv.limits import Limits
from chatserv.protocols.framing import FrameError, LengthPrefixFramer, LineFramer, LiteralFramer
from chatserv.protocols.irc import IRCFactory
from chatserv.protocols.irc.connection import COMMANDS
from chatserv.protocols.rooms import REQUESTS, RoomsFactory
from chatserv.protocols.skype import FramedSkypeFactory, SkypeFactory
from chatserv.service import ChatService
from chatserv.store.memory import MemoryStore
from chatserv.wire import ConnectionTracker
from tests.support import TIMEOUT, Twistd, cheap_hasher

FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
OVER_SOCKETS = settings(max_examples=40, deadline=None,
                        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
MAX_LINE = 64
SKYPE_REPLIES = (b"200 ", b"201 ", b"202 ", b"300 ", b"301 ", b"501 ")
# Text with lone surrogates, often (st.text never draws them, whatever its alphabet).
any_text = st.lists(st.characters() | st.characters(categories=["Cs"]), max_size=12).map("".join)


class EncodingStore(MemoryStore):
    """Keeps only what SQLite can: text UTF-8 cannot encode fails the write, as it would there."""

    @staticmethod
    def _check(record):
        for value in attrs.asdict(record, recurse=False).values():
            if isinstance(value, str):
                value.encode("utf-8")

    def add_user(self, user):
        self._check(user)
        return super().add_user(user)

    def update_user(self, user):
        self._check(user)
        return super().update_user(user)

    def add_room(self, room):
        self._check(room)
        return super().add_room(room)

    def update_room(self, room):
        self._check(room)
        return super().update_room(room)

    def add_message(self, message):
        self._check(message)
        return super().add_message(message)


def unit_connection(factory_class, limits: Limits, options: dict):
    """One connection of a fresh in-memory daemon's port on a StringTransport and a fake clock:
    (clock, chat service, protocol, transport)."""
    clock = MemoryReactorClock()
    chat = ChatService(EncodingStore(), cheap_hasher(), clock, limits)
    chat.startService()
    factory = factory_class(chat, ConnectionTracker(clock), limits, clock, options)
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return clock, chat, protocol, transport


def connection(factory_class, **options):
    """A fuzzed connection: small lines, and no close for failed logins."""
    _, _, protocol, transport = unit_connection(factory_class, Limits(max_line=MAX_LINE, login_attempts=1000),
                                                options)
    return protocol, transport


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (taken modulo its length), in order."""
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


def says_exit(frame) -> bool:
    """Whether the Skype port takes ``frame`` as EXIT (it reads the first word, upper-cased)."""
    if isinstance(frame, FrameError):
        return False
    try:
        return frame.decode("utf-8").partition(" ")[0].upper() == "EXIT"
    except UnicodeDecodeError:
        return False


def answered_until_close(frames: list) -> tuple[int, bool]:
    """How many frames get an answer, and whether the connection then closes (EXIT, broken stream)."""
    for count, frame in enumerate(frames, start=1):
        if says_exit(frame) or (isinstance(frame, FrameError) and frame.fatal):
            return count, True
    return len(frames), False


SKYPE_REQUESTS = [b"PING", b"CREATE ann pw", b"create bob pw", b"LOGIN ann pw", b"LOGIN ann bad", b"LOGIN",
                  b"SEARCH ann", b"SEARCH nobody", b"ADD bob", b"ADD ann", b"REMOVE bob", b"AVAILABLE ann",
                  b"LIST", b"EXIT", b"exit now", b"PING \x00", b"\xff\xfe", b"", b" ", b"\r", b"A" * 100]
skype_requests = st.one_of(st.sampled_from(SKYPE_REQUESTS), st.binary(max_size=MAX_LINE + 20))
cut_points = st.lists(st.integers(min_value=0, max_value=10_000), max_size=12)


@FUZZ
@given(st.lists(skype_requests, max_size=25), st.binary(max_size=MAX_LINE + 20), cut_points)
def test_skype_lines_each_get_one_answer_or_a_clean_close(requests, tail, cuts):
    protocol, transport = connection(SkypeFactory)
    stream = b"".join(request + b"\n" for request in requests) + tail
    for chunk in chunks(stream, cuts):
        protocol.dataReceived(chunk)
    expected, closes = answered_until_close(LineFramer(MAX_LINE).feed(stream))
    replies = LineFramer(1 << 20).feed(transport.value())
    assert len(replies) == expected
    assert all(reply.startswith(SKYPE_REPLIES) for reply in replies)
    assert bool(transport.disconnecting) == closes
    if closes:
        assert replies[-1] == b"201 Goodbye"


framed_items = st.one_of(
    st.builds(LengthPrefixFramer(MAX_LINE).encode, skype_requests.map(lambda r: r[:MAX_LINE])),
    st.binary(max_size=24),  # a header that is not ten digits, or a length over the bound
)


@FUZZ
@given(st.lists(framed_items, max_size=25), cut_points)
def test_skype_frames_each_get_one_answer_or_a_clean_close(items, cuts):
    protocol, transport = connection(FramedSkypeFactory)
    stream = b"".join(items)
    for chunk in chunks(stream, cuts):
        protocol.dataReceived(chunk)
    expected, closes = answered_until_close(LengthPrefixFramer(MAX_LINE).feed(stream))
    greeting, *replies = LengthPrefixFramer(1 << 20).feed(transport.value())
    assert greeting == b"200 OK"
    assert len(replies) == expected
    assert all(reply.startswith(SKYPE_REPLIES) for reply in replies)
    assert bool(transport.disconnecting) == closes


# IRC: commands it knows with hostile parameters, tags, and raw bytes; separators of every kind

ODD_TIMESTAMPS = [b"timestamp=0001-01-01T00:00:00", b"timestamp=0001-01-01T00:00:00+14:00",
                  b"timestamp=9999-12-31T23:59:59", b"timestamp=9999-12-31T23:59:59-14:00",
                  b"timestamp=2024-02-30T00:00:00Z", b"timestamp=", b"timestamp=-1", b"msgid=" + b"9" * 40]
irc_text = st.one_of(st.text(max_size=30).map(lambda t: t.encode("utf-8")), st.binary(max_size=30),
                     st.sampled_from([b"#lobby", b"#x", b"*", b"ann", b"msgid=1", b"LATEST", b":",
                                      *ODD_TIMESTAMPS]))
chathistory = st.builds(
    lambda *words: b" ".join(words), st.just(b"CHATHISTORY"),
    st.sampled_from([b"LATEST", b"BEFORE", b"AFTER", b"AROUND", b"BETWEEN", b"TARGETS"]),
    st.sampled_from([b"#lobby", b"#x", b"fuzzer", b"ann"]),
    st.sampled_from([b"*", b"msgid=1", *ODD_TIMESTAMPS]),
    st.sampled_from([b"10", b"1", b"0", b"99999999999999999999", *ODD_TIMESTAMPS]))
irc_line = st.one_of(
    chathistory,
    st.builds(lambda tags, command, params: tags + command + b"".join(b" " + p for p in params),
              st.one_of(st.just(b""), st.binary(max_size=40).map(lambda t: b"@%s " % t.replace(b" ", b""))),
              st.sampled_from(sorted(COMMANDS)).map(str.encode),
              st.lists(irc_text, max_size=5)),
    st.binary(max_size=600),
)
irc_separator = st.sampled_from([b"\r\n", b"\n", b"\r", b"\x00\r\n"])


def irc_connection():
    protocol, transport = connection(IRCFactory, **{"irc-flood-rate": 0.0, "irc-flood-burst": 1,
                                                    "irc-ping-interval": 100.0})
    protocol.dataReceived(b"NICK fuzzer\r\nUSER f 0 * :Fuzzer\r\nJOIN #lobby\r\nPRIVMSG #lobby :hi\r\n")
    assert b" 001 fuzzer " in transport.value()
    return protocol, transport


@FUZZ
@given(st.lists(st.tuples(irc_line, irc_separator), max_size=15), cut_points)
def test_irc_lines_never_break_the_connection_and_ping_still_gets_pong(lines, cuts):
    protocol, transport = irc_connection()
    for chunk in chunks(b"".join(line + separator for line, separator in lines) + b"\r\n", cuts):
        protocol.dataReceived(chunk)
    if transport.disconnecting:  # QUIT among the lines: the connection said why it closed
        assert b"ERROR :Closing Link" in transport.value()
        return
    transport.clear()
    protocol.dataReceived(b"PING :still-there\r\n")
    assert transport.value().endswith(b"PONG chatserv still-there\r\n")


# the rooms port (seed 003): Python literals with hostile strings, lone surrogates included

# Each field's value for the user "ann", logged in and in room "r"; or any text instead.
ROOMS_FIELDS = {"user": "ann", "username": "ann", "password": "pw", "room": "r", "current_room": "r",
                "recipient": "ann", "message": "hi", "rooms": ["r"]}


@st.composite
def rooms_request(draw) -> bytes:
    """Mostly well-formed requests with hostile strings in their fields; sometimes any shape."""
    name = draw(st.sampled_from(list(REQUESTS)))
    body = [draw(st.one_of(st.just(ROOMS_FIELDS[field]),
                           st.lists(any_text, max_size=3) if field == "rooms" else any_text))
            for field in REQUESTS[name]]
    code = draw(st.sampled_from([name, list(REQUESTS).index(name) + 1]))
    request = draw(st.one_of(st.just([code, body]), st.lists(st.one_of(any_text, st.integers()), max_size=3)))
    return repr(request).encode()


@FUZZ
@given(st.lists(rooms_request(), max_size=15), cut_points)
def test_rooms_literals_each_get_one_reply(requests, cuts):
    _, _, protocol, transport = unit_connection(RoomsFactory, Limits(max_line=512, login_attempts=1000), {})
    login = [repr(request).encode() for request in (["create_new_user", ["ann", "pw"]],
                                                    ["create_new_room", ["r", "ann"]])]
    for chunk in chunks(b"".join(login + requests), cuts):
        protocol.dataReceived(chunk)
    greeting, _, replies = transport.value().partition(b"\n")
    assert len(LiteralFramer(1 << 20).feed(replies)) == len(login) + len(requests)
    assert not transport.disconnecting


# over real sockets, against twistd


class ChildDaemon(Twistd):
    """``twistd -n chatserv`` whose log is read in a thread, so it never blocks on a full pipe."""

    def __init__(self, cwd, *extra):
        super().__init__(cwd, *extra)
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self):
        for line in self.process.stdout:
            self.log += line.decode("utf-8", "replace")

    def stop(self) -> str:
        self.process.terminate()
        self.process.wait(timeout=TIMEOUT)
        self._reader.join(timeout=TIMEOUT)
        return self.log


@pytest.fixture(scope="module")
def child(tmp_path_factory):
    directory = tmp_path_factory.mktemp("fuzz")
    daemon = ChildDaemon(directory, "--db", str(directory / "chat.sqlite3"), "--login-attempts", "1000",
                         "--max-line", str(MAX_LINE), "--irc-flood-rate", "0", "--connections-per-ip", "0")
    yield daemon
    log = daemon.stop()
    assert "Traceback" not in log and "Unhandled" not in log, log


class Blocking:
    """A blocking client that reads frames with one of the server's framers."""

    def __init__(self, port, framer=None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.framer = framer or LineFramer(1 << 20)
        self.frames: list = []
        self.closed = False

    def receive(self, count: int) -> list:
        """Up to ``count`` more frames: fewer only when the server closes first."""
        while len(self.frames) < count and not self.closed:
            data = self.sock.recv(65536)
            self.closed = not data
            self.frames += self.framer.feed(data)
        taken, self.frames = self.frames[:count], self.frames[count:]
        return taken

    def request(self, payload: bytes, count=1) -> list:
        self.sock.sendall(self.framer.encode(payload))
        return self.receive(count)

    def close(self):
        self.sock.close()


@pytest.fixture(scope="module")
def witness(child):
    """A well-behaved Skype session that must get correct answers all through the fuzzing."""
    client = Blocking(child.ports["skype"])
    assert client.request(b"CREATE witness pw") == [b"200 OK"]
    yield client
    client.close()


def witness_is_served(witness):
    found = witness.request(b"SEARCH witness")
    assert found and found[0].startswith(b"201 id:") and b"username:witness" in found[0]


def up_to_close(stream: bytes, framer) -> bytes:
    """The start of ``stream`` up to the byte that makes the server close, if one does: a client
    that writes on after that would meet a reset, which may take our unread answers with it."""
    for end in range(1, len(stream) + 1):
        if answered_until_close(framer.feed(stream[end - 1 : end]))[1]:
            return stream[:end]
    return stream


@OVER_SOCKETS
@given(st.lists(skype_requests, max_size=12), cut_points)
def test_skype_ports_over_sockets_answer_every_frame_and_serve_the_others(child, witness, requests, cuts):
    for option, framer in [("skype", LineFramer(MAX_LINE)), ("skype-framed", LengthPrefixFramer(MAX_LINE))]:
        framed = option == "skype-framed"
        client = Blocking(child.ports[option], LengthPrefixFramer(1 << 20) if framed else None)
        stream = b"".join(framer.encode(request[:MAX_LINE]) for request in requests)
        if framed:
            stream += requests[0] if requests else b""  # raw bytes after the frames: perhaps a broken header
            assert client.receive(1) == [b"200 OK"]
        stream = up_to_close(stream, type(framer)(MAX_LINE))
        for chunk in chunks(stream, cuts):
            client.sock.sendall(chunk)
        expected, closes = answered_until_close(type(framer)(MAX_LINE).feed(stream))
        replies = client.receive(expected)
        assert len(replies) == expected and all(r.startswith(SKYPE_REPLIES) for r in replies)
        if closes:
            assert client.receive(1) == [] and client.closed
        client.close()
        witness_is_served(witness)


NICKS = itertools.count()


@OVER_SOCKETS
@given(st.lists(st.tuples(irc_line, irc_separator), max_size=8))
def test_irc_over_sockets_any_lines_then_ping_gets_pong(child, witness, lines):
    client = Blocking(child.ports["irc"])
    client.sock.sendall(b"NICK f%d\r\nUSER f 0 * :F\r\n" % next(NICKS))
    client.sock.sendall(b"".join(line + separator for line, separator in lines))
    client.sock.sendall(b"\r\nPING :probe-end\r\n")
    seen = []
    while not client.closed and not any(b"probe-end" in line for line in seen):
        seen += client.receive(1)
    if client.closed:
        assert any(line.startswith(b"ERROR :Closing Link") for line in seen)
    else:
        assert seen[-1].rstrip(b"\r") == b":chatserv PONG chatserv probe-end"
    client.close()
    witness_is_served(witness)


# Engine.IO / Socket.IO and REST, over HTTP

def http_call(child, method, path, params=None, body=None, headers=None):
    connection = http.client.HTTPConnection("127.0.0.1", child.ports["web"], timeout=TIMEOUT)
    try:
        query = ("?" + urllib.parse.urlencode(params, errors="surrogatepass")) if params else ""
        connection.request(method, path + query, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.getheader("content-type", ""), response.read()
    finally:
        connection.close()


def polling(**params) -> dict:
    return {"EIO": "4", "transport": "polling", **params}


def engineio_handshake(child, **params) -> str:
    status, _, body = http_call(child, "GET", "/socket.io/", polling(**params))
    assert status == 200 and body.startswith(b"0{")
    return json.loads(body[1:])["sid"]


@pytest.fixture(scope="module")
def web_session(child):
    http_call(child, "POST", "/register", {"username": "webber", "password": "pw"})
    status, _, body = http_call(child, "POST", "/login", {"username": "webber", "password": "pw"})
    assert status == 200
    return json.loads(body)["sessionID"]


socketio_packets = st.one_of(
    st.text(max_size=40),
    st.builds(lambda kind, data: "4" + kind + data, st.sampled_from("0123456789"), st.text(max_size=40)),
    st.builds(lambda name, data: "42" + json.dumps([name, data]),
              st.sampled_from(["send_message", "add_contact", "other", ""]),
              st.one_of(st.none(), st.integers(), st.text(max_size=10), st.dictionaries(
                  st.sampled_from(["recipient_id", "content", "contact", "is_group", "x"]),
                  st.one_of(st.none(), st.booleans(), st.integers(), any_text), max_size=4))),
)


@OVER_SOCKETS
@given(st.lists(socketio_packets, min_size=1, max_size=6))
def test_engineio_and_socketio_packets_close_at_most_their_own_session(child, witness, web_session, packets):
    sid = engineio_handshake(child, sessionID=web_session)
    body = "\x1e".join(["40"] + packets).encode("utf-8")
    status, content_type, answer = http_call(child, "POST", "/socket.io/",
                                             polling(sid=sid), body)
    assert (status, answer) == (200, b"ok") or (status == 400 and content_type == "application/json")
    other = engineio_handshake(child, sessionID=web_session)
    assert http_call(child, "POST", "/socket.io/", polling(sid=other),
                     b"40")[:3:2] == (200, b"ok")
    status, _, answer = http_call(child, "GET", "/socket.io/", polling(sid=other))
    assert status == 200 and answer.startswith(b"40{")  # the fresh session's CONNECT is accepted
    for session in (sid, other):
        http_call(child, "POST", "/socket.io/", polling(sid=session), b"1")
    witness_is_served(witness)


REST_PATHS = ["/register", "/login", "/logout", "/addContact", "/changeContact", "/getContacts",
              "/getContactMessages", "/saveMessage", "/getPresence", "/getGroups", "/joinGroup",
              "/getGroupMessages", "/nowhere"]
REST_NAMES = ["username", "password", "sessionID", "contact", "contactID", "status", "recipientID",
              "content", "type", "group", "groupID", "public_key"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | any_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8)


@OVER_SOCKETS
@given(st.sampled_from(REST_PATHS), st.sampled_from(["GET", "POST"]),
       st.dictionaries(st.sampled_from(REST_NAMES), st.one_of(any_text, st.just("{session}")),
                       max_size=5),
       st.one_of(st.none(), st.binary(max_size=60),
                 st.dictionaries(st.sampled_from(REST_NAMES), json_values, max_size=5).map(json.dumps)))
def test_rest_parameters_get_json_answers_and_the_port_goes_on(child, web_session, path, method, params,
                                                               body):
    params = {name: web_session if value == "{session}" else value for name, value in params.items()}
    if path == "/logout":
        params.pop("sessionID", None)  # the witness session must live on
    if body is not None and method == "GET":
        method = "POST"
    headers = {"content-type": "application/json"} if isinstance(body, str) else {}
    status, content_type, answer = http_call(child, method, path, params, body, headers)
    assert status in (200, 400, 404, 413), answer
    assert content_type == "application/json"
    if status != 200:
        assert "error" in json.loads(answer)
    assert http_call(child, "GET", "/getGroups", {"sessionID": web_session})[0] == 200
