"""IRC lines, and one IRC connection driven by a fake clock and an in-memory transport."""

import subprocess
import sys

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher

from chatserv import errors
from chatserv.bus import Subscription
from chatserv.events import UserRef
from chatserv.limits import Limits
from chatserv.model import RoomChange
from chatserv.protocols.framing import FrameError
from chatserv.protocols.irc import IRCFactory
from chatserv.protocols.irc.message import IRCFramer, LineTooLong, glob_match, parse, serialise, split_text
from chatserv.service import ChatService
from chatserv.store.memory import MemoryStore
from chatserv.tap import Options
from chatserv.wire import ConnectionTracker
from tests.support import ROOT, TIMEOUT, HeldHasher, InstantHasher, cheap_hasher

# lines


def test_parse_reads_tags_prefix_params_and_trailing():
    line = parse(b"@time=x;+a=b\\sc :evil!e@x privmsg #room  :hello  world")
    assert line.command == "PRIVMSG"
    assert line.params == ("#room", "hello  world")
    assert line.tags == {"time": "x", "+a": "b c"}


def test_parse_replaces_invalid_utf8_and_refuses_nul():
    assert parse(b"PRIVMSG #a :\xff\xfeok").params[1] == "\ufffd\ufffdok"
    with pytest.raises(ValueError):
        parse(b"PRIVMSG #a :x\x00y")


def test_parse_bounds_the_body_and_the_tags_separately():
    parse(b"@" + b"a" * 4094 + b" PRIVMSG #a :" + b"x" * 490)  # a client's tag data: 4094 bytes at most
    with pytest.raises(LineTooLong):
        parse(b"PRIVMSG #a :" + b"x" * 510)
    with pytest.raises(LineTooLong):
        parse(b"@+a=" + b"a" * 4092 + b" PING x")


def test_parse_marks_a_line_that_is_not_utf8():
    assert parse(b"PRIVMSG #a :caf\xc3\xa9").valid_utf8
    line = parse(b"PRIVMSG #a :caf\xe9")
    assert not line.valid_utf8 and line.params == ("#a", "caf\ufffd")
    assert not parse(b"@+k=\xff PING x").valid_utf8


def test_serialise_keeps_a_server_line_within_512_bytes_and_whole_characters():
    line = serialise("PONG", "chatserv", "é" * 400, prefix="chatserv")
    assert len(line) <= 512 and line.endswith(b"\r\n")
    line.decode("utf-8")
    tags = b"@time=" + b"t" * 100 + b" "
    assert len(serialise("PRIVMSG", "#a", "x" * 600, tags={"time": "t" * 100})) == 512 + len(tags)


def test_serialise_adds_a_trailing_colon_only_when_needed_and_never_a_line_break():
    assert serialise("JOIN", "#a", prefix="n!n@h") == b":n!n@h JOIN #a\r\n"
    assert serialise("PRIVMSG", "#a", "two words") == b"PRIVMSG #a :two words\r\n"
    assert serialise("PRIVMSG", "#a", "x\r\nQUIT") == b"PRIVMSG #a :x  QUIT\r\n"
    assert serialise("TAGMSG", "#a", tags={"time": "t", "k": "a b;c"}) == b"@time=t;k=a\\sb\\:c TAGMSG #a\r\n"


def test_split_text_keeps_lines_and_utf8_within_the_budget():
    chunks = split_text("one\ntwo " + "é" * 300, 100)
    assert chunks[0] == "one"
    assert all(len(c.encode()) <= 100 for c in chunks)
    assert "".join(chunks[1:]) == "two " + "é" * 300


def test_wildcards_match_irc_masks():
    assert glob_match("#*", "#lobby") and glob_match("b?b", "bob") and glob_match("*", "")
    assert not glob_match("#*", "bob") and not glob_match("b?b", "bb")
    assert glob_match("[x]*", "[x]y") and not glob_match("[x]*", "xy")  # only * and ? are special


