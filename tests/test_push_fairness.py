"""Seed 001 pushes are fair (issue 13, item 7): a target's slow pushes never delay another's.
Callback logins whose port never answers (tarpits) get one push at a time, wait a backoff once
they time out, yield to the healthy ones, and hold a bounded share of the push slots."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import defer, endpoints, protocol, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from chatserv.model import LOBBY
from chatserv.protocols.chatroom import Pusher, PushFailed
from tests.support import TIMEOUT, Daemon, connect
from tests.test_chatroom import callback_login, kv, kv_login, listener, new_chatroom, users

TARPITS = "203.0.113.66"  # one address, many listening ports that never answer
ALICE = "198.51.100.7"


class Far:
    """The other end of the pusher's connections on the fake reactor: some answer, some never do."""

    def __init__(self, clock):
        self.clock = clock
        self.seen = 0
        self.heard: list[bytes] = []

    def new_attempts(self, host=None) -> list[tuple]:
        fresh = self.clock.tcpClients[self.seen:]
        self.seen = len(self.clock.tcpClients)
        return [c for c in fresh if host is None or c[0] == host]

    def answer_all(self, host: str) -> int:
        """Accept and answer every push to ``host`` as it comes (each answer lets the next out)."""
        answered = 0
        while True:
            attempts = [c for c in self.clock.tcpClients[self.seen:] if c[0] == host]
            if not attempts:
                return answered
            host_, port, factory, _, _ = attempts[0]
            index = self.clock.tcpClients.index(attempts[0])
            self.clock.tcpClients[index] = (None, port, factory, None, None)  # taken
            transport = StringTransport()
            client = factory.buildProtocol(IPv4Address("TCP", host_, port))
            client.makeConnection(transport)
            self.heard.append(transport.value())
            client.dataReceived(b"result:ok\n")
            answered += 1


def test_tarpits_on_one_address_never_delay_a_direct_message():
    chatroom = new_chatroom()
    service, clock = chatroom.service, chatroom.clock
    alice, bob = service.user("alice"), service.user("bob")
    for n in range(40):
        service.register(f"tarpit{n}", "pw")
        callback_login(chatroom, f"tarpit{n}", 7000 + n, TARPITS)
    callback_login(chatroom, "alice", 5001, ALICE)
    for user in (alice, bob):
        service.join_room(user, LOBBY)
    far = Far(clock)

    for n in range(15):
        service.send_room(bob, LOBBY, f"broadcast {n}")
    service.send_direct(bob, alice, "for alice")
    assert far.answer_all(ALICE) == 16
    assert clock.seconds() == 0  # no push had to wait for a tarpit's timeout
    assert far.heard[-1] == b"type:message:from:bob:msg:for alice\n"
    assert far.heard[:2] == [b"type:message:from:bob:msg:broadcast 0:to:alice\n",
                             b"type:message:from:bob:msg:broadcast 1:to:alice\n"]
    assert len(far.new_attempts(TARPITS)) == 8  # one address holds a quarter of the 32 slots

    for _ in range(4):  # the tarpits time out, eight at a time; the first eight back off
        clock.advance(5)
        assert len(far.new_attempts(TARPITS)) <= 8
        service.send_direct(bob, alice, f"at {clock.seconds():.0f} s")
        assert far.answer_all(ALICE) == 1
        assert far.heard[-1] == f"type:message:from:bob:msg:at {clock.seconds():.0f} s\n".encode()


