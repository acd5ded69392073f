"""Engine.IO and Socket.IO on the wire, byte by byte: handshakes, timeouts and broken input."""

import json

import pytest_twisted
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, endpoints, reactor, task
from twisted.web.test.requesthelper import DummyRequest

from chatserv import errors
from chatserv.domain.login import LoggedIn
from chatserv.limits import Limits
from chatserv.model import User
from chatserv.web.engineio import EngineServer
from chatserv.web.sessions import WebSessions
from chatserv.web.socketio import SocketIOConnection
from chatserv.wire import ConnectionTracker
from tests.support import TIMEOUT, Daemon
from tests.web_support import Tokens, call, register_and_login

EIO = "/socket.io/"


def polling(**params):
    return {"EIO": "4", "transport": "polling", **params}


async def handshake(daemon, **params) -> dict:
    code, text = await call(daemon, EIO, params=polling(**params))
    assert code == 200 and text.startswith("0{")
    return json.loads(text[1:])


async def poll(daemon, sid) -> list[str]:
    code, text = await call(daemon, EIO, params=polling(sid=sid))
    assert code == 200, text
    return text.split("\x1e")


async def poll_until(daemon, sid, last: str) -> list[str]:
    """Packets from as many polls as it takes until one starts with ``last``."""
    packets = []
    while not any(p.startswith(last) for p in packets):
        packets += await poll(daemon, sid)
    return packets


async def post(daemon, sid, *packets: str, raw=None):
    return await call(daemon, EIO, "POST", params=polling(sid=sid),
                      raw=raw if raw is not None else "\x1e".join(packets).encode())


@pytest_twisted.ensureDeferred
async def test_the_polling_handshake_and_a_socketio_connect(daemon):
    alice = await register_and_login(daemon, "alice")
    opened = await handshake(daemon, sessionID=alice["sessionID"])
    assert set(opened) == {"sid", "upgrades", "pingInterval", "pingTimeout", "maxPayload"}
    assert (opened["upgrades"], opened["pingInterval"], opened["pingTimeout"]) == (
        ["websocket"], 25000, 20000)
    assert await post(daemon, opened["sid"], "40") == (200, "ok")
    [connected] = await poll(daemon, opened["sid"])
    assert connected == '40{"sid":"' + opened["sid"] + '"}'
    code, metrics = await call(daemon, "/metrics")
    assert 'chatserv_connections{protocol="socket.io"} 1.0\n' in metrics
    assert "chatserv_engineio_sessions 1.0\n" in metrics
    to_myself = '421["send_message",{"recipient_id":1,"content":"me"}]'
    assert await post(daemon, opened["sid"], to_myself) == (200, "ok")
    packets = await poll_until(daemon, opened["sid"], "431")
    assert packets[0].startswith('42["new_message",{"message_id":1,')
    assert packets[1] == '431[{"message_id":1}]'
    assert await post(daemon, opened["sid"], "41") == (200, "ok")  # the client leaves
    assert await poll(daemon, opened["sid"]) == ["1"]
    assert not daemon.chat.is_online(daemon.chat.user("alice"))


@pytest_twisted.ensureDeferred
async def test_a_connect_needs_a_live_session_id(daemon):
    alice = await register_and_login(daemon, "alice")
    sid = (await handshake(daemon, sessionID="forged"))["sid"]
    await post(daemon, sid, "40")
    assert await poll(daemon, sid) == ['44{"message":"Invalid session"}']
    await post(daemon, sid, "40" + json.dumps({"sessionID": alice["sessionID"]}))  # auth payload is enough
    assert (await poll(daemon, sid))[0].startswith('40{"sid":')
    sid = (await handshake(daemon, sessionID=alice["sessionID"]))["sid"]
    await post(daemon, sid, "40/admin,")
    assert await poll(daemon, sid) == ['44/admin,{"message":"Invalid namespace"}']
    await post(daemon, sid, "42[\"send_message\",{}]")  # not connected: ignored, as Socket.IO does
    await post(daemon, sid, "40")
    assert (await poll(daemon, sid))[0].startswith("40")


