"""Seed 002, the salted JSON chat, as a client following the document sees it on the wire."""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import endpoints, reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher

from chatserv import admin
from chatserv.bans import BanFile, ban_key
from chatserv.credentials import password_digest
from chatserv.limits import Limits
from chatserv.protocols.framing import LineFramer
from chatserv.protocols.salted import SaltedFactory
from chatserv.service import ChatService
from chatserv.store.memory import MemoryStore
from chatserv.wire import ConnectionTracker
from tests.support import Daemon, FrameClient, InstantHasher, connect

OTHER_HOST = "127.0.0.2"  # a second loopback address: "another machine" for IP checks


class Client:
    """One JSON object per line, both ways."""

    def __init__(self, frames: FrameClient):
        self.frames = frames

    def send(self, **request):
        self.frames.send(json.dumps(request).encode())

    def send_raw(self, data: bytes):
        self.frames.send_raw(data)

    async def receive(self) -> dict:
        return json.loads(await self.frames.receive())

    async def request(self, **request) -> dict:
        self.send(**request)
        return await self.receive()

    async def closed(self):
        await self.frames.wait_closed()

    def close(self):
        self.frames.transport.loseConnection()


async def salted(daemon, host="127.0.0.1") -> Client:
    if host == "127.0.0.1":
        return Client(await connect(daemon.port("salted")))
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", daemon.port("salted"),
                                            bindAddress=(host, 0))
    return Client(await endpoints.connectProtocol(endpoint, FrameClient(LineFramer(1 << 20))))


async def register(daemon, name, password="pw", host="127.0.0.1") -> Client:
    """The seed's register -> salt -> login sequence, asserting each answer."""
    client = await salted(daemon, host)
    assert await client.request(user=name, type="register") == {
        "type": "username_register_status", "taken": "false"}
    salt = (await client.request(user=name, type="salt"))["salt"]
    assert len(salt) == 32 and salt.isdigit()
    client.send(user=name, type="login", password=password_digest(salt, password))
    assert await client.receive() == {"type": "register_status", "status": "true", "additional_info": ""}
    assert await client.receive() == {"type": "login", "success": "true"}
    return client


async def log_in(daemon, name, password="pw", host="127.0.0.1") -> Client:
    """The seed's salt -> login sequence."""
    client = await salted(daemon, host)
    salt = (await client.request(user=name, type="salt"))["salt"]
    reply = await client.request(user=name, type="login", password=password_digest(salt, password))
    assert reply == {"type": "login", "success": "true"}
    return client


async def guest(daemon, name, host="127.0.0.1") -> Client:
    client = await salted(daemon, host)
    assert await client.request(user=name, type="guest") == {"type": "login", "success": "true"}
    return client


def joined(name, online=True):
    return {"type": "user_notification", "user": name, "status": "true" if online else "false"}


@pytest_twisted.ensureDeferred
async def test_register_and_login_handshakes(daemon):
    carol = await guest(daemon, "carol")
    alice = await register(daemon, "alice", "secret")
    assert await carol.receive() == joined("alice")

    other = await salted(daemon)
    assert await other.request(user="ALICE", type="register") == {
        "type": "username_register_status", "taken": "true"}
    salt = (await other.request(user="alice", type="salt"))["salt"]
    assert await other.request(user="alice", type="login", password=password_digest(salt, "wrong")) == {
        "type": "login", "success": "false"}

    alice.send(user="alice", type="disconnect")
    await alice.closed()
    assert await carol.receive() == joined("alice", online=False)

    assert await other.request(user="alice", type="login", password=password_digest(salt, "secret")) == {
        "type": "login", "success": "true"}
    assert await carol.receive() == joined("alice")


@pytest_twisted.ensureDeferred
async def test_register_with_the_clients_salt_echo_and_a_name_taken_meanwhile(daemon):
    """The client section has the client send ``{"type":"salt","salt":...}`` without a user."""
    client = await salted(daemon)
    assert (await client.request(user="bob", type="register"))["taken"] == "false"
    salt = (await client.request(type="salt"))["salt"]
    assert (await client.request(type="salt", salt=salt))["salt"] == salt

    squatter = await guest(daemon, "bob")
    reply = await client.request(user="bob", type="login", password=password_digest(salt, "pw"))
    assert reply == {"type": "register_status", "status": "false", "additional_info": "username taken"}
    squatter.close()
    await squatter.closed()

    plain = await salted(daemon)
    assert (await plain.request(user="dave", type="register"))["taken"] == "false"
    assert (await plain.request(user="dave", type="login", password="pw"))["status"] == "false"
    assert await plain.request(user="dave", type="message", message="hi") == {
        "type": "error", "message": "please log in first"}


