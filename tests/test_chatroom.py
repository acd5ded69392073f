"""Seed 001, the chat-room: the real Java client's key:value lines (one request per connection,
pushes to its own listening port) and the documented JSON clients, on one port."""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer, endpoints, protocol, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from zope.interface import implementer

from chatserv import errors
from chatserv.bus import Subscription
from chatserv.limits import Limits
from chatserv.protocols import keyvalue
from chatserv.protocols.chatroom import (
    KILL_REASON,
    ChatroomFactory,
    Pusher,
    PushFailed,
    wire_of,
)
from chatserv.protocols.framing import LineFramer
from chatserv.service import ChatService
from chatserv.store.memory import MemoryStore
from chatserv.wire import ConnectionTracker
from tests.support import TIMEOUT, Daemon, FrameClient, HeldHasher, InstantHasher, connect
from tests.test_irc import bot as irc_bot
from tests.test_rooms import logged_in as rooms_user
from tests.test_salted import log_in as salted_log_in

OFFLINE = "{} is offline now. Msg will be delivered when online."
NULL_ADDRESS = {"ip": "null", "port": "null"}


# the real client's side: its listening port, and its one-request connections


@implementer(IHalfCloseableProtocol)
class PushReceiver(protocol.Protocol):
    def __init__(self, listener):
        self.listener = listener
        self.buffer = b""
        self.recorded = False

    def dataReceived(self, data):
        self.buffer += data
        if not self.listener.java and b"\n" in self.buffer:
            self._record(self.buffer.partition(b"\n")[0])

    def readConnectionLost(self):
        """The Java client reads until a short read or the end; the end is what always works."""
        if self.listener.java:
            self._record(self.buffer)

    def writeConnectionLost(self):
        pass

    def _record(self, push):
        if self.recorded:
            return
        self.recorded = True
        self.listener.pushes.put(push)
        consent = self.listener.consent
        if consent is not None and keyvalue.parse(push.decode()).get("type") == "ip":
            consent.addCallback(self._answer)  # the user answers when the test says so
        else:
            self._answer(self.listener.answer)

    def _answer(self, answer):
        if answer is not None:  # None: a client that hangs
            self.transport.write(answer)
        return answer


class PushListener(protocol.Factory):
    """The port a chat-room client listens on: records every push the daemon makes to it."""

    def __init__(self, answer=b"result:ok\n", java=False, consent=None):
        self.answer = answer
        self.java = java
        self.consent = consent
        self.pushes = defer.DeferredQueue()
        self.port = None

    def buildProtocol(self, addr):
        return PushReceiver(self)

    async def start(self):
        endpoint = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        self.listening = await endpoint.listen(self)
        self.port = self.listening.getHost().port
        return self

    async def raw(self) -> bytes:
        return await self.pushes.get().addTimeout(TIMEOUT, reactor)

    async def next(self) -> dict:
        return keyvalue.parse((await self.raw()).decode())


LISTENING: list[PushListener] = []


async def listener(**options) -> PushListener:
    LISTENING.append(await PushListener(**options).start())
    return LISTENING[-1]


@pytest_twisted.async_yield_fixture(autouse=True)
async def stop_listening():
    """Push listeners live as long as their test."""
    yield
    while LISTENING:
        await LISTENING.pop().listening.stopListening()


async def refusing_port() -> int:
    """A port where nobody listens any more."""
    started = await PushListener().start()
    await started.listening.stopListening()
    return started.port


async def kv(daemon, line: str | bytes, host="127.0.0.1") -> dict:
    """One request as the real client makes it (with a newline): connect, write, read, close.
    Bytes go as they are (the client writes one byte per character); text as UTF-8."""
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", daemon.port("chatroom"),
                                            bindAddress=(host, 0))
    client = await endpoints.connectProtocol(endpoint, FrameClient(LineFramer(1 << 20)))
    reply = await client.request(line if isinstance(line, bytes) else line.encode())
    client.transport.loseConnection()
    return keyvalue.parse(reply.decode())


class WholeReply(protocol.Protocol):
    """The Java client's socket: writes its request without a newline, keeps all it reads."""

    def __init__(self, request: bytes):
        self.request = request
        self.data = b""
        self.done = defer.Deferred()

    def connectionMade(self):
        self.transport.write(self.request)

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.done.callback(self.data)


async def java_request(daemon, request: bytes) -> bytes:
    """The reply to an unterminated request, exactly as read up to the server's close."""
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", daemon.port("chatroom"))
    client = await endpoints.connectProtocol(endpoint, WholeReply(request))
    return await client.done.addTimeout(TIMEOUT, reactor)


class JsonClient:
    def __init__(self, frames: FrameClient):
        self.frames = frames

    async def request(self, **request) -> dict:
        return json.loads(await self.frames.request(json.dumps(request).encode()))

    async def receive(self) -> dict:
        return json.loads(await self.frames.receive())


