"""Hostile clients: readers that never read, too many connections, password guessing across
reconnects, reading what is not yours, speaking as someone else; and what the code must not
contain (eval, SQL built from values)."""

from __future__ import annotations

import ast
import json
import re
import socket

import pytest
import pytest_twisted
from twisted.internet import endpoints, reactor, task
from twisted.logger import Logger, formatEvent, globalLogPublisher

from chatserv.limits import Limits, QuietLog
from chatserv.model import LOBBY
from chatserv.protocols import base
from chatserv.protocols.chatroom import ChatroomFactory
from chatserv.protocols.framing import LengthPrefixFramer, LineFramer
from chatserv.protocols.rooms import RoomsFactory
from chatserv.protocols.salted import SaltedFactory
from chatserv.protocols.skype import FramedSkypeFactory, SkypeConnection, SkypeFactory
from tests.support import ROOT, Daemon, FrameClient, connect
from tests.test_chatroom import json_login
from tests.test_fuzz_protocols import unit_connection
from tests.test_irc import raw, until
from tests.test_rooms import error, rooms_client
from tests.test_salted import guest, log_in
from tests.web_support import call, register_and_login

SOURCE = ROOT / "chatserv"


async def connect_from(source: str, port: int, framer=None) -> FrameClient:
    """A client whose connection comes from ``source``, another loopback address."""
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port, bindAddress=(source, 0))
    return await endpoints.connectProtocol(endpoint, FrameClient(framer or LineFramer(1 << 20)))


def never_reading(port: int, *requests: bytes) -> socket.socket:
    """A client with a tiny receive buffer that sends its requests and then never reads."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"".join(requests))
    return sock


async def next_message(client) -> dict:
    """The next lobby message a salted client sees, past presence notifications."""
    while (seen := await client.receive())["type"] != "message":
        pass
    return seen


async def rooms_login(daemon, name):
    client = await rooms_client(daemon)
    assert await client.call(2, [name, "pw"]) == [None]  # no current room
    return client


# slow readers


@pytest_twisted.ensureDeferred
async def test_readers_that_never_read_are_let_go_on_every_pushing_port_and_the_room_goes_on():
    send_queue = 65536
    daemon = await Daemon(extra=["--send-queue", str(send_queue), "--messages-per-second", "0"]).start()
    stalled = []
    try:
        for name in ("flooder", "slowjson", "listener"):
            await daemon.chat.register(name, "pw")
        flooder = await log_in(daemon, "flooder")  # salted: hears everyone come and go
        stalled = [
            never_reading(daemon.port("salted"), b'{"type":"guest","user":"slowsalted"}\n'),
            never_reading(daemon.port("irc"), b"NICK slowirc\r\nUSER s 0 * :s\r\nJOIN #lobby\r\n"),
            never_reading(daemon.port("chatroom"),
                          b'{"type":"auth","username":"slowjson","password":"pw"}\n'),
        ]
        slow = {"slowsalted", "slowirc", "slowjson"}
        online, gone = set(), set()
        body = "x" * 4000
        for _ in range(100):  # at most 100 rounds of 30 messages: 12 MB for each stalled reader
            for _ in range(30):
                flooder.send(user="flooder", type="message", message=body)
            acknowledged = 0
            while acknowledged < 30:
                reply = await flooder.receive()
                if reply["type"] == "message" and reply["from"] == "flooder":
                    acknowledged += 1
                elif reply["type"] == "user_notification":
                    (online if reply["status"] == "true" else gone).add(reply["user"])
            if gone >= slow:
                break
        assert online >= slow and gone >= slow  # each came online, then was disconnected
        tracker = daemon.ports["salted"].factory.tracker
        assert all(c.unsent.size <= send_queue for c in tracker.connections)
        assert {c.protocol_name for c in tracker.connections} == {"salted"}  # the flooder alone

        listener = await log_in(daemon, "listener")
        flooder.send(user="flooder", type="message", message="still here")
        still_here = {"type": "message", "from": "flooder", "message": "still here"}
        assert await next_message(flooder) == still_here  # the acknowledgement
        assert await next_message(listener) == still_here
    finally:
        for sock in stalled:
            sock.close()
        await daemon.stop()


# total connections


@pytest_twisted.ensureDeferred
async def test_total_connections_are_bounded_over_all_ports_together():
    daemon = await Daemon(extra=["--max-connections", "3"]).start()
    try:
        skype = await connect(daemon.port("skype"))
        assert await skype.request(b"PING") == b"200 OK"
        irc = await connect(daemon.port("irc"))
        assert await irc.request(b"PING x") == b":chatserv PONG chatserv x"
        salted = await connect(daemon.port("salted"))
        assert json.loads(await salted.request(b'{"type":"salt","user":"a"}'))["type"] == "salt"

        for option in ("skype", "skype-framed", "salted", "chatroom", "rooms", "irc"):
            refused = await connect(daemon.port(option))
            await refused.wait_closed()
            assert refused.frames.pending == []  # closed without a word
        refused = await connect(daemon.port("web"))  # the web port's HTTP connections count too
        assert await refused.receive() == b"HTTP/1.1 503 Service Unavailable"  # HTTP has a word for it
        await refused.wait_closed()

        assert await skype.request(b"EXIT") == b"201 Goodbye"
        await skype.wait_closed()
        framed = await connect(daemon.port("skype-framed"), LengthPrefixFramer(100))
        assert await framed.receive() == b"200 OK"  # a place is free again
        assert await irc.request(b"PING y") == b":chatserv PONG chatserv y"
    finally:
        await daemon.stop()


# login throttling


def freeze_service_clock(daemon) -> task.Clock:
    """The service's clock stands still, so a lockout cannot lapse while the test runs."""
    frozen = task.Clock()
    frozen.advance(reactor.seconds())
    daemon.chat.clock = frozen
    return frozen