@pytest_twisted.ensureDeferred
async def test_guest_names_are_refused_while_taken(daemon):
    await register(daemon, "alice")
    first = await guest(daemon, "visitor")
    for name in ("visitor", "VISITOR", "alice"):
        client = await salted(daemon)
        assert await client.request(user=name, type="guest") == {"type": "login", "success": "false"}
        assert await client.receive() == {"type": "username_taken"}
    assert await client.request(user="bad name", type="guest") == {"type": "login", "success": "false"}
    assert await client.receive() == {"type": "error", "message": "invalid username"}

    first.send(user="visitor", type="disconnect")
    await first.closed()
    await guest(daemon, "visitor")


@pytest_twisted.ensureDeferred
async def test_messages_and_typing_reach_the_others(daemon):
    alice = await register(daemon, "alice")
    bob = await guest(daemon, "bob")
    assert await alice.receive() == joined("bob")

    assert await bob.request(user="bob", type="message", message="hello, ünïcode") == {
        "type": "message", "from": "bob", "message": "hello, ünïcode"}
    assert await alice.receive() == {"type": "message", "from": "bob", "message": "hello, ünïcode"}

    bob.send(user="bob", type="typing", status="true")
    bob.send(user="bob", type="typing", status=False)
    assert await alice.receive() == {"type": "typing", "user": "bob", "status": "true"}
    assert await alice.receive() == {"type": "typing", "user": "bob", "status": "false"}
    # the typist hears nothing back: its next answer is the one to its next request
    assert (await bob.request(user="bob", type="userlist", onlinetype="true"))["type"] == "userlist"

    history = await daemon.chat.room_history(daemon.chat.user("alice"), "lobby")
    assert [m.body for m in history] == ["hello, ünïcode"]


@pytest_twisted.ensureDeferred
async def test_userlist_online_and_offline(daemon):
    zed = await register(daemon, "zed")
    zed.send(user="zed", type="disconnect")
    await zed.closed()
    await register(daemon, "alice")
    client = await guest(daemon, "bob")
    assert await client.request(user="bob", type="userlist", onlinetype="true") == {
        "type": "userlist", "users": ["alice", "bob"], "onlinetype": "true"}
    assert await client.request(type="userlist", onlinetype=False) == {
        "type": "userlist", "users": ["zed"], "onlinetype": "false"}
    anonymous = await salted(daemon)
    assert await anonymous.request(type="userlist", onlinetype="true") == {
        "type": "error", "message": "please log in first"}


@pytest_twisted.ensureDeferred
async def test_shutdown_reaches_every_client(daemon):
    alice = await register(daemon, "alice")
    waiting = await salted(daemon)
    await daemon.stop()
    assert await alice.receive() == {"type": "shutdown"}
    assert await waiting.receive() == {"type": "shutdown"}
    await alice.closed()
    await waiting.closed()


@pytest_twisted.ensureDeferred
async def test_outdated_clients_are_told_the_minimum_version():
    daemon = await Daemon(extra=["--salted-min-version", "1.2.0"]).start()
    try:
        old = await salted(daemon)
        assert await old.request(user="alice", type="register", version="1.1.9") == {
            "type": "outdated_client", "version": "1.2.0"}
        await old.closed()
        garbled = await salted(daemon)
        assert (await garbled.request(type="salt", user="a", version="new"))["type"] == "outdated_client"
        await garbled.closed()
        current = await salted(daemon)
        assert (await current.request(user="alice", type="register", version="v1.10"))["taken"] == "false"
        assert (await current.request(user="alice", type="salt"))["type"] == "salt"
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_banned_addresses_are_sent_away(daemon):
    alice = await register(daemon, "alice", host=OTHER_HOST)
    alice.send(user="alice", type="disconnect")
    await alice.closed()
    bob = await register(daemon, "bob")
    await daemon.chat.ban(OTHER_HOST)

    asking = await salted(daemon, OTHER_HOST)
    assert await asking.request(user="x", type="salt") == {"type": "banned"}
    await asking.closed()
    logging_in = await salted(daemon, OTHER_HOST)
    salt = daemon.chat.salt_for("alice")
    assert await logging_in.request(user="alice", type="login", password=password_digest(salt, "pw")) == {
        "type": "banned"}
    await logging_in.closed()

    assert await bob.request(user="bob", type="message", message="still here") == {
        "type": "message", "from": "bob", "message": "still here"}