@pytest_twisted.ensureDeferred
async def test_engineio_requests_that_make_no_sense_get_its_own_400s(daemon):
    assert await call(daemon, EIO, params={"EIO": "3", "transport": "polling"}) == (
        400, {"code": 5, "message": "Unsupported protocol version"})
    assert await call(daemon, EIO, params={"EIO": "4", "transport": "pigeon"}) == (
        400, {"code": 0, "message": "Transport unknown"})
    assert await call(daemon, EIO, params=polling(sid="forged")) == (
        400, {"code": 1, "message": "Session ID unknown"})
    assert await call(daemon, EIO, "POST", params=polling(), raw=b"40") == (
        400, {"code": 2, "message": "Bad handshake method"})
    assert await call(daemon, EIO, "POST", params={"EIO": "4", "transport": "websocket"}) == (
        400, {"code": 2, "message": "Bad handshake method"})
    assert await call(daemon, EIO, params={"EIO": "4", "transport": "websocket"}) == (
        400, {"code": 3, "message": "Bad request"})  # no Upgrade header


@pytest_twisted.ensureDeferred
async def test_broken_packets_close_only_their_own_session(daemon):
    alice = await register_and_login(daemon, "alice")
    survivor = (await handshake(daemon, sessionID=alice["sessionID"]))["sid"]
    await post(daemon, survivor, "40")
    await poll(daemon, survivor)
    broken = [
        ("9oops",), ("",), ("bAAAA",), ("4",), ("4{}",), ("0",), ("40", "42["), ("40", "42{}"),
        ("40", "43[]"), ("40", "42" + "[" * 5000), ("40", "451-[\"x\",{\"_placeholder\":true,\"num\":0}]"),
    ]
    for packets in broken:
        sid = (await handshake(daemon, sessionID=alice["sessionID"]))["sid"]
        code, _ = await post(daemon, sid, *packets)
        answer = await call(daemon, EIO, params=polling(sid=sid))
        goodbye = '40{"sid":"' + sid + '"}\x1e41'  # connected, then told to leave
        assert code in (200, 400) and answer in (
            (200, "1"), (200, goodbye), (400, {"code": 1, "message": "Session ID unknown"})), packets
    sid = (await handshake(daemon))["sid"]
    assert await post(daemon, sid, raw=b"\xff\xfe") == (400, {"code": 3, "message": "Bad request"})
    # The other session never noticed.
    await post(daemon, survivor, '42["send_message",{"recipient_id":1,"content":"still here"}]')
    assert (await poll(daemon, survivor))[0].startswith('42["new_message"')


@pytest_twisted.ensureDeferred
async def test_an_oversized_polling_body_is_refused(daemon):
    sid = (await handshake(daemon))["sid"]
    assert await post(daemon, sid, raw=b"4" + b"x" * 70000) == (413, {"error": "request body too large"})


class RawWebSocket(WebSocketClientProtocol):
    def __init__(self):
        super().__init__()
        self.messages = defer.DeferredQueue()
        self.closed = defer.Deferred()

    def onMessage(self, payload, isBinary):
        self.messages.put(payload.decode())

    def onClose(self, wasClean, code, reason):
        if not self.closed.called:
            self.closed.callback(code)

    def receive(self):
        return self.messages.get().addTimeout(TIMEOUT, reactor)


async def websocket(daemon, query: str, opened=True) -> RawWebSocket:
    url = f"ws://127.0.0.1:{daemon.port('web')}{EIO}?EIO=4&transport=websocket&{query}"
    factory = WebSocketClientFactory(url)
    factory.protocol = RawWebSocket
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", daemon.port("web"))
    client = await endpoint.connect(factory)
    if opened:
        await client.is_open.addTimeout(TIMEOUT, reactor)
    return client


