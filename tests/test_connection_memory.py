"""What an idle connection costs: a daemon holds tens of thousands of them."""

import tracemalloc

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.testing import MemoryReactorClock, StringTransport

from chatserv.credentials import HashCost, Hasher
from chatserv.limits import Limits
from chatserv.protocols.irc import IRCFactory
from chatserv.service import ChatService
from chatserv.store.memory import MemoryStore
from chatserv.wire import ConnectionTracker

COUNT = 200
BUDGET = 2048  # bytes of Python objects per registered, idle IRC connection (the transport aside)


@pytest_twisted.ensureDeferred
async def test_an_idle_registered_irc_connection_stays_small():
    """With an instance dict, a request queue, a rate bucket and a DelayedCall each, this was
    4.6 KiB (5.5 KiB with the socket and Twisted's transport, bench/connections.py)."""
    clock = MemoryReactorClock()
    limits = Limits()
    chat = ChatService(MemoryStore(), Hasher(reactor, reactor.getThreadPool(), HashCost(1, 1024, 1)),
                       clock, limits)
    chat.startService()
    await chat.when_ready()
    factory = IRCFactory(chat, ConnectionTracker(clock), limits, clock, {"irc-flood-rate": 5.0})
    transports = [StringTransport() for _ in range(COUNT + 1)]
    nicks = [f"idle{n}" for n in range(COUNT + 1)]

    def register(n):
        connection = factory.buildProtocol(None)
        connection.makeConnection(transports[n])
        connection.dataReceived(f"NICK {nicks[n]}\r\nUSER u 0 * :U\r\n".encode())
        assert b" 001 " in transports[n].value()
        transports[n].clear()
        return connection

    held = [register(COUNT)]  # the first one makes what every later one shares
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        held += [register(n) for n in range(COUNT)]
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    ours = [tracemalloc.Filter(False, "*/twisted/internet/testing.py")]  # not the fake transport
    grown = sum(stat.size_diff for stat in after.filter_traces(ours).compare_to(before.filter_traces(ours),
                                                                                "filename"))
    assert grown / COUNT < BUDGET
    for connection in held:
        connection.connectionLost()
    assert not chat.online_users()