async def json_client(daemon) -> JsonClient:
    return JsonClient(await connect(daemon.port("chatroom")))


async def json_login(daemon, name, password="pw") -> JsonClient:
    client = await json_client(daemon)
    assert await client.request(type="auth", username=name, password=password) == {"result": "ok"}
    return client


async def kv_login(daemon, name, port, password="pw") -> None:
    reply = await kv(daemon, f"password:{password}:port:{port}:type:auth:username:{name}")
    assert reply == {"result": "ok"}


async def users(daemon, *names):
    for name in names:
        await daemon.chat.register(name, "pw")


def logged(text: str) -> defer.Deferred:
    """Fires once the daemon logs a line containing ``text``."""
    seen = defer.Deferred()

    def observe(event):
        if text in formatEvent(event) and not seen.called:
            globalLogPublisher.removeObserver(observe)
            seen.callback(None)

    globalLogPublisher.addObserver(observe)
    return seen.addTimeout(TIMEOUT, reactor)


# end to end: the real client


@pytest_twisted.ensureDeferred
async def test_the_real_clients_session(daemon):
    """Users made on the Skype port log in here with the Java client's exact lines."""
    skype = await connect(daemon.port("skype"))
    assert await skype.request(b"CREATE alice pw") == b"200 OK"
    assert await skype.request(b"CREATE bob pw") == b"200 OK"
    alice_port, bob_port = await listener(), await listener()

    ok = {"result": "ok"}
    assert await kv(daemon, f"password:pw:port:{alice_port.port}:type:auth:username:alice") == ok
    assert await kv(daemon, f"username:bob:type:auth:port:{bob_port.port}:password:pw") == ok
    assert await kv(daemon, "username:bob:type:auth:port:1:password:wrong") == {"result": "fail"}
    assert await kv(daemon, "type:online") == {"alice": "alice", "bob": "bob"}

    assert await kv(daemon, r"msg:hi\: there:to:bob:from:alice:type:message") == {"result": "ok"}
    assert await bob_port.next() == {"type": "message", "from": "alice", "msg": "hi: there"}

    assert await kv(daemon, r"from:bob:type:broadcast:msg:C\:\\all") == {"result": "ok"}
    assert await alice_port.next() == {"type": "message", "from": "bob", "msg": r"C:\all", "to": "alice"}

    assert await kv(daemon, "type:alive:from:alice") == {"result": "ok"}
    assert await kv(daemon, "from:alice:type:logout") == {"result": "ok"}
    assert await kv(daemon, "type:alive:from:alice") == {"result": "please login first"}
    assert await kv(daemon, "type:online") == {"bob": "bob"}


@pytest_twisted.ensureDeferred
async def test_unterminated_requests_and_pushes_as_the_java_client_reads_them(daemon):
    """The Java client writes no newline and reads until a short read; a trailing newline in a
    reply would become part of its last value, so none is sent to it."""
    await users(daemon, "alice", "bob")
    alice_port = await listener(answer=b"result:ok", java=True)
    assert await java_request(daemon, b"password:pw:port:%d:type:auth:username:alice" % alice_port.port) \
        == b"result:ok"
    assert await java_request(daemon, b"type:online") == b"alice:alice"

    bob = await json_login(daemon, "bob")
    assert await bob.request(type="message", **{"from": "bob"}, to="alice", msg="hi") == {"result": "ok"}
    assert await alice_port.raw() == b"type:message:from:bob:msg:hi"
    # 32 characters: the client's 32-character reads end only because the daemon ends its side
    assert await bob.request(type="message", **{"from": "bob"}, to="alice", msg="six ch") == {"result": "ok"}
    assert await alice_port.raw() == b"type:message:from:bob:msg:six ch"


@pytest_twisted.ensureDeferred
async def test_the_java_clients_one_byte_characters_are_read_as_latin_1(daemon):
    """DataOutputStream.writeBytes sends é as the one byte 0xE9, newline or not (623aebc): a
    key:value line that is not UTF-8 is Latin-1. JSON lines stay UTF-8 only."""
    await users(daemon, "alice", "bob", "carol")
    alice_port, carol_port = await listener(), await listener()
    await kv_login(daemon, "alice", alice_port.port)
    await kv_login(daemon, "carol", carol_port.port)
    bob = await irc_bot(daemon, "bob", "pw")

    assert await kv(daemon, b"msg:h\xe9llo:from:alice:to:bob:type:message") == {"result": "ok"}
    assert await bob.hear("privmsg") == ("privmsg", "alice", "bob", "héllo")
    assert await java_request(daemon, b"msg:d\xe9j\xe0 vu:from:alice:to:carol:type:message") == b"result:ok"
    assert await carol_port.next() == {"type": "message", "from": "alice", "msg": "déjà vu"}
    assert await kv(daemon, "msg:déjà vu:from:alice:to:carol:type:message") == {"result": "ok"}  # UTF-8
    assert await carol_port.next() == {"type": "message", "from": "alice", "msg": "déjà vu"}

    json_line = b'{"type": "message", "from": "alice", "to": "bob", "msg": "h\xe9llo"}'
    assert await (await json_client(daemon)).frames.request(json_line) == b'{"result": "invalid request!"}'