def test_a_wildcard_pattern_costs_no_more_than_its_length_times_the_names():
    """``*a*a*a...c`` against a long name: as a backtracking regex, one guest's
    ``PRIVMSG *playback :PLAY *a*a*a*a*a*a*a*ac 0`` held the reactor (every port) for 3.6 s,
    and each further ``*a`` multiplies that. Run apart, so that a regression fails at the
    usual wait instead of hanging the suite."""
    script = ("from chatserv.protocols.irc.message import glob_match\n"
              "print(glob_match('*a' * 40 + 'c', '#' + 'a' * 49), glob_match('*a' * 40, 'a' * 50))")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, timeout=TIMEOUT)
    assert done.stdout == b"False True\n", done.stderr


def test_the_framer_takes_lf_crlf_and_bare_cr_and_skips_overlong_lines():
    framer = IRCFramer()
    frames = framer.feed(b"PING a\r\nPING b\nPING c\rPING d\n\r\n")
    assert frames == [b"PING a", b"PING b", b"PING c", b"PING d"]
    frames = framer.feed(b"x" * 9000 + b"\nPING e\n")
    assert isinstance(frames[0], FrameError) and frames[1:] == [b"PING e"]


# one connection, a fake clock


async def connect(chat=None, **options):
    """A connection with flood control off and a 100 s ping (``options`` override them)."""
    settings = {"irc-flood-rate": 0.0, "irc-flood-burst": 1, "irc-ping-interval": 100.0, **options}
    return await irc_connection(settings, chat)


async def irc_connection(settings: dict, chat=None):
    """``chat``: a started service of the test's own (its clock is the connection's)."""
    limits = Limits(prelogin_timeout=30, send_queue=1000)
    if chat is None:
        chat = ChatService(MemoryStore(), cheap_hasher(), MemoryReactorClock(), limits)
        chat.startService()
        await chat.when_ready()
    clock = chat.clock
    factory = IRCFactory(chat, ConnectionTracker(clock), limits, clock, settings)
    connection = factory.buildProtocol(None)
    transport = StringTransport()
    connection.makeConnection(transport)
    return clock, connection, transport


def take(transport) -> list[bytes]:
    lines = transport.value().split(b"\r\n")
    transport.clear()
    return lines[:-1]


@pytest_twisted.ensureDeferred
async def test_the_server_pings_an_idle_client_and_drops_a_silent_one():
    clock, connection, transport = await connect()
    connection.dataReceived(b"NICK ann\r\nUSER a 0 * :A\r\n")
    assert take(transport)[0] == b":chatserv 001 ann :Welcome to the chatserv IRC network ann!a@chatserv"
    clock.advance(100)
    assert take(transport) == [b"PING chatserv"]
    connection.dataReceived(b"PONG chatserv\r\n")
    clock.advance(99)
    assert take(transport) == []
    clock.advance(1)
    assert take(transport) == [b"PING chatserv"]
    clock.advance(100)
    assert take(transport) == [b"ERROR :Closing Link: chatserv (Ping timeout)"]
    assert transport.disconnecting


@pytest_twisted.ensureDeferred
async def test_registration_times_out_with_an_error_line():
    clock, connection, transport = await connect()
    connection.dataReceived(b"NICK ann\r\n")
    clock.advance(31)
    assert take(transport) == [b"ERROR :Closing Link: chatserv (Registration timed out)"]
    assert transport.disconnecting


@pytest_twisted.ensureDeferred
async def test_a_port_given_no_options_floods_and_pings_as_twistd_help_says():
    """Each default is declared once: an IRC port built with no options at all (as a test or
    another program may build one) holds the values ``twistd chatserv --help`` shows."""
    shown = Options()  # the defaults --help lists
    burst, rate = shown["irc-flood-burst"], shown["irc-flood-rate"]
    clock, connection, transport = await irc_connection({})
    connection.dataReceived(b"NICK ann\r\nUSER a 0 * :A\r\n")
    take(transport)
    connection.dataReceived(b"MOTD\r\n" * (burst + 2))
    assert sum(b" 376 " in line for line in take(transport)) == burst
    clock.advance(1 / rate)
    assert sum(b" 376 " in line for line in take(transport)) == 1
    clock.advance(1 / rate)
    assert sum(b" 376 " in line for line in take(transport)) == 1
    clock.advance(shown["irc-ping-interval"] - 1)  # idle since the last command
    assert take(transport) == []
    clock.advance(2)
    assert take(transport) == [b"PING chatserv"]