@pytest_twisted.ensureDeferred
async def test_guessing_locks_out_the_address_across_reconnects_and_ports_but_not_other_addresses():
    daemon = await Daemon().start()
    try:
        frozen = freeze_service_clock(daemon)
        await daemon.chat.register("alice", "right")
        for _ in range(Limits().login_attempts):
            guesser = await connect(daemon.port("skype"))
            assert await guesser.request(b"LOGIN alice wrong") == b"300 Not OK"
            guesser.transport.loseConnection()
            await guesser.wait_closed()

        again = await connect(daemon.port("skype"))
        assert await again.request(b"LOGIN alice right") == b"300 Not OK"
        irc = await connect(daemon.port("irc"))
        irc.send(b"PASS right", b"NICK alice", b"USER a 0 * :A")
        lines = await until(irc, b"ERROR")
        assert any(b" 464 " in line for line in lines)
        rooms = await rooms_client(daemon)
        assert await rooms.call(2, ["alice", "right"]) == error("Too many failed logins: try again later.")

        elsewhere = await connect_from("127.0.0.2", daemon.port("skype"))
        assert await elsewhere.request(b"LOGIN alice right") == b"200 OK"

        frozen.advance(2.0)  # the first lockout (one second) is over
        assert await again.request(b"LOGIN alice right") == b"200 OK"
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_web_login_failures_count_against_the_callers_address():
    daemon = await Daemon().start()
    try:
        freeze_service_clock(daemon)
        await daemon.chat.register("alice", "right")
        for _ in range(Limits().login_attempts):
            wrong = {"username": "alice", "password": "wrong"}
            assert (await call(daemon, "/login", "POST", data=wrong))[0] == 400
        skype = await connect(daemon.port("skype"))
        assert await skype.request(b"LOGIN alice right") == b"300 Not OK"  # same address, other port
        elsewhere = await connect_from("127.0.0.2", daemon.port("skype"))
        assert await elsewhere.request(b"LOGIN alice right") == b"200 OK"
    finally:
        await daemon.stop()


# reading only what is yours