@pytest_twisted.ensureDeferred
async def test_unblock_gives_back_the_contact_that_was_there_before_the_block(daemon):
    """A contact added on the Skype port (seed 000 ADD) survives the Java client's block and
    unblock: LIST shows it again, as it was."""
    await users(daemon, "bob")
    skype = await connect(daemon.port("skype"))
    assert await skype.request(b"CREATE alice pw") == b"200 OK"
    assert await skype.request(b"ADD bob") == b"200 OK"
    listed = await skype.request(b"LIST")
    assert listed.startswith(b"201 id:") and b"username:bob," in listed

    alice_port = await listener()
    await kv_login(daemon, "alice", alice_port.port)
    assert await kv(daemon, "from:alice:type:block:target:bob") == {"result": "ok"}
    assert await skype.request(b"LIST") == b"301 Not found"
    assert await kv(daemon, "from:alice:type:unblock:target:bob") == {"result": "ok"}
    assert await skype.request(b"LIST") == listed
    alice, bob = daemon.chat.user("alice"), daemon.chat.user("bob")
    assert daemon.chat.contacts(alice) == [(bob, "friend")]


# end to end: JSON clients


@pytest_twisted.ensureDeferred
async def test_json_clients_chat_block_and_log_out(daemon):
    await users(daemon, "alice", "bob")
    alice = await json_login(daemon, "alice")
    bob = await json_login(daemon, "bob")
    assert await alice.request(type="online") == {"alice": "alice", "bob": "bob"}

    assert await alice.request(type="message", **{"from": "alice"}, to="bob", msg="hi") == {"result": "ok"}
    assert await bob.receive() == {"type": "message", "from": "alice", "msg": "hi"}
    assert await bob.request(type="broadcast", **{"from": "bob"}, msg="all") == {"result": "ok"}
    assert await alice.receive() == {"type": "message", "from": "bob", "msg": "all", "to": "alice"}

    assert await bob.request(type="block", **{"from": "bob"}, target="alice") == {"result": "ok"}
    assert await alice.request(type="message", **{"from": "alice"}, to="bob", msg="x") == {
        "result": "you are blocked!"}
    assert await alice.request(type="broadcast", **{"from": "alice"}, msg="unheard") == {"result": "ok"}
    assert await bob.request(type="unblock", **{"from": "bob"}, target="alice") == {"result": "ok"}
    assert await alice.request(type="message", **{"from": "alice"}, to="bob", msg="again") == {
        "result": "ok"}
    assert await bob.receive() == {"type": "message", "from": "alice", "msg": "again"}  # not "unheard"

    # one connection, both encodings: each line is answered in its own
    assert await alice.frames.request(b"type:alive:from:alice") == b"result:ok"
    assert await bob.request(type="logout", **{"from": "bob"}) == {"result": "ok"}
    assert await alice.request(type="online") == {"alice": "alice"}


@pytest_twisted.ensureDeferred
async def test_a_body_with_line_breaks_is_one_key_value_push_line(daemon):
    await users(daemon, "alice", "bob")
    alice = await connect(daemon.port("chatroom"))  # a key:value client that reads lines
    assert await alice.request(b"password:pw:type:auth:username:alice") == b"result:ok"
    bob = await json_login(daemon, "bob")
    assert await bob.request(type="message", **{"from": "bob"}, to="alice", msg="one\ntwo\r\nthree") == {
        "result": "ok"}
    assert await bob.request(type="broadcast", **{"from": "bob"}, msg="four\nfive") == {"result": "ok"}
    assert await alice.receive() == rb"type:message:from:bob:msg:one\ntwo\r\nthree"
    assert keyvalue.parse((await alice.receive()).decode()) == {
        "type": "message", "from": "bob", "msg": "four\nfive", "to": "alice"}
    assert await alice.request(b"type:alive:from:alice") == b"result:ok"  # nothing was left over


@pytest_twisted.ensureDeferred
async def test_nobody_speaks_as_someone_else(daemon):
    await users(daemon, "alice", "bob")
    alice_port = await listener()
    await kv_login(daemon, "alice", alice_port.port)
    bob = await json_login(daemon, "bob")

    # the same name from another IP is not alice's login
    assert await kv(daemon, "type:message:from:alice:to:bob:msg:forged", host="127.0.0.2") == {
        "result": "please login first"}
    # a connection logged in as bob cannot name alice
    assert await bob.request(type="message", **{"from": "alice"}, to="bob", msg="forged") == {
        "result": "you are logged in as bob"}
    # nobody logged in as bob from one-request connections
    assert await kv(daemon, "type:block:from:bob:target:alice") == {"result": "please login first"}
    assert not daemon.chat.has_blocked(daemon.chat.user("bob"), daemon.chat.user("alice"))
    assert await daemon.chat.inbox(daemon.chat.user("bob")) == []