@pytest_twisted.ensureDeferred
async def test_a_flooding_client_is_slowed_down_not_dropped():
    clock, connection, transport = await connect(**{"irc-flood-rate": 2.0, "irc-flood-burst": 2})
    connection.dataReceived(b"NICK ann\r\nUSER a 0 * :A\r\n")
    take(transport)
    connection.dataReceived(b"".join(b"MOTD\r\n" for _ in range(4)))
    assert sum(b" 376 " in line for line in take(transport)) == 2
    clock.advance(0.5)
    assert sum(b" 376 " in line for line in take(transport)) == 1
    clock.advance(0.5)
    assert sum(b" 376 " in line for line in take(transport)) == 1
    connection.dataReceived(b"PING x\r\n")  # PING does not count against the bucket
    assert take(transport) == [b":chatserv PONG chatserv x"]


@pytest_twisted.ensureDeferred
async def test_a_reader_past_its_send_queue_gets_an_error_line_and_is_dropped():
    clock, connection, transport = await connect()
    connection.dataReceived(b"NICK ann\r\nUSER a 0 * :A\r\n")
    take(transport)
    connection.pauseProducing()  # the client stopped reading
    for _ in range(20):
        connection.dataReceived(b"MOTD\r\n")
    assert transport.value().endswith(b"ERROR :Closing Link: SendQ exceeded\r\n")


# writes: what a connection is handed in one reactor turn goes out as one write


class CountingTransport(StringTransport):
    def __init__(self):
        super().__init__()
        self.writes = 0

    def write(self, data):
        self.writes += 1
        super().write(data)


async def room_of_two(send_queue=100_000):
    """ann and bob in #r, on a fake reactor that is running: its turn ends at ``advance(0)``."""
    clock = MemoryReactorClock()
    clock.running = True
    limits = Limits(prelogin_timeout=30, send_queue=send_queue, messages_per_second=0)
    chat = ChatService(MemoryStore(), cheap_hasher(), clock, limits)
    chat.startService()
    await chat.when_ready()
    factory = IRCFactory(chat, ConnectionTracker(clock), limits, clock,
                         {"irc-flood-rate": 0.0, "irc-flood-burst": 1, "irc-ping-interval": 100.0})
    ends = []
    for nick in (b"ann", b"bob"):
        connection, transport = factory.buildProtocol(None), CountingTransport()
        connection.makeConnection(transport)
        connection.dataReceived(b"NICK %s\r\nUSER a 0 * :A\r\nJOIN #r\r\n" % nick)
        clock.advance(0)
        ends.append((connection, transport))
    take(ends[0][1])
    take(ends[1][1])
    ends[1][1].writes = 0
    return clock, ends


@pytest_twisted.ensureDeferred
async def test_messages_handed_in_one_turn_reach_a_member_as_one_write_in_order():
    clock, [(ann, _), (bob, to_bob)] = await room_of_two()
    ann.dataReceived(b"PRIVMSG #r :one\r\nPRIVMSG #r :two\r\nPRIVMSG #r :three\r\n")
    clock.advance(0)
    assert take(to_bob) == [b":ann!a@chatserv PRIVMSG #r " + word for word in (b"one", b"two", b"three")]
    assert to_bob.writes == 1


@pytest_twisted.ensureDeferred
async def test_a_reply_in_the_same_turn_follows_the_messages_handed_before_it():
    clock, [(ann, _), (bob, to_bob)] = await room_of_two()
    ann.dataReceived(b"PRIVMSG #r :first\r\n")
    bob.dataReceived(b"PING here\r\n")
    ann.dataReceived(b"PRIVMSG #r :after\r\n")
    clock.advance(0)
    assert take(to_bob) == [b":ann!a@chatserv PRIVMSG #r first", b":chatserv PONG chatserv here",
                            b":ann!a@chatserv PRIVMSG #r after"]