@pytest_twisted.ensureDeferred
async def test_nobody_reads_a_room_they_are_not_in(daemon):
    for name in ("owner", "outsider"):
        await daemon.chat.register(name, "pw")
    owner = daemon.chat.user("owner")
    room = await daemon.chat.create_room(owner, "secret")
    await daemon.chat.send_room(owner, "secret", "for members only")

    rooms = await rooms_login(daemon, "outsider")
    assert await rooms.call(9, ["outsider", "secret"]) == error("Not a member.")
    assert await rooms.call(10, ["outsider", "secret"]) == error("Not a member.")

    irc = await raw(daemon, "outsider", before=[b"PASS pw"])
    irc.send(b"CHATHISTORY LATEST #secret * 10")
    refusal = (await until(irc, b"FAIL"))[-1]
    assert refusal.startswith(b":chatserv FAIL CHATHISTORY INVALID_TARGET LATEST #secret")

    session = (await register_and_login(daemon, "webout"))["sessionID"]
    asked = {"sessionID": session, "groupID": str(room.id)}
    assert await call(daemon, "/getGroupMessages", params=asked) == (400, {"error": "not a member"})
    _, history = await call(daemon, "/getContactMessages", params={"sessionID": session, "contact": "owner"})
    assert history == []  # a conversation is only ever the caller's own


# speaking only as yourself


SPOOFS = {
    # port: (requests naming "victim" as the sender, the refusal each gets)
    "chatroom": ([{"type": "broadcast", "from": "victim", "msg": "SPOOF"},
                  {"type": "message", "from": "victim", "to": "listener", "msg": "SPOOF"},
                  {"type": "block", "from": "victim", "target": "listener"}],
                 {"result": "you are logged in as mallory"}),
    "salted": ([{"type": "message", "user": "victim", "message": "SPOOF"},
                {"type": "typing", "user": "victim", "status": "true"}],
               {"type": "error", "message": "'user' is not the user logged in on this connection"}),
    "rooms": ([[8, ["victim", LOBBY, "SPOOF"]], [11, ["victim", "listener", "SPOOF"]],
               [13, ["victim", "SPOOF"]], [12, ["victim"]]],
              error("You are logged in as mallory.")),
}


async def mallory_on(daemon, port):
    if port == "chatroom":
        client = await json_login(daemon, "mallory")
        return lambda request: client.request(**request)
    if port == "salted":
        client = await log_in(daemon, "mallory")
        return lambda request: client.request(**request)
    client = await rooms_login(daemon, "mallory")
    return lambda request: client.call(*request)


@pytest.mark.parametrize("port", sorted(SPOOFS))
@pytest_twisted.ensureDeferred
async def test_a_request_naming_another_sender_is_refused_and_nothing_is_sent(daemon, port):
    for name in ("mallory", "victim", "listener"):
        await daemon.chat.register(name, "pw")
    chat = daemon.chat
    await chat.join_room(chat.user("victim"), LOBBY)
    listener = await guest(daemon, "watcher")  # in the lobby on the salted port
    request, refusal = SPOOFS[port]
    mallory = await mallory_on(daemon, port)
    for spoof in request:
        assert await mallory(spoof) == refusal

    await chat.send_room(chat.user("victim"), LOBBY, "the real one")
    while (heard := await listener.receive())["type"] not in ("message", "typing"):
        pass
    assert heard == {"type": "message", "from": "victim", "message": "the real one"}
    lobby = chat.room(LOBBY)
    assert [m.body for m in await chat.store.room_history(lobby.id, 100)] == ["the real one"]
    assert await chat.inbox(chat.user("listener")) == []
    assert not chat.has_blocked(chat.user("victim"), chat.user("listener"))


# what the code must not contain


def python_files():
    return sorted(SOURCE.rglob("*.py"))


def test_nothing_in_chatserv_evaluates_or_executes_code():
    forbidden = {"eval", "exec", "compile", "__import__", "execfile"}
    found = []
    for path in python_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in forbidden:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.func.id}")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                found += [f"{path.relative_to(ROOT)}:{node.lineno} import {n}" for n in names
                          if n.split(".")[0] in ("pickle", "marshal", "shelve")]
    assert found == []