@pytest_twisted.ensureDeferred
async def test_a_second_login_kills_the_first(daemon):
    await users(daemon, "alice", "bob")
    first = await json_login(daemon, "alice")
    second = await json_login(daemon, "alice")
    assert await first.receive() == {"type": "kill", "reason": KILL_REASON}
    await first.frames.wait_closed()

    old_port, new_port = await listener(), await listener()
    await kv_login(daemon, "alice", old_port.port)
    assert await second.receive() == {"type": "kill", "reason": KILL_REASON}
    await kv_login(daemon, "alice", new_port.port)
    assert await old_port.next() == {"type": "kill", "reason": KILL_REASON}

    # the same client logging in again (a restart) is not killed
    await kv_login(daemon, "alice", new_port.port)
    bob = await json_login(daemon, "bob")
    assert await bob.request(type="message", **{"from": "bob"}, to="alice", msg="hi") == {"result": "ok"}
    assert await new_port.next() == {"type": "message", "from": "bob", "msg": "hi"}


@pytest_twisted.ensureDeferred
async def test_a_stopping_daemon_tells_its_json_clients(daemon):
    await users(daemon, "alice")
    alice = await json_login(daemon, "alice")
    await daemon.stop()
    assert await alice.receive() == {"type": "kill", "reason": "server shutting down"}
    await alice.frames.wait_closed()


@pytest_twisted.ensureDeferred
async def test_messages_to_offline_users_wait_for_their_next_login(daemon):
    await users(daemon, "alice", "bob", "carol")
    alice = await json_login(daemon, "alice")
    for to, body in [("bob", "one"), ("bob", "two"), ("carol", "three")]:
        assert await alice.request(type="message", **{"from": "alice"}, to=to, msg=body) == {
            "result": OFFLINE.format(to)}

    bob_port = await listener()
    await kv_login(daemon, "bob", bob_port.port)
    assert await bob_port.next() == {"type": "message", "from": "alice", "msg": "one"}
    assert await bob_port.next() == {"type": "message", "from": "alice", "msg": "two"}

    carol = await json_client(daemon)
    assert await carol.request(type="auth", username="carol", password="pw") == {"result": "ok"}
    assert await carol.receive() == {"type": "message", "from": "alice", "msg": "three"}


@pytest_twisted.ensureDeferred
async def test_a_direct_message_is_shown_once_live_or_once_at_the_next_login(daemon):
    await users(daemon, "alice", "bob")
    alice, bob = await json_login(daemon, "alice"), await json_login(daemon, "bob")

    async def send(body, result="ok"):
        answer = await alice.request(type="message", **{"from": "alice"}, to="bob", msg=body)
        assert answer == {"result": result}

    await send("live")
    assert await bob.receive() == {"type": "message", "from": "alice", "msg": "live"}
    assert await bob.request(type="logout", **{"from": "bob"}) == {"result": "ok"}
    await send("while away", OFFLINE.format("bob"))
    bob = await json_login(daemon, "bob")
    assert await bob.receive() == {"type": "message", "from": "alice", "msg": "while away"}
    assert await bob.request(type="logout", **{"from": "bob"}) == {"result": "ok"}
    bob = await json_login(daemon, "bob")
    await send("next")  # nothing else came first: neither message was handed over again
    assert await bob.receive() == {"type": "message", "from": "alice", "msg": "next"}


@pytest_twisted.ensureDeferred
async def test_address_needs_the_targets_consent(daemon):
    await users(daemon, "alice", "bob", "carol", "dave")
    alice = await json_login(daemon, "alice")
    bob_port, carol_port = await listener(), await listener(answer=b"result:rej\n")
    await kv_login(daemon, "bob", bob_port.port)
    await kv_login(daemon, "carol", carol_port.port)

    assert await alice.request(type="address", **{"from": "alice"}, target="bob") == {
        "result": "ok", "ip": "127.0.0.1", "port": str(bob_port.port)}
    assert await bob_port.next() == {"type": "ip", "from": "alice"}
    assert await alice.request(type="address", **{"from": "alice"}, target="carol") == {
        "result": "the user denied your request.", **NULL_ADDRESS}
    assert await carol_port.next() == {"type": "ip", "from": "alice"}
    assert await alice.request(type="address", **{"from": "alice"}, target="nobody") == {
        "result": "user does not exist!", **NULL_ADDRESS}
    assert await alice.request(type="address", **{"from": "alice"}, target="dave") == {
        "result": "the user is offline", **NULL_ADDRESS}
    assert await kv(daemon, "type:block:from:bob:target:alice") == {"result": "ok"}
    assert await alice.request(type="address", **{"from": "alice"}, target="bob") == {
        "result": "you are blocked!", **NULL_ADDRESS}