@pytest_twisted.ensureDeferred
async def test_a_member_that_stopped_reading_is_let_go_past_its_send_queue_when_the_turn_ends():
    clock, [(ann, _), (bob, to_bob)] = await room_of_two(send_queue=1000)
    ann.dataReceived(b"PRIVMSG #r :%s\r\n" % (b"x" * 300))
    bob.pauseProducing()  # the client stopped reading, before the turn ended
    ann.dataReceived(b"PRIVMSG #r :%s\r\n" % (b"x" * 300) * 4)
    clock.advance(0)
    assert to_bob.value().endswith(b"ERROR :Closing Link: SendQ exceeded\r\n")
    assert b"PRIVMSG" not in to_bob.value()
    assert to_bob.disconnecting


@pytest_twisted.ensureDeferred
async def test_nick_changes_count_against_the_flood_bucket():
    """Every room-mate hears each NICK: a storm of them is slowed down like any other command."""
    clock, connection, transport = await connect(**{"irc-flood-rate": 2.0, "irc-flood-burst": 2})
    connection.dataReceived(b"NICK ann\r\nUSER a 0 * :A\r\n")
    take(transport)
    connection.dataReceived(b"".join(b"NICK ann%d\r\n" % n for n in range(4)))
    assert [line.split(b" ")[-1] for line in take(transport)] == [b"ann0", b"ann1"]
    clock.advance(0.5)
    assert [line.split(b" ")[-1] for line in take(transport)] == [b"ann2"]


# a client that leaves while its login is under way leaves nothing behind


class Held:
    """Replaces ``owner.name`` with a version whose calls wait until ``release()``."""

    def __init__(self, owner, name):
        self.owner, self.name, self.real = owner, name, getattr(owner, name)
        self.waiting: list[defer.Deferred] = []
        setattr(owner, name, self._held)

    def _held(self, *args, **kwargs):
        self.waiting.append(defer.Deferred().addCallback(lambda _: self.real(*args, **kwargs)))
        return self.waiting[-1]

    def release(self):
        setattr(self.owner, self.name, self.real)
        waiting, self.waiting = self.waiting, []
        for d in waiting:
            d.callback(None)


async def owner_and_dave_with_a_kept_room():
    """A service whose password checks wait for ``hasher.release()``, with accounts owner and
    dave and owner's stored room #kept. Returns (service, hasher, owner, dave)."""
    hasher = HeldHasher()
    chat = ChatService(MemoryStore(), hasher, MemoryReactorClock(), Limits())
    chat.startService()
    await chat.when_ready()
    owner, dave = await chat.register("owner", "pw"), await chat.register("dave", "pw")
    await chat.create_room(owner, "kept")
    return chat, hasher, owner, dave


async def identify_and_leave(held_owner, held_name):
    """A guest on a room kept in the store logs in to dave and drops its connection while
    ``held_owner.held_name`` (a step of the login) waits; then that step goes on. Returns the
    service."""
    chat, hasher, owner, dave = await owner_and_dave_with_a_kept_room()
    await chat.create_room(dave, "daves")  # replayed at login, as the guest is not on it
    await chat.send_direct(owner, dave, "waiting for dave")
    clock, connection, transport = await connect(chat)
    connection.dataReceived(b"NICK gina\r\nUSER g 0 * :G\r\nJOIN #kept\r\n")
    held = Held(held_owner(chat), held_name)
    connection.dataReceived(b"PRIVMSG NickServ :IDENTIFY dave pw\r\n")
    hasher.release()
    assert held.waiting  # the login is at that step
    connection.connectionLost()  # the client is gone while its login is under way
    held.release()
    hasher.release()
    return chat


@pytest.mark.parametrize("held_owner, held_name", [
    (lambda chat: chat.hasher, "check"),
    (lambda chat: chat.store, "add_member"),
    (lambda chat: chat.store, "message_range"),
], ids=["password-check", "joining-the-guests-rooms", "replaying-them"])
@pytest_twisted.ensureDeferred
async def test_a_guest_that_leaves_while_it_logs_in_is_gone_and_its_messages_wait(held_owner, held_name):
    chat = await identify_and_leave(held_owner, held_name)
    dave = chat.user("dave")
    assert not chat.is_online(dave)
    assert chat.sessions_of(dave) == []
    assert [m.body for m in await chat.undelivered(dave)] == ["waiting for dave"]
    later = await chat.send_direct(chat.user("owner"), dave, "sent after")
    assert not later.delivered


