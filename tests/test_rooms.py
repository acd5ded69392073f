"""Seed 003 as the real CS494 client (gmillia/IRC) speaks it: Python literals, one recv(2048) each."""

import ast
import datetime
import socket

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer, endpoints, reactor, threads
from twisted.internet.address import IPv4Address
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport

from chatserv.limits import Limits
from chatserv.model import Message
from chatserv.protocols.framing import LiteralFramer
from chatserv.protocols.rooms import GREETING, REQUESTS, RoomsFactory, names_that_fit, newest_that_fit, size
from chatserv.wire import ConnectionTracker
from tests.support import TIMEOUT, Daemon, FrameClient, connect
from tests.test_irc import bot as irc_bot
from tests.test_irc import until as irc_until
from tests.test_salted import register as salted_register

NUMBERS = {name: number for number, name in enumerate(REQUESTS, start=1)}
PLEASE_LOGIN = [{"description": "ERROR: please create account or login."}]
NOT_A_LITERAL = [{"description": "ERROR: Invalid request: not a Python literal."}]
NOT_A_REQUEST = [{"description": "ERROR: Invalid request: not a [code, body] list."}]
UNKNOWN = [{"description": "ERROR: Unknown request code."}]


def evaluate(reply: bytes):
    """What the client's ``eval`` makes of a reply, allowing literals and ``datetime.datetime(...)`` only."""

    def value(node):
        match node:
            case ast.Call(func=ast.Attribute(value=ast.Name(id="datetime"), attr="datetime"),
                          args=args, keywords=[]):
                return datetime.datetime(*(value(a) for a in args))
            case ast.List(elts=elements):
                return [value(e) for e in elements]
            case ast.Dict(keys=keys, values=values):
                return {value(k): value(v) for k, v in zip(keys, values, strict=True)}
            case ast.Constant(value=constant):
                return constant
        raise AssertionError(f"not something the client can evaluate: {ast.dump(node)}")

    return value(ast.parse(reply.decode(), mode="eval").body)


def error(text: str) -> list:
    return [{"description": f"ERROR: {text}"}]


def at(message) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(int(message.sent_at), datetime.UTC).replace(tzinfo=None)


class RoomsClient(FrameClient):
    """Reads the greeting line, then one reply literal per request."""

    def __init__(self):
        super().__init__(LiteralFramer(1 << 20))
        self.greeting = defer.Deferred()
        self._head = b""

    def dataReceived(self, data):
        if not self.greeting.called:
            self._head += data
            greeting, newline, data = self._head.partition(b"\n")
            if not newline:
                return
            self.greeting.callback(greeting + newline)
        super().dataReceived(data)

    async def reply(self):
        reply = await self.receive()
        assert isinstance(reply, bytes) and len(reply) <= 2048, reply
        return evaluate(reply)

    async def send(self, request: bytes):
        self.send_raw(request)
        return await self.reply()

    async def call(self, code, body=None):
        """The client's send_request_to_server: ``str([code, body])``, then one reply."""
        return await self.send(str([code, body]).encode())


async def rooms_client(daemon) -> RoomsClient:
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", daemon.port("rooms"))
    client = await endpoints.connectProtocol(endpoint, RoomsClient())
    assert await client.greeting.addTimeout(TIMEOUT, reactor) == GREETING
    return client


async def logged_in(daemon, name="alice") -> RoomsClient:
    client = await rooms_client(daemon)
    assert await client.call(1, [name, "pw"]) == ["OK"]
    return client