@pytest_twisted.ensureDeferred
async def test_waiting_for_consent_blocks_nobody_else(daemon):
    await users(daemon, "alice", "bob", "carol")
    consent = defer.Deferred()
    bob_port = await listener(consent=consent)
    await kv_login(daemon, "bob", bob_port.port)
    alice = await json_login(daemon, "alice")
    carol = await json_login(daemon, "carol")

    asking = defer.ensureDeferred(alice.request(type="address", **{"from": "alice"}, target="bob"))
    assert await bob_port.next() == {"type": "ip", "from": "alice"}
    assert await carol.request(type="message", **{"from": "carol"}, to="bob", msg="meanwhile") == {
        "result": "ok"}
    assert await bob_port.next() == {"type": "message", "from": "carol", "msg": "meanwhile"}
    assert await kv(daemon, "type:online") == {"alice": "alice", "bob": "bob", "carol": "carol"}
    assert not asking.called
    consent.callback(b"result:ok\n")
    assert await asking == {"result": "ok", "ip": "127.0.0.1", "port": str(bob_port.port)}

    # peers that exchanged addresses hear when the other goes offline
    assert await kv(daemon, "type:logout:from:bob") == {"result": "ok"}
    assert await alice.receive() == {"type": "offline", "from": "bob"}


@pytest_twisted.ensureDeferred
async def test_push_targets_that_refuse_or_hang_lose_nothing():
    short = ["--chatroom-push-timeout", "0.5", "--chatroom-consent-timeout", "0.5"]
    daemon = await Daemon(extra=short).start()
    try:
        await users(daemon, "alice", "bob", "carol", "dave")
        alice = await json_login(daemon, "alice")
        hanging, dave_port = await listener(answer=None), await listener()
        await kv_login(daemon, "bob", await refusing_port())
        await kv_login(daemon, "carol", hanging.port)
        await kv_login(daemon, "dave", dave_port.port)

        bob_failed = logged("push to bob at 127.0.0.1")
        carol_failed = logged("push to carol at 127.0.0.1")
        for to in ("bob", "carol", "dave"):
            assert await alice.request(type="message", **{"from": "alice"}, to=to, msg=f"for {to}") == {
                "result": "ok"}
        assert await dave_port.next() == {"type": "message", "from": "alice", "msg": "for dave"}
        assert await hanging.next() == {"type": "message", "from": "alice", "msg": "for carol"}
        await bob_failed
        await carol_failed

        # a consent request nobody answers fails in time
        assert await alice.request(type="address", **{"from": "alice"}, target="carol") == {
            "result": "fail", **NULL_ADDRESS}

        # the failed pushes wait for the next login
        bob_port, carol_port = await listener(), await listener()
        await kv_login(daemon, "bob", bob_port.port)
        await kv_login(daemon, "carol", carol_port.port)
        assert await bob_port.next() == {"type": "message", "from": "alice", "msg": "for bob"}
        assert await carol_port.next() == {"type": "message", "from": "alice", "msg": "for carol"}
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_a_message_whose_push_failed_survives_a_restart(tmp_path):
    daemon = await Daemon(str(tmp_path / "chat.sqlite3")).start()
    try:
        await users(daemon, "alice", "bob")
        await kv_login(daemon, "bob", await refusing_port())
        failed = logged("push to bob at 127.0.0.1")
        assert await kv(daemon, "type:message:from:bob:to:bob:msg:note to self") == {"result": "ok"}
        await failed
        await daemon.restart()
        bob_port = await listener()
        await kv_login(daemon, "bob", bob_port.port)
        assert await bob_port.next() == {"type": "message", "from": "bob", "msg": "note to self"}
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_bad_input_gets_a_clear_answer(daemon):
    await users(daemon, "alice")
    client = await json_client(daemon)
    frames = client.frames
    for line, answer in [
        (b"{bad", b'{"result": "invalid request!"}'),
        (b'{"type": "auth"', b'{"result": "invalid request!"}'),
        (b"{}", b'{"result": "invalid request!"}'),
        (b'{"type": "frob"}', b'{"result": "invalid request!"}'),
        (b'{"type": ["auth"]}', b'{"result": "invalid request!"}'),
        (b'{"type": "auth", "username": "alice"}', b'{"result": "missing password"}'),
        (b'{"type": "auth", "username": 1, "password": "pw"}', b'{"result": "username must be a string"}'),
        (b'{"type": "auth", "username": "alice", "password": "pw", "port": "99999"}',
         b'{"result": "port must be a number from 1 to 65535"}'),
        (b'{"type": "message", "to": "bob", "msg": "hi"}', b'{"result": "missing from"}'),
        (b'{"type": ' + b"[" * 4000 + b"]" * 4000 + b"}", b'{"result": "invalid request!"}'),
        (b"[1, 2]", b'{"result": "invalid request!"}'),  # JSON, but not an object
        (b"from:alice", b"invalid request!"),
        (b"type:frob", b"invalid request!"),
        (b"type:online\\", b"invalid request!"),
        (b"\xff\xfe", b"invalid request!"),
        (b"x" * 20000, b"result:line too long"),
        (b"type:message:from:alice", b"result:please login first"),
    ]:
        assert await frames.request(line) == answer, line
    assert await client.request(type="auth", username="alice", password="pw") == {"result": "ok"}
    assert await client.request(type="message", **{"from": "alice"}, to="bob") == {"result": "missing msg"}
    assert await client.request(type="message", **{"from": "alice"}, to="bob", msg="x") == {
        "result": "user does not exist!"}
    assert await client.request(type="message", **{"from": "alice"}, to="alice", msg="") == {
        "result": "empty message"}
    assert await client.request(type="online") == {"alice": "alice"}


