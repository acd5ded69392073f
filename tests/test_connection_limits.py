"""The shared connection limits, driven by a fake clock and an in-memory transport."""

import socket
import weakref

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor, task, tcp
from twisted.internet.testing import MemoryReactorClock, StringTransport

from chatserv.limits import Limits, TokenBucket
from chatserv.protocols.framing import LengthPrefixFramer
from chatserv.protocols.skype import SkypeFactory
from chatserv.service import ChatService
from chatserv.store.memory import MemoryStore
from chatserv.wire import ConnectionTracker, Deadline, write_through
from tests.support import Daemon, cheap_hasher, connect


async def make_connection(store=None, **limits):
    clock = MemoryReactorClock()
    chat = ChatService(store or MemoryStore(), cheap_hasher(threads=True), clock, Limits(**limits))
    chat.startService()
    await chat.when_ready()
    factory = SkypeFactory(chat, ConnectionTracker(clock), Limits(**limits), clock)
    connection = factory.buildProtocol(None)
    transport = StringTransport()
    connection.makeConnection(transport)
    return clock, connection, transport, chat


@pytest_twisted.ensureDeferred
async def test_a_silent_connection_is_closed_at_the_prelogin_timeout():
    clock, connection, transport, _ = await make_connection(prelogin_timeout=30)
    clock.advance(29)
    connection.dataReceived(b"PING\n")
    clock.advance(29)
    assert not transport.disconnecting
    clock.advance(2)
    assert transport.disconnecting


@pytest_twisted.ensureDeferred
async def test_a_logged_in_session_gets_the_idle_timeout():
    clock, connection, transport, chat = await make_connection(prelogin_timeout=30, idle_timeout=300)
    connection.dataReceived(b"CREATE alice pw\n")
    await chat.when_ready()
    while connection.session is None:  # registration hashes in a thread
        await _turn()
    clock.advance(299)
    assert not transport.disconnecting
    clock.advance(2)
    assert transport.disconnecting
    connection.connectionLost()
    assert not chat.is_online(chat.user("alice"))


def _turn():
    return task.deferLater(reactor, 0, lambda: None)


@pytest_twisted.ensureDeferred
async def test_a_reader_that_never_reads_is_let_go():
    _, connection, transport, _ = await make_connection(send_queue=1000)
    connection.pauseProducing()  # what the transport does when its buffer is full
    for _ in range(142):  # 142 replies of 7 bytes: 994 bytes queued, still within the bound
        connection.dataReceived(b"PING\n")
    assert not transport.disconnected
    connection.dataReceived(b"PING\n")
    assert transport.disconnected  # aborted once the queue passed 1000 bytes
    assert not connection.unsent


@pytest_twisted.ensureDeferred
async def test_queued_replies_flow_again_when_the_reader_catches_up():
    _, connection, transport, _ = await make_connection(send_queue=1000)
    connection.pauseProducing()
    connection.dataReceived(b"PING\nPING\n")
    assert transport.value() == b""
    connection.resumeProducing()
    assert transport.value() == b"200 OK\n200 OK\n"


@pytest_twisted.ensureDeferred
async def test_a_flood_of_quick_requests_is_answered_without_recursion():
    _, connection, transport, _ = await make_connection(max_pending_requests=4)
    connection.dataReceived(b"PING\n" * 10000)  # each answered at once, in a loop
    assert transport.value() == b"200 OK\n" * 10000
    assert transport.producerState == "producing"


class HeldStore(MemoryStore):
    """Holds each contact write until the test lets it land, as a busy database would."""

    def __init__(self):
        super().__init__()
        self.held: list[defer.Deferred] = []

    def set_contact(self, *args, **kwargs):
        super().set_contact(*args, **kwargs)
        self.held.append(defer.Deferred())
        return self.held[-1]

    def land_one(self):
        self.held.pop(0).callback(None)


@pytest_twisted.ensureDeferred
async def test_a_flood_of_requests_pauses_reading_until_answered():
    store = HeldStore()
    _, connection, transport, chat = await make_connection(store=store, max_pending_requests=4)
    names = [f"u{n}" for n in range(10)]
    for name in ["alice", *names]:
        await chat.register(name, "pw")
    connection.dataReceived(b"LOGIN alice pw\n")
    while connection.session is None:  # the password is checked in a thread
        await _turn()
    transport.clear()
    connection.dataReceived(b"".join(b"ADD %s\n" % name.encode() for name in names))
    assert transport.producerState == "paused"  # one ADD waits for the store, nine for it
    assert transport.value() == b""
    store.land_one()
    assert transport.producerState == "paused"  # still more waiting than the bound allows
    assert transport.value() == b"200 OK\n"
    while store.held:
        store.land_one()
    assert transport.producerState == "producing"  # caught up: reading again
    assert transport.value() == b"200 OK\n" * len(names)


def test_token_bucket_allows_a_burst_then_the_rate():
    clock = MemoryReactorClock()
    bucket = TokenBucket(clock, rate=2, burst=3)
    assert [bucket.allow() for _ in range(4)] == [True, True, True, False]
    clock.advance(0.5)
    assert [bucket.allow() for _ in range(2)] == [True, False]
    assert all(TokenBucket(clock, rate=0, burst=1).allow() for _ in range(100))