@pytest.mark.parametrize("form", ["number", "name"])
@pytest_twisted.ensureDeferred
async def test_every_request_as_the_client_sends_it(daemon, form):
    def code(name):
        return NUMBERS[name] if form == "number" else name

    alice = await rooms_client(daemon)
    assert await alice.call(666) == ["OK"]
    assert await alice.call(code("create_new_user"), ["alice", "pw"]) == ["OK"]
    assert await alice.call(code("create_new_room"), ["r1", "alice"]) == ["OK"]
    assert await alice.call(code("list_all_rooms"), ["alice", "r1"]) == ["r1", ["lobby", "r1"]]
    assert await alice.call(code("join_new_room"), ["lobby", "alice"]) == ["OK"]
    assert await alice.call(code("list_all_rooms"), ["alice", "lobby"]) == ["lobby", ["lobby", "r1"]]
    assert await alice.call(code("switch_room"), ["alice", "r1"]) == ["OK"]
    assert await alice.call(code("send_room_message"), ["alice", "r1", "hello"]) == ["OK"]
    user = daemon.chat.user("alice")
    [stored] = await daemon.chat.room_history(user, "r1")
    assert await alice.call(code("view_room_messages"), ["alice", "r1"]) == [
        {"At": at(stored), "From": "alice", "Message": "hello"}]
    assert await alice.call(code("view_room_members"), ["alice", "r1"]) == ["alice"]

    await daemon.chat.register("bob", "pw")
    bob = await rooms_client(daemon)
    assert await bob.call(code("login"), ["bob", "pw"]) == [None]
    assert await bob.call(code("join_new_room"), ["r1", "bob"]) == ["OK"]
    assert await alice.call(code("view_room_members"), ["alice", "r1"]) == ["alice", "bob"]
    assert await alice.call(code("send_personal_message"), ["alice", "bob", "psst"]) == ["OK"]
    [psst] = await daemon.chat.inbox(daemon.chat.user("bob"))
    assert await bob.call(code("view_personal_inbox"), ["bob"]) == [
        {"At": at(psst), "From": "alice", "Message": "psst"}]

    assert await alice.call(code("leave_room"), ["lobby", "alice"]) == ["OK"]
    assert await alice.call(code("send_all_room_message"), ["alice", "to all"]) == ["r1"]
    assert await alice.call(code("send_message_to_selected_rooms"), ["alice", ["r1", "nope"], "some"]) == [
        ["r1"], ["nope"]]
    assert await alice.call(code("join_selected_rooms"), ["alice", ["lobby", "nope", "r1", "lobby"]]) == [
        ["lobby"], ["nope", "r1", "lobby"]]
    assert [m.body for m in await daemon.chat.room_history(user, "r1")] == ["hello", "to all", "some"]

    again = await rooms_client(daemon)
    assert await again.call(code("login"), ["alice", "pw"]) == ["lobby"]  # the last room joined


@pytest_twisted.ensureDeferred
async def test_requests_together_in_one_segment_or_cut_in_pieces_are_answered_in_order(daemon):
    alice = await logged_in(daemon)
    alice.send_raw(b"[666, None]['create_new_room', ['r', 'alice']][4, ['alice', None]]")
    assert [await alice.reply() for _ in range(3)] == [["OK"], ["OK"], ["r", ["lobby", "r"]]]
    request = str([8, ["alice", "r", "cut ] in ' pieces"]]).encode()
    for byte in range(len(request)):
        alice.send_raw(request[byte : byte + 1])
        await deferLater(reactor, 0)
    assert await alice.reply() == ["OK"]
    assert (await alice.call(9, ["alice", "r"]))[0]["Message"] == "cut ] in ' pieces"


@pytest_twisted.ensureDeferred
async def test_the_real_clients_blocking_socket_reads_each_reply_with_one_recv(daemon):
    text = "h\u00e9llo \u2713 ['it's'] \"quoted\""
    requests = [b"[1, ['carol', 'pw']]", b"[3, ['den', 'carol']]", str([8, ["carol", "den", text]]).encode(),
                b"[9, ['carol', 'den']]", b"[666, None]"]

    def session():
        with socket.create_connection(("127.0.0.1", daemon.port("rooms")), timeout=TIMEOUT) as sock:
            replies = [sock.recv(2048)]
            for request in requests:
                sock.sendall(request)
                replies.append(sock.recv(2048))
            return replies

    greeting, *replies = await threads.deferToThread(session)
    assert greeting == b"Welcome to the Server.\n"
    assert [evaluate(r) for r in replies[:2]] == [["OK"], ["OK"]]
    assert evaluate(replies[3])[0]["Message"] == text
    assert replies[4] == b"['OK']"


@pytest_twisted.ensureDeferred
async def test_a_skype_user_logs_in_here_and_a_room_made_here_is_everyones(daemon):
    skype = await connect(daemon.port("skype"))
    assert await skype.request(b"CREATE dave secret") == b"200 OK"
    rooms = await rooms_client(daemon)
    assert await rooms.call(2, ["dave", "wrong"]) == error("Invalid username or password.")
    assert await rooms.call(2, ["dave", "secret"]) == [None]
    assert await rooms.call(3, ["cross", "dave"]) == ["OK"]
    assert await rooms.call(8, ["dave", "cross", "made on the rooms port"]) == ["OK"]
    dave = daemon.chat.user("dave")
    assert daemon.chat.room("cross") in daemon.chat.rooms_of(dave)  # an IRC channel, a web group
    assert [m.body for m in await daemon.chat.room_history(dave, "cross")] == ["made on the rooms port"]
    assert (await skype.request(b"SEARCH dave")).startswith(b"201 id:1,username:dave,password:,online:true")