@pytest_twisted.ensureDeferred
async def test_a_guest_that_leaves_while_it_logs_in_to_an_account_online_elsewhere_leaves_no_session():
    chat, hasher, owner, dave = await owner_and_dave_with_a_kept_room()
    elsewhere = chat.attach(dave, Sink(), "web")
    clock, connection, transport = await connect(chat)
    connection.dataReceived(b"NICK gina\r\nUSER g 0 * :G\r\nJOIN #kept\r\n")
    held = Held(chat.store, "add_member")
    connection.dataReceived(b"PRIVMSG NickServ :IDENTIFY dave pw\r\n")
    hasher.release()
    assert held.waiting
    connection.connectionLost()
    held.release()
    assert chat.sessions_of(dave) == [elsewhere]
    chat.detach(elsewhere)
    assert not chat.is_online(dave)


@pytest_twisted.ensureDeferred
async def test_an_account_that_leaves_during_its_replay_still_has_its_messages_waiting():
    chat = ChatService(MemoryStore(), InstantHasher(), MemoryReactorClock(), Limits())
    chat.startService()
    await chat.when_ready()
    owner, dave = await chat.register("owner", "pw"), await chat.register("dave", "pw")
    await chat.create_room(owner, "kept")
    await chat.join_room(dave, "kept")
    await chat.send_direct(owner, dave, "waiting for dave")
    clock, connection, transport = await connect(chat)
    held = Held(chat.store, "message_range")
    connection.dataReceived(b"PASS pw\r\nNICK dave\r\nUSER d 0 * :D\r\n")
    assert held.waiting
    connection.connectionLost()
    held.release()
    assert b"waiting for dave" not in transport.value()
    assert [m.body for m in await chat.undelivered(dave)] == ["waiting for dave"]


TABLES = (dict, set, list)


def table_sizes(*owners) -> dict:
    """The size of every dict, set and list held by ``owners``, and of those they hold: what
    grows with use."""
    def size(table):
        inner = table.values() if isinstance(table, dict) else table
        return len(table) + sum(len(value) for value in inner if isinstance(value, TABLES))

    return {(type(owner).__name__, name): size(value) for owner in owners
            for name, value in vars(owner).items() if isinstance(value, TABLES)}


@pytest_twisted.ensureDeferred
async def test_guests_that_came_and_went_leave_the_tables_as_they_were():
    """Guest ids are never reused, so whatever is kept by a guest's id once it has gone is
    kept for good: a stream of guests would grow the daemon without bound."""
    chat = ChatService(MemoryStore(), HeldHasher(), MemoryReactorClock(), Limits())
    chat.startService()
    await chat.when_ready()
    await chat.register("dave", "pw")
    web = chat.attach(await chat.register("wendy", "pw"), Sink(), "web", "10.0.0.9")
    factory = IRCFactory(chat, ConnectionTracker(chat.clock), chat.limits, chat.clock,
                         {"irc-flood-rate": 0.0, "irc-ping-interval": 100.0})

    async def guest_visit(number: int, identify: bool = False, in_flight: bool = False):
        connection = factory.buildProtocol(None)
        connection.makeConnection(StringTransport())
        connection.dataReceived(b"NICK g%d\r\nUSER g 0 * :G\r\nJOIN #g%d\r\nAWAY :out\r\n" % (number, number))
        chat.watch_presence_of(web, [connection.session.user])  # wendy's page talks with it
        held = Held(chat.store, "add_message") if in_flight else None
        connection.dataReceived(b"PRIVMSG #g%d :hello\r\n" % number)
        if identify:
            connection.dataReceived(b"PRIVMSG NickServ :IDENTIFY dave pw\r\nPART #g%d\r\n" % number)
            chat.hasher.release()
        connection.connectionLost()  # a message may still be on its way to the store
        if held is not None:
            held.release()

    await guest_visit(0, identify=True)  # the first visit makes what every later one reuses
    before = table_sizes(chat, chat.bus, factory)
    await guest_visit(1)
    await guest_visit(2, in_flight=True)
    await guest_visit(3, identify=True)
    assert table_sizes(chat, chat.bus, factory) == before