def is_sql_text(node) -> bool:
    """SQL text written in the module: string constants, joined by +, chosen by a condition."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return is_sql_text(node.left) and is_sql_text(node.right)
    if isinstance(node, ast.IfExp):
        return is_sql_text(node.body) and is_sql_text(node.orelse)
    return isinstance(node, ast.Name) and node.id == "where"  # itself only ever SQL text (checked)


SQL_STORE_MODULES = ("sql.py", "sqlite.py", "postgres.py")
SQL_WORDS = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|WITH|COPY|FROM|WHERE|pg_\w+)\b")
# What SQL f-strings may interpolate besides the modules' SQL constants: a table name (from
# ID_TABLES), a WHERE clause (checked below), the sequence expression built from that table
# name, an engine's constant JSON-array function (checked below), and the table and column
# list of one of the modules' own INSERT statements (postgres.py turns it into a COPY).
SQL_PIECES = {"table", "where", "sequence", "json_ids", "insert[1]", "insert[2]"}


def test_sql_is_built_only_from_constants_and_values_go_in_as_parameters():
    """The SQL stores' f-strings build SQL only from SQL text written in the store modules,
    values always travel as parameters, and nothing is built with % or .format."""
    interpolated, constants, problems = set(), set(), []
    for name in SQL_STORE_MODULES:
        tree = ast.parse((SOURCE / "store" / name).read_text())
        constants |= {target.id for node in tree.body
                      if isinstance(node, ast.Assign) and is_sql_text(node.value)
                      for target in node.targets if isinstance(target, ast.Name)}
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):
                text = "".join(v.value for v in node.values if isinstance(v, ast.Constant))
                if SQL_WORDS.search(text):
                    interpolated |= {ast.unparse(v.value) for v in node.values
                                     if isinstance(v, ast.FormattedValue)}
            elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod) and is_sql_text(node.left):
                problems.append(ast.unparse(node))
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "format":
                problems.append(ast.unparse(node))
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "_newest":
                problems += [] if is_sql_text(node.args[0]) else [ast.unparse(node)]
            elif isinstance(node, ast.For) and getattr(node.target, "id", "") == "table":
                if ast.unparse(node.iter) != "ID_TABLES":
                    problems.append(ast.unparse(node.iter))
            elif isinstance(node, ast.Assign | ast.AugAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = {getattr(t, "id", "") for t in targets}
                if ("where" in names or "json_ids" in names) and not is_sql_text(node.value):
                    problems.append(ast.unparse(node))
    assert problems == []
    assert interpolated and interpolated <= constants | SQL_PIECES


def test_tokens_come_from_the_csprng_and_are_found_by_lookup_not_comparison():
    """Session IDs and Engine.IO sids are ``secrets`` tokens kept as dict keys: a guess is a hash
    lookup, never a character-by-character comparison."""
    for relative in ("web/sessions.py", "web/engineio.py"):
        text = (SOURCE / relative).read_text()
        assert "secrets.token_urlsafe(" in text
        assert "random." not in text
    for path in python_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and any(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops):
                names = [ast.unparse(side) for side in (node.left, *node.comparators)]
                assert not any(n.endswith((".token", ".sid", "verifier", "digest")) for n in names), (
                    f"{path}:{node.lineno}: {' == '.join(names)}")


@pytest_twisted.ensureDeferred
async def test_a_web_session_id_is_long_random_and_forgeries_are_refused(daemon):
    first = (await register_and_login(daemon, "webber"))["sessionID"]
    code, second = await call(daemon, "/login", params={"username": "webber", "password": "pw"})
    assert code == 200 and second["sessionID"] != first and len(first) >= 43  # 32 random bytes
    for forged in (first[:-1], first + "x", first.upper(), "", "null"):
        refused = await call(daemon, "/getGroups", params={"sessionID": forged})
        assert refused == (400, {"error": "Invalid session"})
    assert (await call(daemon, "/getGroups", params={"sessionID": first}))[0] == 200



# limits on every port, driven by a fake clock (ports whose own tests do not cover them)

FACTORIES = {"skype": SkypeFactory, "skype-framed": FramedSkypeFactory, "salted": SaltedFactory,
             "rooms": RoomsFactory, "chatroom": ChatroomFactory}
LOGIN = {  # a request that logs "user" (password "pw", registered beforehand) in, and one that keeps it alive
    "skype": (b"LOGIN user pw", b"PING"),
    "skype-framed": (b"LOGIN user pw", b"PING"),
    "salted": (b'{"type":"guest","user":"visitor"}', b'{"type":"userlist"}'),
    "rooms": (b"[2, ['user', 'pw']]", b"[666, None]"),
    "chatroom": (b'{"type":"auth","username":"user","password":"pw"}', b'{"type":"alive","from":"user"}'),
}
NO_ALIVE_TIMEOUT = {"alive-timeout": 1e9}  # seed 001's own timer: kept out of the way of the idle one


def on_port(port: str, **limits):
    clock, chat, protocol, transport = unit_connection(FACTORIES[port], Limits(**limits), NO_ALIVE_TIMEOUT)
    chat.register("user", "pw")  # fires at once: argon2 runs inline
    return clock, protocol, transport


def request(protocol, port: str, payload: bytes):
    protocol.dataReceived(protocol.framer.encode(payload) if port != "rooms" else payload)


@pytest.mark.parametrize("port", ["skype-framed", "chatroom"])
def test_a_connection_that_never_logs_in_is_closed_at_the_prelogin_timeout(port):
    clock, protocol, transport = on_port(port, prelogin_timeout=30)
    clock.advance(29)
    assert not transport.disconnecting
    clock.advance(2)
    assert transport.disconnecting


@pytest.mark.parametrize("port", sorted(LOGIN))
def test_requests_keep_a_session_alive_and_silence_ends_it_at_the_idle_timeout(port):
    clock, protocol, transport = on_port(port, prelogin_timeout=30, idle_timeout=300)
    login, keep_alive = LOGIN[port]
    request(protocol, port, login)
    assert protocol.session is not None
    clock.advance(290)
    request(protocol, port, keep_alive)
    clock.advance(290)  # 580 s since login, 290 since the last request
    assert not transport.disconnecting
    clock.advance(11)
    assert transport.disconnecting


@pytest.mark.parametrize("port, wrong, refusal", [
    ("skype-framed", b"LOGIN user wrong", b"300 Not OK"),
    ("chatroom", b'{"type":"auth","username":"user","password":"wrong"}', b'{"result": "fail"}'),
])
def test_a_connection_is_closed_after_its_failed_logins(port, wrong, refusal):
    _, protocol, transport = on_port(port, login_attempts=2)
    request(protocol, port, wrong)
    assert not transport.disconnecting
    request(protocol, port, wrong)
    assert transport.disconnecting
    assert transport.value().endswith(protocol.framer.encode(refusal))


@pytest.mark.parametrize("port, send, refusal", [
    ("salted", b'{"type":"message","message":"hi"}', b'{"type":"error","message":"slow down"}'),
    ("chatroom", b'{"type":"broadcast","from":"user","msg":"hi"}', b'{"result": "slow down"}'),
])
def test_a_session_sending_past_its_rate_is_told_to_slow_down(port, send, refusal):
    clock, protocol, transport = on_port(port, messages_per_second=1, message_burst=2)
    request(protocol, port, LOGIN[port][0])
    transport.clear()
    for _ in range(3):
        request(protocol, port, send)
    assert transport.value().endswith(protocol.framer.encode(refusal))
    assert transport.value().count(refusal) == 1
    clock.advance(1)  # one more token
    transport.clear()
    request(protocol, port, send)
    assert refusal not in transport.value() and not transport.disconnecting


# TLS comes from the endpoint string


def self_signed(directory) -> tuple[str, bytes]:
    """A key and certificate for 127.0.0.1 in one PEM file; returns its path and the certificate."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "chatserv-test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(1))
                   .not_valid_after(now + datetime.timedelta(1))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName("chatserv-test")]), False)
                   .sign(key, hashes.SHA256()))
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
    path = directory / "server.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()) + cert_pem)
    return str(path), cert_pem