def test_the_deadlines_of_a_clock_share_one_delayed_call_and_fire_on_time():
    clock = MemoryReactorClock()
    fired = []
    deadlines = [Deadline(clock, lambda n=n: fired.append(n)) for n in range(3)]
    for deadline, seconds in zip(deadlines, [30, 10, 20], strict=True):
        deadline.arm(seconds)
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(10)
    assert fired == [1]
    deadlines[0].push_back()  # activity at 10 s: now due at 40
    clock.advance(10)
    assert fired == [1, 2]
    clock.advance(19)
    assert fired == [1, 2]
    clock.advance(1)
    assert fired == [1, 2, 0]
    assert clock.getDelayedCalls() == []


def test_a_deadline_armed_again_shorter_fires_at_the_shorter_time():
    clock = MemoryReactorClock()
    fired = []
    deadline = Deadline(clock, lambda: fired.append(clock.seconds()))
    deadline.arm(60)
    clock.advance(10)
    deadline.arm(5)
    clock.pump([1] * 100)
    assert fired == [15]


def test_many_deadlines_armed_again_or_cancelled_each_fire_once_on_time():
    clock = MemoryReactorClock()
    fired = []
    deadlines = [Deadline(clock, lambda n=n: fired.append((n, clock.seconds()))) for n in range(300)]
    for deadline in deadlines:
        deadline.arm(60)
    for deadline in deadlines[::2]:
        deadline.arm(30)  # sooner: the entries for 60 s stay behind, emptied, until swept
    for deadline in deadlines[::3]:
        deadline.cancel()
    clock.pump([1] * 70)
    assert sorted(fired) == [(n, 30 if n % 2 == 0 else 60) for n in range(300) if n % 3]


def test_a_cancelled_deadline_keeps_nothing_alive_and_no_call_stays_pending():
    clock = MemoryReactorClock()

    class Owner:
        def expired(self):
            raise AssertionError("cancelled")

    owner = Owner()
    gone = weakref.ref(owner)
    cancelled, other = Deadline(clock, owner.expired), Deadline(clock, lambda: None)
    cancelled.arm(60)
    other.arm(60)
    cancelled.cancel()
    del owner, cancelled
    assert gone() is None  # a closed connection's memory is freed at once, not at its timeout
    other.cancel()
    assert clock.getDelayedCalls() == []


@pytest.mark.allow_log_errors
def test_a_failing_timeout_handler_does_not_stop_the_others():
    clock = MemoryReactorClock()
    fired = []

    def fail():
        raise RuntimeError("broken handler")

    Deadline(clock, fail).arm(5)
    Deadline(clock, lambda: fired.append("other")).arm(5)
    clock.advance(5)
    assert fired == ["other"]


@pytest_twisted.ensureDeferred
async def test_connections_per_address_are_bounded_across_ports():
    daemon = await Daemon(extra=["--connections-per-ip", "2"]).start()
    try:
        first = await connect(daemon.port("skype"))
        second = await connect(daemon.port("skype-framed"), LengthPrefixFramer(100))
        assert await first.request(b"PING") == b"200 OK"
        refused = await connect(daemon.port("skype"))
        await refused.wait_closed()
        assert await first.request(b"EXIT") == b"201 Goodbye"  # the server closes, then we see it
        await first.wait_closed()
        again = await connect(daemon.port("skype"))
        assert await again.request(b"PING") == b"200 OK"
        assert second.transport.connected
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_a_client_gone_while_its_password_is_checked_is_not_left_online():
    _, connection, transport, chat = await make_connection()
    await chat.register("alice", "pw")
    connection.dataReceived(b"LOGIN alice pw\n")
    connection.connectionLost()  # before the hashing thread answers
    while not connection.requests.idle:
        await _turn()
    assert not chat.is_online(chat.user("alice"))
    assert chat.sessions_of(chat.user("alice")) == []


class Collect(protocol.Protocol):
    """Gathers what arrives; ``whole`` fires once ``size`` bytes are in."""

    def __init__(self, size):
        self.size = size
        self.received = bytearray()
        self.whole = defer.Deferred()

    def dataReceived(self, data):
        self.received += data
        if len(self.received) >= self.size and not self.whole.called:
            self.whole.callback(bytes(self.received))


@pytest_twisted.ensureDeferred
async def test_writes_straight_to_a_socket_that_takes_only_part_arrive_whole_once_and_in_order():
    """write_through sends at once what the socket takes; the rest, and everything written
    while some waits, goes out through Twisted's queue after it, nothing twice."""
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    for sock in (ours, theirs):
        sock.setblocking(False)
    sending = tcp.Connection(ours, protocol.Protocol(), reactor)
    sending.connected = True
    payload = bytes(range(256)) * 8192  # 2 MiB: far more than the socket's buffers take
    far = Collect(len(payload) + 1)  # and the "!" written last
    receiving = tcp.Connection(theirs, far, reactor)
    receiving.connected = True
    receiving.startReading()
    try:
        for start in range(0, len(payload), 256 * 1024):  # the first goes straight out, in part
            write_through(sending, payload[start:start + 256 * 1024])
        write_through(sending, b"!")
        assert bytes(await far.whole.addTimeout(10, reactor)) == payload + b"!"
    finally:
        receiving.stopReading()
        sending.stopWriting()
        ours.close()
        theirs.close()