@pytest_twisted.ensureDeferred
async def test_the_lobby_is_shared_live_with_the_salted_port(daemon):
    erin = await salted_register(daemon, "erin")
    alice = await logged_in(daemon, "alice")
    assert await alice.call(5, ["lobby", "alice"]) == ["OK"]
    assert await alice.call(8, ["alice", "lobby", "hello from the rooms port"]) == ["OK"]
    assert await erin.receive() == {"type": "user_notification", "user": "alice", "status": "true"}
    assert await erin.receive() == {
        "type": "message", "from": "alice", "message": "hello from the rooms port"}
    assert await erin.request(user="erin", type="message", message="hello back") == {
        "type": "message", "from": "erin", "message": "hello back"}
    history = await alice.call(9, ["alice", "lobby"])
    assert [(e["From"], e["Message"]) for e in history] == [
        ("alice", "hello from the rooms port"), ("erin", "hello back")]
    assert await alice.call(10, ["alice", "lobby"]) == ["alice", "erin"]
    assert await (await rooms_client(daemon)).call("login", ["erin", "pw"]) == [None]


@pytest_twisted.ensureDeferred
async def test_rooms_are_irc_channels_and_personal_messages_cross_both_ways(daemon):
    alice = await logged_in(daemon, "alice")
    assert await alice.call(3, ["den", "alice"]) == ["OK"]
    await daemon.chat.register("bob", "pw")
    bob = await irc_bot(daemon, "bob", "pw")
    bob.join("#den")
    assert await bob.hear("names") == ("names", "#den", ["@alice", "bob"])
    assert await alice.call(8, ["alice", "den", "hello IRC"]) == ["OK"]
    assert await bob.hear("privmsg") == ("privmsg", "alice", "#den", "hello IRC")
    bob.msg("#den", "hello rooms port")
    bob.msg("alice", "psst, alice")
    await bob.sync()
    assert [(e["From"], e["Message"]) for e in await alice.call(9, ["alice", "den"])] == [
        ("alice", "hello IRC"), ("bob", "hello rooms port")]
    assert [(e["From"], e["Message"]) for e in await alice.call(12, ["alice"])] == [("bob", "psst, alice")]
    assert await alice.call(10, ["alice", "den"]) == ["alice", "bob"]
    assert await alice.call(11, ["alice", "bob", "psst, bob"]) == ["OK"]
    assert await bob.hear("privmsg") == ("privmsg", "alice", "bob", "psst, bob")

    bob.msg("alice", "unread here")  # alice is online only on this port: it waits for IRC
    await bob.sync()
    alice_on_irc = await connect(daemon.port("irc"))
    alice_on_irc.send(b"PASS pw", b"NICK alice", b"USER a 0 * :A")
    lines = await irc_until(alice_on_irc, b"unread here")
    assert b":alice!a@chatserv JOIN #den" in lines
    assert not any(b"psst, alice" in line for line in lines)  # read here: not handed over again


@pytest_twisted.ensureDeferred
async def test_personal_messages_wait_undelivered_until_the_inbox_shows_them(daemon):
    alice = await logged_in(daemon, "alice")
    bob = await logged_in(daemon, "bob")
    bob_user = daemon.chat.user("bob")
    assert await alice.call(11, ["alice", "bob", "from the rooms port"]) == ["OK"]
    await daemon.chat.send_direct(daemon.chat.user("alice"), "bob", "from another port")
    # bob is online only here, where nothing is pushed: both still wait, for wires that push
    assert [(m.body, m.delivered) for m in await daemon.chat.inbox(bob_user)] == [
        ("from the rooms port", False), ("from another port", False)]
    inbox = await bob.call(12, ["bob"])
    assert [(e["From"], e["Message"]) for e in inbox] == [
        ("alice", "from the rooms port"), ("alice", "from another port")]
    assert await daemon.chat.take_undelivered(bob_user) == []  # shown here: not handed over again
    assert await alice.call(11, ["alice", "nobody", "x"]) == error("No such user.")