@pytest_twisted.ensureDeferred
async def test_websocket_only_session_and_its_broken_frames(daemon):
    alice = await register_and_login(daemon, "alice")
    client = await websocket(daemon, f"sessionID={alice['sessionID']}")
    opened = await client.receive()
    assert opened.startswith("0{") and json.loads(opened[1:])["upgrades"] == []
    client.sendMessage(b"40")
    assert (await client.receive()).startswith('40{"sid":')
    client.sendMessage(b"4" + b"x" * 70000)  # over the bound: autobahn closes with "message too big"
    assert await client.closed.addTimeout(TIMEOUT, reactor) == 1009
    for frame, binary in ((b"zz", False), (b"\x00\x01", True), (b"2probe", False)):
        client = await websocket(daemon, f"sessionID={alice['sessionID']}")
        await client.receive()
        client.sendMessage(frame, isBinary=binary)
        await client.closed.addTimeout(TIMEOUT, reactor)
    assert not daemon.chat.is_online(daemon.chat.user("alice"))


@pytest_twisted.ensureDeferred
async def test_the_upgrade_dance_by_hand(daemon):
    alice = await register_and_login(daemon, "alice")
    sid = (await handshake(daemon, sessionID=alice["sessionID"]))["sid"]
    await post(daemon, sid, "40")
    await poll(daemon, sid)
    waiting = defer.ensureDeferred(call(daemon, EIO, params=polling(sid=sid)))  # the upgrade releases it
    client = await websocket(daemon, f"sid={sid}")
    client.sendMessage(b"2probe")
    assert await client.receive() == "3probe"
    assert await waiting == (200, "6")
    client.sendMessage(b"5")
    client.sendMessage(b'42["send_message",{"recipient_id":1,"content":"over ws"}]')
    assert (await client.receive()).startswith('42["new_message"')
    assert await call(daemon, EIO, params=polling(sid=sid)) == (
        400, {"code": 1, "message": "Session ID unknown"})  # polling is over for this sid
    forged = await websocket(daemon, "sid=forged", opened=False)
    await forged.closed.addTimeout(TIMEOUT, reactor)  # refused in the handshake, before any packet
    assert not forged.is_open.called and not forged.messages.pending


class Handler:
    def __init__(self):
        self.messages, self.lost_reason = [], None

    def message(self, text):
        self.messages.append(text)

    def lost(self, reason):
        self.lost_reason = reason


def engine(clock, handler):
    return EngineServer(clock, lambda socket, query, address: handler, ping_interval=25, ping_timeout=20,
                        max_payload=1000, send_queue=1000)


def test_an_unanswered_ping_closes_the_session_and_a_pong_keeps_it():
    clock, handler = task.Clock(), Handler()
    server = engine(clock, handler)
    socket = server.open(None, {}, "127.0.0.1")
    request = DummyRequest([b""])
    socket.poll(request)
    assert request.written[0].startswith(b"0{")
    clock.advance(25)
    socket.poll(request := DummyRequest([b""]))
    assert request.written == [b"2"]
    clock.advance(19)
    socket.receive("3")
    clock.advance(25)  # the next ping
    clock.advance(19)
    assert handler.lost_reason is None
    clock.advance(1)
    assert handler.lost_reason == "ping timeout" and socket.sid not in server.sessions


def test_a_reader_that_never_polls_is_let_go():
    clock, handler = task.Clock(), Handler()
    socket = engine(clock, handler).open(None, {}, "127.0.0.1")
    for _ in range(30):
        socket.send("x" * 30)
    assert handler.lost_reason == "slow reader"