# across ports


@pytest_twisted.ensureDeferred
async def test_chat_room_users_reach_other_ports(daemon):
    await users(daemon, "alice", "bob", "carol", "dave")
    alice_port = await listener()
    await kv_login(daemon, "alice", alice_port.port)
    bob = await json_login(daemon, "bob")
    skype = await connect(daemon.port("skype"))
    assert await skype.request(b"LOGIN carol pw") == b"200 OK"
    dave = await salted_log_in(daemon, "dave")

    # the Skype port has no messages: a direct one waits in carol's inbox; she is online, though
    assert await kv(daemon, "type:message:from:alice:to:carol:msg:hello carol") == {"result": "ok"}
    inbox = await daemon.chat.inbox(daemon.chat.user("carol"))
    assert [(m.sender_name, m.body) for m in inbox] == [("alice", "hello carol")]

    # a broadcast reaches the lobby everywhere, and is kept in its history
    assert await kv(daemon, "type:broadcast:from:alice:msg:hello lobby") == {"result": "ok"}
    assert await bob.receive() == {"type": "message", "from": "alice", "msg": "hello lobby", "to": "bob"}
    while (said := await dave.receive())["type"] != "message":
        pass
    assert said == {"type": "message", "from": "alice", "message": "hello lobby"}
    history = await daemon.chat.room_history(daemon.chat.user("bob"), "lobby")
    assert [(m.sender_name, m.body) for m in history] == [("alice", "hello lobby")]

    # and the salted lobby reaches the chat-room
    dave.send(user="dave", type="message", message="hi from 002")
    assert await alice_port.next() == {"type": "message", "from": "dave", "msg": "hi from 002", "to": "alice"}

    # a block made here holds on every port
    assert await kv(daemon, "type:block:from:alice:target:dave") == {"result": "ok"}
    with pytest.raises(errors.Blocked):
        await daemon.chat.send_direct(daemon.chat.user("dave"), "alice", "through another port")


@pytest_twisted.ensureDeferred
async def test_personal_messages_between_the_chat_room_and_the_rooms_port(daemon):
    await users(daemon, "alice")
    alice_port = await listener()
    await kv_login(daemon, "alice", alice_port.port)
    bob = await rooms_user(daemon, "bob")  # created on the rooms port (seed 003)

    assert await bob.call(11, ["bob", "alice", "from the rooms port"]) == ["OK"]
    assert await alice_port.next() == {"type": "message", "from": "bob", "msg": "from the rooms port"}

    # the rooms port pushes nothing: the message waits in bob's inbox there, and bob is online
    assert await kv(daemon, "msg:from the chat-room:from:alice:to:bob:type:message") == {"result": "ok"}
    inbox = await bob.call(12, ["bob"])
    assert [(entry["From"], entry["Message"]) for entry in inbox] == [("alice", "from the chat-room")]


@pytest_twisted.ensureDeferred
async def test_chat_room_and_irc_talk_in_the_lobby_and_in_private(daemon):
    await users(daemon, "alice", "dave")
    alice_port = await listener()
    await kv_login(daemon, "alice", alice_port.port)
    dave = await irc_bot(daemon, "dave", "pw")
    dave.join("#lobby")
    await dave.hear("joined")

    assert await kv(daemon, "type:broadcast:from:alice:msg:hello irc") == {"result": "ok"}
    assert await dave.hear("privmsg") == ("privmsg", "alice", "#lobby", "hello irc")
    dave.msg("#lobby", "hello chat-room")
    assert await alice_port.next() == {"type": "message", "from": "dave", "msg": "hello chat-room",
                                       "to": "alice"}

    assert await kv(daemon, "type:message:from:alice:to:dave:msg:just you") == {"result": "ok"}
    assert await dave.hear("privmsg") == ("privmsg", "alice", "dave", "just you")
    dave.msg("alice", "and you")
    assert await alice_port.next() == {"type": "message", "from": "dave", "msg": "and you"}