@pytest_twisted.ensureDeferred
async def test_nothing_is_pushed_between_replies(daemon):
    bob = await logged_in(daemon, "bob")
    assert await bob.call(5, ["lobby", "bob"]) == ["OK"]
    alice = await daemon.chat.register("alice", "pw")
    await daemon.chat.join_room(alice, "lobby")
    await daemon.chat.send_room(alice, "lobby", "room message")
    await daemon.chat.send_direct(alice, "bob", "direct message")
    await daemon.chat.leave_room(alice, "lobby")
    assert await bob.call(666) == ["OK"]  # the very next bytes are this reply
    assert len(await bob.call(9, ["bob", "lobby"])) == 1


@pytest_twisted.ensureDeferred
async def test_login_reports_the_current_room_while_the_user_is_in_it(daemon):
    alice = await logged_in(daemon, "alice")
    assert await alice.call(3, ["one", "alice"]) == ["OK"]
    assert await alice.call(3, ["two", "alice"]) == ["OK"]
    assert await alice.call(7, ["alice", "one"]) == ["OK"]
    assert await (await rooms_client(daemon)).call(2, ["alice", "pw"]) == ["one"]
    await daemon.chat.leave_room(daemon.chat.user("alice"), "one")  # as if on IRC
    assert await (await rooms_client(daemon)).call(2, ["alice", "pw"]) == [None]
    assert await alice.call(4, ["alice", "one"]) == [None, ["lobby", "one", "two"]]  # a stale room
    assert await alice.call(4, ["alice", "two"]) == ["two", ["lobby", "one", "two"]]  # a valid one
    assert await alice.call(6, ["two", "alice"]) == ["OK"]
    assert await alice.call(2, ["alice", "pw"]) == [None]
    assert await alice.call(7, ["alice", "one"]) == error("Not a member.")
    assert await alice.call(5, ["two", "alice"]) == ["OK"]
    assert await alice.call(5, ["two", "alice"]) == error("You are in two already.")
    assert await alice.call(3, ["two", "alice"]) == error("Room exists.")
    assert await alice.call(5, ["three", "alice"]) == error("No such room.")


@pytest_twisted.ensureDeferred
async def test_requests_need_a_login_and_name_the_sessions_own_user(daemon):
    stranger = await rooms_client(daemon)
    alice = await logged_in(daemon, "alice")
    await daemon.chat.register("bob", "pw")
    for name, fields in REQUESTS.items():
        if "user" not in fields:
            continue
        body = ["bob" if f == "user" else ["lobby"] if f == "rooms" else "lobby" for f in fields]
        assert await stranger.call(NUMBERS[name], body) == PLEASE_LOGIN
        assert await alice.call(name, body) == error("You are logged in as alice.")
    assert await daemon.chat.store.room_history(daemon.chat.room("lobby").id, 10) == []
    assert daemon.chat.rooms_of(daemon.chat.user("bob")) == []
    assert await daemon.chat.inbox(daemon.chat.user("bob")) == []
    assert await alice.call(4, ["ALICE", None]) == [None, ["lobby"]]  # names are case-insensitive


@pytest_twisted.ensureDeferred
async def test_wrong_arity_or_types_for_every_request(daemon):
    alice = await logged_in(daemon)
    for name, fields in REQUESTS.items():
        expected = error(f"{name[:1].upper()}{name[1:]} takes [{', '.join(fields)}].")
        for body in ([], None, "alice", [*fields, "extra"], [1] * len(fields)):
            assert await alice.call(NUMBERS[name], body) == expected
    assert await alice.call(14, ["alice", "lobby", "not a list of rooms"]) == error(
        "Send_message_to_selected_rooms takes [user, rooms, message].")