@pytest_twisted.ensureDeferred
async def test_a_session_banned_while_connected_is_told_at_the_next_event(daemon):
    alice = await register(daemon, "alice", host=OTHER_HOST)
    bob = await register(daemon, "bob")
    await daemon.chat.ban(OTHER_HOST)
    bob.send(user="bob", type="message", message="anyone?")
    assert await alice.receive() == joined("bob")
    assert await alice.receive() == {"type": "banned"}
    await alice.closed()
    heard = [await bob.receive(), await bob.receive()]
    assert joined("alice", online=False) in heard


@pytest_twisted.ensureDeferred
async def test_wrong_ip_for_a_logged_in_user(daemon):
    alice = await register(daemon, "alice")
    bob = await register(daemon, "bob", host=OTHER_HOST)
    assert await alice.receive() == joined("bob")

    for request in ({"type": "salt"}, {"type": "login", "password": "0" * 64}, {"type": "guest"}):
        intruder = await salted(daemon, OTHER_HOST)
        assert await intruder.request(user="alice", **request) == {"type": "wrong_ip"}
        await intruder.closed()

    bob.send(user="alice", type="message", message="I am alice")
    assert await bob.receive() == {"type": "wrong_ip"}
    await bob.closed()
    assert await alice.receive() == joined("bob", online=False)

    # the same host may log in twice; naming someone else from it acts as nobody
    again = await log_in(daemon, "alice")
    carol = await guest(daemon, "carol")
    assert await alice.receive() == joined("carol")
    assert await carol.request(user="alice", type="message", message="I am alice") == {
        "type": "error", "message": "'user' is not the user logged in on this connection"}
    assert await carol.request(user="carol", type="message", message="I am carol") == {
        "type": "message", "from": "carol", "message": "I am carol"}
    assert await alice.receive() == {"type": "message", "from": "carol", "message": "I am carol"}
    assert await again.receive() == joined("carol")


@pytest_twisted.ensureDeferred
async def test_failed_logins_are_limited(daemon):
    await register(daemon, "alice")
    client = await salted(daemon)
    for _ in range(3):
        assert await client.request(user="alice", type="login", password="0" * 64) == {
            "type": "login", "success": "false"}
    await client.closed()


@pytest_twisted.ensureDeferred
async def test_one_account_on_the_salted_and_the_skype_ports(daemon):
    (await register(daemon, "alice", "s3cret pw")).close()
    skype = await connect(daemon.port("skype"))
    assert await skype.request(b"LOGIN alice s3cret pw") == b"200 OK"
    assert await skype.request(b"CREATE bob hunter2") == b"200 OK"
    await log_in(daemon, "bob", "hunter2")
    refused = await salted(daemon)
    salt = (await refused.request(user="bob", type="salt"))["salt"]
    assert (await refused.request(user="bob", type="login", password=password_digest(salt, "x")))[
        "success"] == "false"


@pytest_twisted.ensureDeferred
async def test_bad_input_gets_an_error_and_loses_nothing(daemon):
    """No traceback either: the autouse ``no_tracebacks`` fixture fails any test that logs one."""
    alice = await register(daemon, "alice")
    bob = await guest(daemon, "bob")
    assert await alice.receive() == joined("bob")
    bad = [
        (b"not json", "not a JSON object"),
        (b"\xff\xfe{}", "not a JSON object"),
        (b"[1, 2]", "not a JSON object"),
        (b"[" * 5000, "not a JSON object"),
        (b'{"user": "bob"}', "'type' must be a string"),
        (b'{"type": 7}', "'type' must be a string"),
        (b'{"type": "teleport"}', "unknown type 'teleport'"),
        (b'{"type": "__init__"}', "unknown type '__init__'"),
        (b'{"type": "message", "user": ["bob"]}', "'user' must be a string"),
        (b'{"type": "message", "message": 5}', "'message' must be a string"),
        (b'{"type": "message", "message": ""}', "empty message"),
        (b'{"type": "typing", "status": "maybe"}', "'status' must be true or false"),
        (b'{"type": "userlist", "onlinetype": 1}', "'onlinetype' must be true or false"),
        (b'{"type": "guest", "user": "bob2"}', "already logged in"),
        (b"x" * 10000, "line too long"),
    ]
    bob.send_raw(b"".join(line + b"\n" for line, _ in bad) + b"\n")
    bob.send(user="bob", type="message", message="after the noise")
    for _, message in bad:
        assert await bob.receive() == {"type": "error", "message": message}
    assert await bob.receive() == {"type": "message", "from": "bob", "message": "after the noise"}
    assert await alice.receive() == {"type": "message", "from": "bob", "message": "after the noise"}