# units: the timers and bounds, on a clock the test moves


class SlowInbox(MemoryStore):
    """Answers the waiting-messages query only when the test says so, like a store in a thread."""

    def __init__(self):
        super().__init__()
        self.waiting = []

    def inbox(self, user_id, limit, undelivered_only=False):
        if not undelivered_only:
            return super().inbox(user_id, limit)
        self.waiting.append(defer.Deferred())
        return self.waiting[-1].addCallback(lambda _: super(SlowInbox, self).inbox(user_id, limit, True))


def new_chatroom(hasher=None, store=None) -> ChatroomFactory:
    clock = MemoryReactorClock()
    service = ChatService(store or MemoryStore(), hasher or InstantHasher(), clock)
    service.startService()
    for name in ("alice", "bob"):
        service.register(name, "pw")
    return ChatroomFactory(service, ConnectionTracker(clock), Limits(), clock, {"alive-timeout": 60.0})


@pytest.fixture
def chatroom():
    return new_chatroom()


def connected(factory, host="127.0.0.1"):
    connection = factory.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
    connection.makeConnection(transport)
    return connection, transport


def answer_push(clock, index=-1) -> StringTransport:
    """Let the daemon's ``index``-th outbound push connect; returns what it wrote."""
    host, port, factory, _, _ = clock.tcpClients[index]
    transport = StringTransport()
    factory.buildProtocol(IPv4Address("TCP", host, port)).makeConnection(transport)
    return transport


def callback_login(factory, name, port, host="127.0.0.1"):
    """``name`` logs in from ``host`` as the original client does: a request naming the port
    to push to."""
    connection, transport = connected(factory, host)
    connection.dataReceived(b"password:pw:port:%d:type:auth:username:%s\n" % (port, name.encode()))
    assert transport.value() == b"result:ok\n"
    return factory.callbacks[factory.service.user(name).id]


def test_silent_logins_end_and_their_peers_are_told(chatroom):
    service, clock = chatroom.service, chatroom.clock
    alice, bob = service.user("alice"), service.user("bob")
    callback_login(chatroom, "alice", 5001)
    bob_login = callback_login(chatroom, "bob", 5002)
    chatroom.pair(alice, bob)

    clock.advance(59)
    bob_login.touch()
    clock.advance(2)
    assert not service.is_online(alice)
    assert service.is_online(bob)
    assert clock.tcpClients[-1][:2] == ("127.0.0.1", 5002)
    assert answer_push(clock).value() == b"type:offline:from:alice\n"
    clock.advance(58)
    assert not service.is_online(bob)


def test_a_silent_json_connection_is_told_and_closed(chatroom):
    connection, transport = connected(chatroom)
    connection.dataReceived(b'{"type": "auth", "username": "alice", "password": "pw"}\n')
    assert transport.value() == b'{"result": "ok"}\n'
    transport.clear()
    chatroom.clock.advance(30)
    connection.dataReceived(b'{"type": "alive", "from": "alice"}\n')
    chatroom.clock.advance(59)
    assert chatroom.service.is_online(chatroom.service.user("alice"))
    chatroom.clock.advance(2)
    assert transport.value() == b'{"result": "ok"}\n{"type": "kill", "reason": "no alive request in time"}\n'
    assert transport.disconnecting
    assert not chatroom.service.is_online(chatroom.service.user("alice"))


def test_an_unterminated_request_is_answered_once_the_client_falls_quiet(chatroom):
    connection, transport = connected(chatroom)
    connection.dataReceived(b"type:onl")
    connection.dataReceived(b"ine")
    assert transport.value() == b""
    chatroom.clock.advance(1)
    assert transport.value() == b""  # nobody online: an empty map, written without a newline
    assert transport.disconnecting

    connection, transport = connected(chatroom)
    connection.dataReceived(b'{"type": "onl')
    chatroom.clock.advance(1)
    assert not transport.disconnecting  # half a JSON object: wait for the rest
    connection.dataReceived(b'ine"}')
    chatroom.clock.advance(1)
    assert transport.value() == b"{}"
    assert transport.disconnecting