@pytest_twisted.ensureDeferred
async def test_a_port_given_an_ssl_endpoint_speaks_tls_only(tmp_path):
    from twisted.internet import ssl

    pem, cert_pem = self_signed(tmp_path)
    daemon = await Daemon(extra=["--skype", f"ssl:0:interface=127.0.0.1:privateKey={pem}"]).start()
    try:
        trust = ssl.optionsForClientTLS("chatserv-test", ssl.Certificate.loadPEM(cert_pem))
        endpoint = endpoints.wrapClientTLS(trust, endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1",
                                                                                daemon.port("skype")))
        secure = await endpoints.connectProtocol(endpoint, FrameClient(LineFramer(1 << 20)))
        assert await secure.request(b"PING") == b"200 OK"
        plain = await connect(daemon.port("skype"))
        plain.send(b"PING")
        await plain.wait_closed()  # the TLS handshake fails: no answer in clear text
        assert plain.frames.pending == []
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_an_idle_keep_alive_http_connection_is_closed_when_the_daemon_stops():
    daemon = await Daemon().start()
    client = await connect(daemon.port("web"))
    client.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert await client.receive() == b"HTTP/1.1 200 OK"
    await daemon.stop()  # the tracker closes it; a stopped daemon serves nothing more
    await client.wait_closed()
    assert daemon.ports["web"].factory.tracker.connections == set()