@pytest_twisted.ensureDeferred
async def test_the_ban_file_is_applied_while_running(daemon, tmp_path):
    path = tmp_path / "bans.txt"
    await daemon.chat.ban("10.0.0.1")
    clock = task.Clock()
    watcher = BanFile(daemon.chat, str(path), clock, interval=2)
    watcher.startService()
    try:
        assert "10.0.0.1" in path.read_text()  # a missing file starts as the stored list

        path.write_text(f"10.0.0.1\n{OTHER_HOST}  # the noisy one\nnot-an-address\n")
        clock.advance(2)
        await watcher.settled()
        assert daemon.chat.bans == {"10.0.0.1", OTHER_HOST}
        client = await salted(daemon, OTHER_HOST)
        assert await client.request(type="salt", user="x") == {"type": "banned"}

        assert admin.main(["unban", "10.0.0.1", "--ban-file", str(path)]) == 0
        clock.advance(2)
        await watcher.settled()
        assert daemon.chat.bans == {OTHER_HOST}
    finally:
        watcher.stopService()
    if daemon.db != "memory":
        await daemon.restart()
        assert daemon.chat.bans == {OTHER_HOST}


def test_ban_file_option_builds_a_watcher(tmp_path):
    from chatserv.tap import Options, build

    options = Options()
    options.parseOptions(["--db", "memory", "--ban-file", str(tmp_path / "bans"),
                          "--salted-min-version", "0.2.0"])
    root = build(options, reactor)[0]
    assert any(isinstance(s, BanFile) for s in root)
    with pytest.raises(Exception, match="not a version"):
        Options().parseOptions(["--salted-min-version", "soon"])


def test_a_silent_connection_is_told_it_timed_out():
    clock = task.Clock()
    factory = SaltedFactory(None, ConnectionTracker(clock), Limits(prelogin_timeout=5), clock)
    connection = factory.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    connection.makeConnection(transport)
    clock.advance(5)
    assert transport.value() == b'{"type":"error","message":"timed out"}\n'
    assert transport.disconnecting
    assert factory.limits.login_attempts == 3


def test_the_admin_command_edits_the_ban_file_and_keeps_comments(tmp_path, capsys):
    path = tmp_path / "bans.txt"
    with pytest.raises(SystemExit):
        admin.main(["ban", "10.0.0.1", "--ban-file", str(path)])  # the daemon creates it
    assert "start the daemon with --ban-file first" in capsys.readouterr().err
    path.write_text("# the office\n10.0.0.1  # printer\n")
    assert admin.main(["ban", "::0001", "10.0.0.2", "--ban-file", str(path)]) == 0
    assert admin.main(["ban", "10.0.0.2", "--ban-file", str(path)]) == 0
    assert admin.main(["unban", "10.0.0.1", "--ban-file", str(path)]) == 0
    assert path.read_text() == "# the office\n::1\n10.0.0.2\n"
    assert admin.main(["list", "--ban-file", str(path)]) == 0
    assert capsys.readouterr().out == (
        "banned ::1\nbanned 10.0.0.2\n10.0.0.2 was banned already\nunbanned 10.0.0.1\n10.0.0.2\n::1\n")
    for wrong in (["ban", "nobody", "--ban-file", str(path)], ["list", "1.2.3.4", "--ban-file", str(path)]):
        with pytest.raises(SystemExit):
            admin.main(wrong)


