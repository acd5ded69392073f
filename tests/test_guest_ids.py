"""Guest ids are never reused, even across restarts (issue 13, item 10): a guest's direct
messages are filed under its id, so a later guest with the same id would read them."""

from __future__ import annotations

import sqlite3

import pytest_twisted
from twisted.internet import reactor, task

from chatserv.service import ChatService
from chatserv.store import open_store
from chatserv.store.memory import MemoryStore
from chatserv.store.migrations import MIGRATIONS, script
from tests.support import Daemon, InstantHasher
from tests.test_irc import raw, until


async def direct_history(client, nick: bytes) -> list[bytes]:
    client.send(b"CHATHISTORY LATEST " + nick + b" * 10")
    return [line for line in await until(client, b"BATCH -") if b"PRIVMSG" in line]


@pytest_twisted.ensureDeferred
async def test_a_guest_after_a_restart_cannot_read_an_earlier_guests_direct_messages(tmp_path):
    daemon = await Daemon(str(tmp_path / "chat.sqlite3")).start()
    try:
        await daemon.chat.register("alice", "pw")
        visitor = await raw(daemon, "visitor", "batch")
        visitor.send(b"PRIVMSG alice :for alice only", b"PING stored")
        await until(visitor, b"PONG")
        own = await direct_history(visitor, b"alice")
        assert [line.endswith(b"for alice only") for line in own] == [True]  # a guest reads its own
        visitor.send(b"QUIT")
        await visitor.wait_closed()

        await daemon.restart()
        snoop = await raw(daemon, "snoop", "batch")
        assert await direct_history(snoop, b"alice") == []
        alice = await raw(daemon, "alice", before=[b"PASS pw"])
        assert (await until(alice, b"PRIVMSG"))[-1].endswith(b"for alice only")  # it waited for her
    finally:
        await daemon.stop()


async def started(store, clock=None) -> ChatService:
    chat = ChatService(store, InstantHasher(), clock or task.Clock())
    chat.startService()
    return await chat.when_ready()


@pytest_twisted.ensureDeferred
async def test_guest_ids_go_on_from_where_the_store_left_them():
    store = MemoryStore()
    chat = await started(store)
    assert [chat.guest(name).id for name in ("one", "two")] == [-1, -2]
    await chat.stopService()
    chat = await started(store)
    assert chat.guest("three").id == -3


@pytest_twisted.ensureDeferred
async def test_a_database_from_before_the_counter_starts_below_the_guests_it_names(tmp_path):
    path = str(tmp_path / "old.sqlite3")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(f"BEGIN;\n{script(MIGRATIONS[0], 'sqlite')}\nPRAGMA user_version = 1;\nCOMMIT;")
    conn.execute("INSERT INTO messages (id, sender_id, sender_name, recipient_id, body, kind, sent_at)"
                 " VALUES (1, -2, 'old guest', 7, 'hi', 'text', 0), (2, 7, 'alice', -5, 'hello', 'text', 0)")
    conn.close()
    chat = await started(open_store(path, reactor), reactor)
    try:
        assert chat.guest("newcomer").id == -6
    finally:
        await chat.stopService()
