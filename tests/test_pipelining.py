"""A sender's next command is answered while its message is stored; messages still land in order."""

import pytest_twisted
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock, StringTransport

from chatserv.limits import Limits
from chatserv.protocols.irc import IRCFactory
from chatserv.service import ChatService
from chatserv.store.memory import MemoryStore
from chatserv.wire import ConnectionTracker
from tests.support import cheap_hasher


class SlowStore(MemoryStore):
    """Holds every message write until the test commits it, as a busy database would."""

    def __init__(self):
        super().__init__()
        self.writes: list[defer.Deferred] = []

    def add_message(self, message):
        super().add_message(message)
        self.writes.append(defer.Deferred())
        return self.writes[-1]

    def commit(self, count):
        for _ in range(count):
            self.writes.pop(0).callback(None)


async def irc_client(chat, clock, limits, nick):
    factory = IRCFactory(chat, ConnectionTracker(clock), limits, clock,
                         {"irc-flood-rate": 0.0, "irc-flood-burst": 1, "irc-ping-interval": 100.0})
    connection = factory.buildProtocol(None)
    transport = StringTransport()
    connection.makeConnection(transport)
    connection.dataReceived(b"CAP REQ :echo-message\r\nCAP END\r\n")
    connection.dataReceived(f"NICK {nick}\r\nUSER {nick} 0 * :{nick}\r\nJOIN #room\r\n".encode())
    transport.clear()
    return connection, transport


@pytest_twisted.ensureDeferred
async def test_commands_are_answered_while_messages_wait_for_the_store():
    store, clock, limits = SlowStore(), MemoryReactorClock(), Limits(max_pending_requests=4)
    chat = ChatService(store, cheap_hasher(), clock, limits)
    chat.startService()
    await chat.when_ready()
    sender, sent = await irc_client(chat, clock, limits, "alice")
    _, heard = await irc_client(chat, clock, limits, "bob")

    sender.dataReceived(b"PRIVMSG #room :one\r\nPRIVMSG #room :two\r\nMODE alice\r\nPING :sync\r\n")
    assert b" 221 alice" in sent.value() and b"one" not in heard.value()  # answered, nothing shown yet
    store.commit(1)
    assert b"#room one" in heard.value() and b"#room two" not in heard.value()
    assert b"PONG" not in sent.value()  # PING answers once what was sent before it has landed
    store.commit(1)
    assert b"PONG" in sent.value()
    assert heard.value().index(b"#room one") < heard.value().index(b"#room two")
    assert sent.value().index(b"#room one") < sent.value().index(b"#room two")  # echoes in order too

    sent.clear()
    sender.dataReceived(b"".join(b"PRIVMSG #room :m%d\r\n" % n for n in range(6)) + b"MODE alice\r\n")
    assert b" 221 " not in sent.value()  # five in flight: past the bound of four, the sender waits
    store.commit(3)  # down to two in flight, half the bound: reading goes on
    assert b" 221 " in sent.value()
    store.commit(len(store.writes))
    assert [line.split(b" ")[-1] for line in heard.value().splitlines()[2:]] == [
        b"m%d" % n for n in range(6)]