@pytest_twisted.ensureDeferred
async def test_a_session_that_confirms_direct_messages_leaves_them_waiting_until_it_does():
    """The service side of callback logins: heard at once, delivered only when confirmed."""
    service = new_chatroom().service
    alice, bob = service.user("alice"), service.user("bob")
    heard = []
    sink = type("Sink", (), {"deliver": lambda self, event: heard.append(event)})()
    service.attach(bob, sink, "test", subscribes=Subscription.DIRECT_PUSHED)
    message = await service.send_direct(alice, "bob", "confirm me")
    assert [event.message for event in heard] == [message]
    assert not message.delivered
    assert await service.undelivered(bob) == [message]
    assert await service.undelivered(bob) == [message]  # looking does not take them
    await service.mark_delivered(bob, [message])
    assert await service.undelivered(bob) == []


def test_a_client_gone_while_its_password_is_checked_is_not_logged_in():
    hasher = HeldHasher()
    chatroom = new_chatroom(hasher)
    service = chatroom.service
    service.send_direct(service.user("bob"), "alice", "waiting")
    auth = b'{"type": "auth", "username": "alice", "password": "pw"}\n'
    connection, transport = connected(chatroom)
    connection.dataReceived(auth)
    connection.connectionLost(ConnectionDone())
    hasher.release()
    assert not service.is_online(service.user("alice"))

    connection, transport = connected(chatroom)
    connection.dataReceived(auth)
    hasher.release()
    assert transport.value() == b'{"result": "ok"}\n{"type": "message", "from": "bob", "msg": "waiting"}\n'


def test_live_pushes_wait_behind_the_auth_reply_and_the_messages_that_waited():
    store = SlowInbox()
    chatroom = new_chatroom(store=store)
    service = chatroom.service
    service.send_direct(service.user("bob"), "alice", "waited")
    connection, transport = connected(chatroom)
    connection.dataReceived(b'{"type": "auth", "username": "alice", "password": "pw"}\n')
    service.send_direct(service.user("bob"), "alice", "live")  # alice is online: pushed at once
    store.waiting.pop().callback(None)
    assert transport.value().splitlines() == [
        b'{"result": "ok"}',
        b'{"type": "message", "from": "bob", "msg": "waited"}',
        b'{"type": "message", "from": "bob", "msg": "live"}',
    ]


def test_outbound_pushes_are_bounded_in_number_and_time():
    clock = MemoryReactorClock()
    pusher = Pusher(clock, limit=1, backlog=1, timeout=5, max_answer=100)
    first = pusher.push("127.0.0.1", 7001, b"one\n")
    second = pusher.push("127.0.0.1", 7002, b"two\n")
    third = pusher.push("127.0.0.1", 7003, b"three\n")
    assert len(clock.tcpClients) == 1  # one at a time
    failures = []
    third.addErrback(lambda f: failures.append(f.trap(PushFailed)))
    assert failures == [PushFailed]  # beyond the backlog: dropped at once

    clock.advance(5)  # the first never connects
    first.addErrback(lambda f: failures.append(f.trap(PushFailed)))
    assert len(failures) == 2
    assert clock.tcpClients[-1][:2] == ("127.0.0.1", 7002)

    written = answer_push(clock)
    assert written.value() == b"two\n"
    clock.advance(5)  # connected, but no answer
    second.addErrback(lambda f: failures.append(f.trap(PushFailed)))
    assert len(failures) == 3
    assert written.disconnecting


FIELD_NAMES = ["type", "from", "to", "msg", "username", "password", "port", "target"]
TYPES = ["auth", "message", "broadcast", "online", "block", "unblock", "logout", "address", "alive"]
VALUES = st.one_of(st.sampled_from(["alice", "bob", "pw", "5001", *TYPES]), st.text(max_size=8))
WITH_SURROGATES = st.lists(st.characters(categories=["Cs"]) | st.characters(), max_size=8).map("".join)
JSON_VALUES = st.one_of(VALUES, st.integers(), st.none(), st.booleans(), st.lists(st.integers(), max_size=2),
                        WITH_SURROGATES)
LINES = st.one_of(
    st.binary(max_size=64),
    st.dictionaries(st.sampled_from(FIELD_NAMES), JSON_VALUES).map(lambda d: json.dumps(d).encode()),
    st.dictionaries(st.sampled_from(FIELD_NAMES), VALUES).map(lambda d: keyvalue.serialise(d).encode()),
).filter(lambda line: b"\n" not in line)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(LINES, min_size=1, max_size=8))
def test_every_line_gets_one_answer_and_no_failure(lines):
    failures = []
    globalLogPublisher.addObserver(failures.append)
    try:
        connection, transport = connected(new_chatroom())
        connection.dataReceived(b"".join(line + b"\n" for line in lines))
    finally:
        globalLogPublisher.removeObserver(failures.append)
    assert not [event for event in failures if "log_failure" in event]
    answers = transport.value().split(b"\n")[:-1]
    if not transport.disconnecting:  # failed logins may close it
        assert len(answers) == len(lines)
    for answer in answers:
        if answer != b"invalid request!":
            wire_of(answer).decode(answer)  # raises unless the answer is JSON or key:value