def test_a_target_that_timed_out_waits_and_yields_to_the_rest():
    clock = MemoryReactorClock()
    pusher = Pusher(clock, limit=32, backlog=10000, timeout=5, max_answer=100)
    far = Far(clock)
    failed = []
    for n in range(40):  # forty tarpits on forty addresses, three pushes each
        for _ in range(3):
            pusher.push(f"10.0.{n}.1", 7000, b"x\n").addErrback(lambda f: failed.append(f.trap(PushFailed)))
    first = far.new_attempts()
    assert sorted(host for host, *_ in first) == sorted(f"10.0.{n}.1" for n in range(32))  # one per target

    legit = pusher.push(ALICE, 5001, b"hello\n")
    assert far.answer_all(ALICE) == 0  # 32 addresses hold every slot until they time out, once
    clock.advance(5)
    assert len(failed) == 32
    assert far.answer_all(ALICE) == 1 and legit.called
    started = [host for host, *_ in far.new_attempts() if host is not None]  # None: alice's, taken
    assert sorted(started) == sorted(f"10.0.{n}.1" for n in range(32, 40))

    clock.advance(5)  # the first 32 come back from their backoff: slow ones get half the slots
    assert len(failed) == 40
    assert len(far.new_attempts()) == 16
    again = pusher.push(ALICE, 5001, b"again\n")
    assert far.answer_all(ALICE) == 1 and again.called  # served at once, ahead of the slow ones
    consent = pusher.push("10.0.39.1", 7000, b"type:ip:from:bob\n", beside=True)
    consent.addErrback(lambda f: failed.append(f.trap(PushFailed)))
    assert len(failed) == 41  # a backed-off target is not asked to consent: it would not answer


def test_a_targets_pushes_go_one_at_a_time_and_the_backoff_doubles():
    clock = MemoryReactorClock()
    pusher = Pusher(clock, limit=32, backlog=100, timeout=5, max_answer=100)
    far = Far(clock)
    for n in range(4):
        pusher.push("10.0.0.1", 7000, b"%d\n" % n).addErrback(lambda f: None)
    seen_at = []
    for _ in range(60):
        if far.new_attempts():
            seen_at.append(clock.seconds())
        clock.advance(1)
    # each attempt times out after 5 s, then the target waits 5, 10, 20 s before the next
    assert seen_at == [0, 10, 25, 50]


class Tarpit(protocol.Factory):
    """A client port that accepts a push and never answers it."""

    def __init__(self):
        self.accepted: list[protocol.Protocol] = []

    def buildProtocol(self, addr):
        self.accepted.append(protocol.Protocol())
        return self.accepted[-1]


@pytest_twisted.ensureDeferred
async def test_forty_tarpits_and_fifteen_broadcasts_leave_a_direct_message_on_time():
    """End to end on loopback: the tarpits log in from 127.0.0.2, their ports accept and never
    answer; alice's pushes arrive while theirs hang (before the fix: about a minute)."""
    daemon = await Daemon().start()
    tarpit, ports = Tarpit(), []
    try:
        names = [f"tarpit{n}" for n in range(40)]
        await users(daemon, "alice", "bob", *names)
        for name in names:
            ports.append(await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.2").listen(tarpit))
            login = f"password:pw:port:{ports[-1].getHost().port}:type:auth:username:{name}"
            assert await kv(daemon, login, host="127.0.0.2") == {"result": "ok"}
        alice = await listener()
        await kv_login(daemon, "alice", alice.port)
        bob = await connect(daemon.port("chatroom"))
        for line in ["type:auth:username:bob:password:pw",
                     *(f"type:broadcast:from:bob:msg:b{n}" for n in range(15)),
                     "type:message:from:bob:to:alice:msg:for alice"]:
            assert await bob.request(line.encode()) == b"result:ok"

        async def sixteen():
            return [await alice.next() for _ in range(16)]

        pushes = await defer.ensureDeferred(sixteen()).addTimeout(TIMEOUT, reactor)
        assert [p["msg"] for p in pushes] == [f"b{n}" for n in range(15)] + ["for alice"]
        # ...all while the tarpits held their first pushes: none had to time out first
        assert tarpit.accepted and all(held.connected for held in tarpit.accepted)
    finally:
        await daemon.stop()
        for port in ports:
            await port.stopListening()
        for held in tarpit.accepted:
            if held.transport is not None:
                held.transport.abortConnection()