@pytest_twisted.ensureDeferred
async def test_bad_input_gets_an_error_reply_and_the_session_goes_on(daemon, tmp_path):
    alice = await logged_in(daemon)
    witness = tmp_path / "ran"
    command = f"__import__('os').system('touch {witness}')".encode()
    for request, replies in [
        (b"[666, None]]", [["OK"], NOT_A_LITERAL]),
        (b"{'code': 1}", [NOT_A_REQUEST]),
        (b"'just a string'", [NOT_A_REQUEST]),
        (b"(1, None)", [NOT_A_REQUEST]),
        (b"[1, None, 3]", [NOT_A_REQUEST]),
        (b"[99, None]", [UNKNOWN]),
        (b"['drop_tables', None]", [UNKNOWN]),
        (b"[True, ['alice', 'pw']]", [UNKNOWN]),
        (b"[None, None]", [UNKNOWN]),
        (b"['login', ['\xff', 'x']]", [NOT_A_LITERAL]),
        (b"[" * 300 + b"]" * 300, [NOT_A_LITERAL]),
        (b"[" + b"9" * 5000 + b", None]", [NOT_A_LITERAL]),
        (b"[" + command + b", None]", [NOT_A_LITERAL]),
        (command, [NOT_A_LITERAL, NOT_A_LITERAL]),
        (b"[(lambda: 1)(), None]", [NOT_A_LITERAL]),
        (b"['login', ['alice\n", [error("Invalid request: unterminated string.")]),
    ]:
        alice.send_raw(request)
        assert [await alice.reply() for _ in replies] == replies, request
    assert await alice.call(4, ["alice", None]) == [None, ["lobby"]]  # still logged in, still in order
    assert not witness.exists()


@pytest_twisted.ensureDeferred
async def test_a_request_over_max_line_is_refused_and_the_next_one_answered(daemon):
    alice = await logged_in(daemon)
    assert await alice.call(3, ["r", "alice"]) == ["OK"]
    huge = str([8, ["alice", "r", "x" * (Limits().max_line + 1)]]).encode()
    alice.send_raw(huge[:5000])
    alice.send_raw(huge[5000:])
    assert await alice.reply() == error("Invalid request: request too long.")
    assert await alice.call(9, ["alice", "r"]) == []  # nothing stored, and the stream is in step
    assert await alice.call(8, ["alice", "r", "x" * 4097]) == error("Message too long.")


@pytest_twisted.ensureDeferred
async def test_history_replies_fit_one_recv_and_say_what_was_left_out(daemon):
    alice = await logged_in(daemon)
    assert await alice.call(3, ["busy", "alice"]) == ["OK"]
    user = daemon.chat.user("alice")
    for number in range(60):
        await daemon.chat.send_room(user, "busy", f"message {number:02d} " + "x" * 80)
    note, *shown = await alice.call(9, ["alice", "busy"])
    assert len(shown) >= 10
    assert [e["Message"][:10] for e in shown] == [f"message {n:02d}" for n in range(60 - len(shown), 60)]
    history = await daemon.chat.room_history(user, "busy", 100)
    assert note == {"At": at(history[59 - len(shown)]), "From": "server",
                    "Message": f"(at least {51 - len(shown)} older messages not shown)"}

    await daemon.chat.send_room(user, "busy", "é" * 4096)
    *_, clipped = await alice.call(9, ["alice", "busy"])
    assert clipped["Message"].endswith(" [...]") and set(clipped["Message"][:-6]) == {"é"}

    bob = await logged_in(daemon, "bob")
    for number in range(12):
        await daemon.chat.send_direct(user, "bob", f"letter {number:02d} " + "y" * 300)
    note, *shown = await bob.call(12, ["bob"])
    assert shown[-1]["Message"].startswith("letter 11")
    assert note["Message"] == f"({12 - len(shown)} older messages not shown)"
    # what did not fit was not shown, so it still waits for a wire that hands it over
    waiting = await daemon.chat.take_undelivered(daemon.chat.user("bob"))
    assert [m.body[:9] for m in waiting] == [f"letter {n:02d}" for n in range(12 - len(shown))]


@pytest_twisted.async_yield_fixture
async def roomy(db):
    """A daemon where one user may create rooms without limit."""
    unlimited = ["--max-rooms-per-user", "0", "--room-rate-per-user", "0", "--room-rate-per-address", "0"]
    running = await Daemon(db, unlimited).start()
    yield running
    await running.stop()