@pytest_twisted.ensureDeferred
async def test_the_lobby_is_shared_with_irc_both_ways(daemon):
    from tests.test_irc import raw, until

    alice = await register(daemon, "alice")
    ivan = await raw(daemon, "ivan")
    assert await alice.receive() == joined("ivan")
    ivan.send(b"JOIN #lobby")
    await until(ivan, b" 366 ")

    alice.send(user="alice", type="message", message="hello, irc")
    assert (await until(ivan, b"PRIVMSG"))[-1].endswith(b" PRIVMSG #lobby :hello, irc")
    ivan.send(b"PRIVMSG #lobby :hello, salted")
    assert await alice.receive() == {"type": "message", "from": "alice", "message": "hello, irc"}
    assert await alice.receive() == {"type": "message", "from": "ivan", "message": "hello, salted"}
    ivan.send(b"QUIT :bye")
    assert await alice.receive() == joined("ivan", online=False)


def test_ipv4_mapped_peers_are_banned_by_their_ipv4_address():
    assert ban_key("::ffff:203.0.113.7") == "203.0.113.7"
    assert ban_key("2001:db8::0001") == "2001:db8::1"
    assert ban_key("127.0.0.1") == "127.0.0.1"


@pytest.mark.allow_log_errors
@pytest_twisted.ensureDeferred
async def test_an_unreadable_ban_file_is_reported_and_the_bans_stay(daemon, tmp_path):
    errors_logged = []
    globalLogPublisher.addObserver(errors_logged.append)
    path = tmp_path / "bans.txt"
    path.write_text(f"{OTHER_HOST}\n")
    watcher = BanFile(daemon.chat, str(path), task.Clock(), interval=2)
    watcher.startService()
    try:
        path.unlink()
        path.mkdir()  # unreadable as a file, even for root
        await watcher.check()
    finally:
        watcher.stopService()
        globalLogPublisher.removeObserver(errors_logged.append)
    assert daemon.chat.bans == {OTHER_HOST}
    assert [e for e in errors_logged if "log_failure" in e] == []
    assert any("cannot apply the ban file" in e.get("log_format", "") for e in errors_logged)


REQUEST_TYPES = ["message", "userlist", "guest", "salt", "login", "register", "disconnect", "typing", "x"]
FIELDS = ["type", "user", "message", "onlinetype", "password", "status", "salt", "version"]
WITH_SURROGATES = st.lists(st.characters(categories=["Cs"]) | st.characters(), max_size=8).map("".join)
VALUES = st.one_of(
    st.sampled_from([*REQUEST_TYPES, "alice", "bob", "true", "false", "1.0", "ALICE_DIGEST"]),
    WITH_SURROGATES,
    st.integers(), st.floats(), st.none(), st.booleans(),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)
REPLY_TYPES = {"error", "salt", "login", "register_status", "username_register_status", "username_taken",
               "userlist", "message", "typing", "user_notification", "outdated_client"}


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(
    st.binary(max_size=48).filter(lambda line: b"\n" not in line),
    st.dictionaries(st.sampled_from(FIELDS), VALUES).map(lambda d: json.dumps(d).encode()),
    st.fixed_dictionaries({"type": st.sampled_from(REQUEST_TYPES)},
                          optional=dict.fromkeys(FIELDS[1:], VALUES)).map(lambda d: json.dumps(d).encode()),
), min_size=1, max_size=10))
def test_any_lines_get_json_answers_in_order_and_no_failure(lines):
    clock = task.Clock()
    chat = ChatService(MemoryStore(), InstantHasher(), clock)
    chat.startService()
    chat.register("alice", "pw")
    digest = password_digest(chat.salt_for("alice"), "pw").encode()
    factory = SaltedFactory(chat, ConnectionTracker(clock), Limits(), clock, {"salted-min-version": "0.5"})
    connection = factory.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    connection.makeConnection(transport)
    last = b'{"type":"teleport"}'  # answered alike before and after login
    lines = [line.replace(b"ALICE_DIGEST", digest) for line in [*lines, last]]
    connection.dataReceived(b"".join(line + b"\n" for line in lines))
    answers = [json.loads(line) for line in transport.value().splitlines()]
    assert {answer["type"] for answer in answers} <= REPLY_TYPES
    if not transport.disconnecting:  # disconnect, failed logins or an old version may close it
        assert answers[-1] == {"type": "error", "message": "unknown type 'teleport'"}