# what the service gained for IRC


class Sink:
    def __init__(self):
        self.events = []

    def deliver(self, event):
        self.events.append(event)


async def service():
    clock = MemoryReactorClock()
    chat = ChatService(MemoryStore(), cheap_hasher(), clock, Limits())
    chat.startService()
    return await chat.when_ready()


@pytest_twisted.ensureDeferred
async def test_operators_grant_and_take_back_and_members_hear_of_it():
    chat = await service()
    alice = await chat.register("alice", "pw")
    bob = await chat.register("bob", "pw")
    await chat.join_room(alice, "ops", create=True)
    await chat.join_room(bob, "ops")
    sink = Sink()
    chat.attach(bob, sink, "test")
    room = chat.room("ops")
    await chat.change_room(alice, "ops", [RoomChange("operator", True, user=bob)])
    granted = sink.events[-1]
    assert chat.is_operator(bob, room) and granted.changes[0].value and granted.by == UserRef.of(alice)
    await chat.change_room(bob, "ops", [RoomChange("operator", False, user=alice)])  # the creator stays one
    assert chat.is_operator(alice, room)
    await chat.change_room(alice, "ops", [RoomChange("operator", False, user=bob)])
    assert not chat.is_operator(bob, room)
    with pytest.raises(errors.NotOperator):
        await chat.change_room(bob, "ops", [RoomChange("operator", True, user=bob)])


@pytest_twisted.ensureDeferred
async def test_a_guest_creator_is_an_operator_and_may_register_its_own_name():
    chat = await service()
    guest = chat.guest("ann")
    chat.attach(guest, Sink(), "test")
    room = await chat.join_room(guest, "fresh", create=True)
    assert chat.is_operator(guest, room)
    with pytest.raises(errors.AlreadyExists):
        await chat.register("ann", "pw")
    account = await chat.register("ann", "pw", guest=guest)
    assert chat.user("ann") is account


@pytest_twisted.ensureDeferred
async def test_watchers_hear_a_guest_leave_while_its_rooms_still_name_it():
    chat = await service()
    guest = chat.guest("ann")
    session = chat.attach(guest, Sink(), "test")
    await chat.join_room(guest, "lobby")
    seen = []
    watcher = Sink()
    watcher.deliver = lambda event: seen.append(guest.id in chat.room("lobby").members)
    chat.attach(await chat.register("bob", "pw"), watcher, "test",
                subscribes=Subscription.DIRECT | Subscription.PRESENCE)
    chat.detach(session)
    assert seen == [True] and guest.id not in chat.room("lobby").members


# whatever arrives, a line parses or is refused, and a reply is always exactly one line


@given(st.binary(max_size=600))
def test_any_bytes_parse_or_are_refused_cleanly(data):
    try:
        line = parse(data)
    except (ValueError, LineTooLong):
        return
    out = serialise(line.command or "X", *line.params)
    assert out.count(b"\r\n") == 1 and out.endswith(b"\r\n") and b"\x00" not in out


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(max_size=80), max_size=10))
@pytest_twisted.ensureDeferred
async def test_random_input_never_fails_a_connection(chunks):
    failures = []
    observer = lambda event: failures.append(event) if "log_failure" in event else None  # noqa: E731
    globalLogPublisher.addObserver(observer)
    try:
        clock, connection, transport = await connect()
        connection.dataReceived(b"NICK ann\r\nUSER a 0 * :A\r\nJOIN #r\r\n")
        for chunk in chunks:
            connection.dataReceived(chunk)
        connection.dataReceived(b"\r\nPING end\r\n")
        assert transport.value().endswith(b":chatserv PONG chatserv end\r\n") or transport.disconnecting
        connection.connectionLost()
    finally:
        globalLogPublisher.removeObserver(observer)
    assert failures == []