@pytest_twisted.ensureDeferred
async def test_a_websocket_that_stops_reading_is_dropped_and_its_sender_goes_on():
    daemon = await Daemon(extra=["--send-queue", "20000"]).start()
    try:
        alice = await register_and_login(daemon, "alice")
        await register_and_login(daemon, "bob")
        client = await websocket(daemon, f"sessionID={alice['sessionID']}")
        await client.receive()
        client.sendMessage(b"40")
        await client.receive()
        client.transport.pauseProducing()  # alice's client reads nothing more
        chat, body = daemon.chat, "x" * 4000
        sent = 0
        while chat.is_online(chat.user("alice")) and sent < 10000:  # 40 MB: past any socket buffer
            await chat.send_direct(chat.user("bob"), "alice", body)
            sent += 1
            if sent % 100 == 0:
                await task.deferLater(reactor, 0, lambda: None)  # let the reactor write and notice
        assert not chat.is_online(chat.user("alice"))  # the server let the reader go
        assert len(await chat.inbox(chat.user("alice"), limit=20000)) == sent  # every message was kept
        client.transport.resumeProducing()
        await client.closed.addTimeout(TIMEOUT, reactor)
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_sessions_over_the_per_address_limit_are_refused():
    # The client's keep-alive HTTP connection carries its polling: it counts as part of the
    # first session, not as a client of its own, so two sessions fit in two.
    daemon = await Daemon(extra=["--connections-per-ip", "2"]).start()
    try:
        await handshake(daemon)
        await handshake(daemon)
        assert await call(daemon, EIO, params=polling()) == (400, {"code": 4, "message": "Forbidden"})
        refused = await websocket(daemon, "", opened=False)
        await refused.closed.addTimeout(TIMEOUT, reactor)
        assert not refused.is_open.called
    finally:
        await daemon.stop()


class Factory:
    """What a SocketIOConnection takes from the web site."""

    def __init__(self, clock):
        self.clock, self.limits, self.service = clock, Limits(prelogin_timeout=5), None
        self.tracker = ConnectionTracker(clock)
        self.web_sessions = WebSessions(Tokens(), clock, 60, self.limits)


def test_a_socket_that_never_connects_to_the_namespace_is_closed_after_the_prelogin_timeout():
    clock = task.Clock()
    factory = Factory(clock)
    server = EngineServer(
        clock, lambda socket, query, address: SocketIOConnection(socket, query, address, factory),
        ping_interval=25, ping_timeout=20, max_payload=1000, send_queue=10000)
    socket = server.open(None, {}, "127.0.0.1")
    socket.receive("3")  # answering pings is not enough
    assert len(factory.tracker.connections) == 1
    clock.advance(5)
    assert socket.closed and not factory.tracker.connections
    assert socket.sid in server.sessions  # a last poll may still collect the goodbye...
    clock.advance(20)
    assert not server.sessions  # ...for a while


class Service:
    """The service as a connected socket sees it when nothing it names exists."""

    def log_in(self, credentials, sink, protocol, address):
        """The one login path, as far as a socket's handshake needs it."""
        session = object() if sink.admit(credentials.user) else None
        if session is not None:
            sink.attached(session)
        return defer.succeed(LoggedIn(credentials.user, session))

    def detach(self, session):
        pass

    def user(self, name):
        raise errors.NotFound("no such user")

    user_by_id = room_by_id = user

    def contact_status(self, owner, other):
        return None

    def conversations(self, user):
        return defer.succeed([])

    def watch_presence_of(self, session, users):
        pass


packet_texts = st.one_of(
    st.text(max_size=40),
    st.builds(lambda t, body: t + body, st.sampled_from(["4", "40", "41", "42", "43", "44", "45", "2", "5"]),
              st.text(max_size=40)),
    st.builds(lambda name, data: "42" + json.dumps([name, data]),
              st.sampled_from(["send_message", "add_contact", "other"]),
              st.dictionaries(st.sampled_from(["recipient_id", "content", "is_group", "type", "sessionID",
                                               "contact_username"]),
                              st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5)))),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(packet_texts, max_size=8))
def test_whatever_arrives_the_session_answers_or_closes_and_nothing_escapes(texts):
    clock = task.Clock()
    factory = Factory(clock)
    factory.service = Service()
    session_id = factory.web_sessions.start(User(1, "alice", "", None, 0.0)).result.token
    server = EngineServer(
        clock, lambda socket, query, address: SocketIOConnection(socket, query, address, factory),
        ping_interval=25, ping_timeout=20, max_payload=1000, send_queue=100_000)
    socket = server.open(None, {"sessionID": [session_id]}, "127.0.0.1")
    socket.receive("40")
    for text in texts:
        socket.receive(text)  # raises nothing; errors are answered on the wire
    clock.pump([1] * 60)  # every deadline passes (no pong comes): the session ends either way
    assert socket.closed and not factory.tracker.connections