@pytest_twisted.ensureDeferred
async def test_long_lists_are_trimmed_to_fit_with_a_last_entry_saying_how_many_more(roomy):
    daemon = roomy
    alice = await logged_in(daemon)
    user = daemon.chat.user("alice")
    for number in range(250):
        await daemon.chat.create_room(user, f"room-{number:03d}")
    current, names = await alice.call(4, ["alice", None])
    assert current is None and names[0] == "lobby"
    assert names[-1] == f"({251 - (len(names) - 1)} more rooms not shown)"
    assert names[1:-1] == [f"room-{n:03d}" for n in range(len(names) - 2)]

    members = await alice.call(10, ["alice", "room-000"])
    assert members == ["alice"]
    sent = await alice.call(13, ["alice", "everywhere"])
    assert sent[-1] == f"({250 - (len(sent) - 1)} more rooms not shown)"
    bogus = [f"no-such-room-{n:03d}" for n in range(350)]
    joined, failed = await alice.call(15, ["alice", ["lobby", *bogus]])
    assert joined == ["lobby"]
    assert failed[-1] == f"({350 - (len(failed) - 1)} more rooms not shown)"
    assert await alice.call(2, ["alice", "pw"]) == ["lobby"]


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.text(max_size=60), max_size=80), st.integers(min_value=200, max_value=2048))
def test_trimmed_names_always_fit(names, budget):
    trimmed = names_that_fit(names, budget, "rooms")
    assert size(trimmed) <= budget
    if trimmed != names:
        kept = len(trimmed) - 1
        assert trimmed[:kept] == names[:kept]
        assert trimmed[-1] == f"({len(names) - kept} more rooms not shown)"


messages = st.lists(st.builds(
    Message, id=st.just(0), sender_id=st.just(1), sender_name=st.from_regex(r"[a-z]{1,32}", fullmatch=True),
    body=st.text(min_size=1, max_size=4096), sent_at=st.floats(min_value=0, max_value=4e9)), max_size=12)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages, st.integers(min_value=1, max_value=10))
def test_message_replies_always_fit_and_count_what_they_leave_out(fetched, limit):
    entries, shown = newest_that_fit(fetched, limit)
    assert size(entries) <= 2048
    if len(entries) == len(shown):
        assert shown == fetched[-limit:] and len(fetched) <= limit
        return
    note, *kept = entries
    assert shown == fetched[len(fetched) - len(kept):] and note["From"] == "server"
    left_out = len(fetched) - len(kept)
    count = f"at least {left_out}" if len(fetched) > limit else str(left_out)
    assert note["Message"] == f"({count} older messages not shown)"
    for message, entry in zip(shown, kept, strict=True):
        assert entry["Message"] == message.body or (
            entry["Message"].endswith(" [...]") and message.body.startswith(entry["Message"][:-6]))


@pytest_twisted.ensureDeferred
async def test_failed_logins_close_the_connection_after_the_limit(daemon):
    await daemon.chat.register("alice", "pw")
    client = await rooms_client(daemon)
    for _ in range(Limits().login_attempts - 1):
        assert await client.call(2, ["alice", "wrong"]) == error("Invalid username or password.")
    assert await client.call(2, ["alice", "wrong"]) == error("Invalid username or password.")
    await client.wait_closed()


@pytest_twisted.ensureDeferred
async def test_sending_too_fast_is_refused_in_the_shape_each_request_is_read(db):
    daemon = await Daemon(db, ["--messages-per-second", "0.0001", "--message-burst", "2"]).start()
    try:
        alice = await logged_in(daemon)
        assert await alice.call(3, ["r", "alice"]) == ["OK"]
        assert await alice.call(14, ["alice", ["r"], "one"]) == [["r"], []]
        assert await alice.call(8, ["alice", "r", "two"]) == ["OK"]
        # the client reads [sent, failed] without looking for an error: every room failed
        assert await alice.call(14, ["alice", ["r"], "three"]) == [[], ["r"]]
        for code, body in [(8, ["alice", "r", "x"]), (11, ["alice", "alice", "x"]), (13, ["alice", "x"])]:
            assert await alice.call(code, body) == error("Slow down.")
        user = daemon.chat.user("alice")
        assert [m.body for m in await daemon.chat.room_history(user, "r")] == ["one", "two"]
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_shutdown_closes_the_connection_without_a_word(daemon):
    alice = await logged_in(daemon)
    await daemon.stop()
    await alice.wait_closed()
    assert alice.frames.pending == []


def test_an_unclosed_request_waits_until_the_prelogin_timeout_closes_the_connection():
    clock = MemoryReactorClock()
    factory = RoomsFactory(None, ConnectionTracker(clock), Limits(prelogin_timeout=5), clock)
    address = IPv4Address("TCP", "127.0.0.1", 40000)
    connection = factory.buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    connection.makeConnection(transport)
    connection.dataReceived(b"['login', ['alice', 'pw']")
    clock.advance(4.9)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting
    assert transport.value() == GREETING