# client input never produces a traceback (the autouse fixture fails a test whose daemon logs one)


@pytest_twisted.ensureDeferred
async def test_odd_paths_get_a_json_404_or_400():
    daemon = await Daemon().start()
    try:
        for path in ["/static/chat.js%00.html", "/static/%00", "/static/..%2f..%2fsetup.py",
                     "/static/chat.js/%00", "/chat%00"]:
            code, body = await call(daemon, path)
            assert code in (400, 404), (path, code, body)
        assert (await call(daemon, "/static/chat.js"))[0] == 200
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_chathistory_at_any_timestamp_is_answered():
    """Year 1 and year 9999, with or without a zone: a history batch (UTC when no zone is given),
    or FAIL for what is no time at all; never "year 0 is out of range" in the log."""
    daemon = await Daemon().start()
    try:
        await daemon.chat.register("alice", "pw")
        client = await raw(daemon, "alice", caps="batch", before=[b"PASS pw"])
        client.send(b"JOIN #t", b"PRIVMSG #t :kept")
        await until(client, b" 366 ")
        for reference in [b"timestamp=0001-01-01T00:00:00", b"timestamp=0001-01-01T00:00:00Z",
                          b"timestamp=0001-01-01T00:00:00+14:00", b"timestamp=9999-12-31T23:59:59",
                          b"timestamp=9999-12-31T23:59:59-14:00", b"timestamp=nonsense"]:
            for subcommand in [b"LATEST", b"BEFORE", b"AFTER"]:
                client.send(b"CHATHISTORY " + subcommand + b" #t " + reference + b" 10", b"PING :probe")
                lines = await until(client, b"PONG")
                answered = [line for line in lines if b" BATCH +" in line or b" FAIL CHATHISTORY " in line]
                assert len(answered) == 1, (subcommand, reference, lines)
                assert (b"FAIL" in answered[0]) == (reference == b"timestamp=nonsense"), lines
        client.send(b"CHATHISTORY LATEST #t timestamp=0001-01-01T00:00:00 10")
        assert (await until(client, b"BATCH -"))[-2].endswith(b"] kept")  # after year 1: everything
    finally:
        await daemon.stop()


def test_the_quiet_log_writes_each_kind_once_an_interval_and_counts_the_rest():
    clock, seen = task.Clock(), []
    logger = Logger(observer=seen.append)
    quiet = QuietLog(logger, interval=60, clock=clock)
    for _ in range(1000):
        quiet.info("{peer} is slow", peer="10.0.0.1")
        quiet.warn("another kind")
    clock.advance(59)
    quiet.info("{peer} is slow", peer="10.0.0.2")
    clock.advance(1)
    quiet.info("{peer} is slow", peer="10.0.0.3")
    assert [formatEvent(event) for event in seen] == [
        "10.0.0.1 is slow", "another kind", "10.0.0.3 is slow (1000 more like it held back)"]


@pytest.mark.allow_log_errors  # one traceback, on purpose
@pytest_twisted.ensureDeferred
async def test_a_flood_of_requests_hitting_a_bug_logs_one_traceback_and_each_gets_an_error(monkeypatch):
    def broken(self, argument):
        raise RuntimeError("a bug")

    monkeypatch.setattr(SkypeConnection, "do_PING", broken)
    monkeypatch.setattr(base, "quiet", QuietLog(base.log, clock=task.Clock()))
    seen = []
    globalLogPublisher.addObserver(seen.append)
    try:
        _, _, connection, transport = unit_connection(SkypeFactory, Limits(), {})
        connection.dataReceived(b"PING\n" * 500)
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert transport.value() == b"500 Internal server error\n" * 500
    assert len([event for event in seen if "log_failure" in event]) == 1
