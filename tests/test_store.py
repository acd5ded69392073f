"""One suite, both stores: what is written comes back, after a reopen too."""

import pytest
import pytest_twisted
from twisted.internet import reactor

from chatserv.model import Message, Room, User
from chatserv.store.memory import MemoryStore
from chatserv.store.migrations import MIGRATIONS
from chatserv.store.sqlite import SQLiteStore


@pytest.fixture(params=["memory", "sqlite"])
def make_store(request, tmp_path):
    """A factory: calling it again reopens the same data (a daemon restart)."""
    memory = MemoryStore()
    path = str(tmp_path / "store.sqlite3")
    return (lambda: memory) if request.param == "memory" else (lambda: SQLiteStore(path, reactor))


def user(uid, name):
    return User(uid, name, "1" * 32, f"verifier-{uid}", 1000.0 + uid)


def message(mid, sender, **target):
    return Message(mid, sender, f"user{sender}", f"body {mid}", 2000.0 + mid, **target)


async def reopen(store, make_store):
    await store.close()
    store = make_store()
    return store, await store.open()


@pytest_twisted.ensureDeferred
async def test_an_empty_store_starts_numbering_at_one(make_store):
    store = make_store()
    snapshot = await store.open()
    assert (snapshot.users, snapshot.rooms, snapshot.contacts, snapshot.bans) == ([], [], [], [])
    assert (snapshot.next_user_id, snapshot.next_room_id, snapshot.next_message_id) == (1, 1, 1)
    await store.close()


@pytest_twisted.ensureDeferred
async def test_small_tables_survive_a_reopen(make_store):
    store = make_store()
    await store.open()
    alice, bob = user(1, "alice"), user(2, "Bob")
    await store.add_user(alice)
    await store.add_user(bob)
    alice.public_key = "KEY"
    await store.update_user(alice)
    await store.set_contact(1, 2, "friend")
    await store.set_contact(2, 1, "friend")
    await store.set_contact(2, 1, "blocked", before_block="friend")
    await store.add_room(Room(1, "lobby", None, 5.0))
    await store.add_room(Room(2, "Games", 1, 6.0, topic="old"))
    await store.update_room(Room(2, "Games", 1, 6.0, topic="new"))
    await store.add_member(2, 1)
    await store.add_member(2, 2)
    await store.remove_member(2, 2)
    await store.add_ban("10.0.0.9")
    await store.add_ban("10.0.0.8")
    await store.remove_ban("10.0.0.9")
    await store.add_message(message(7, 1, room_id=2))

    store, snapshot = await reopen(store, make_store)
    assert [(u.id, u.username, u.verifier, u.public_key) for u in snapshot.users] == [
        (1, "alice", "verifier-1", "KEY"), (2, "Bob", "verifier-2", None)]
    assert sorted(snapshot.contacts) == [(1, 2, "friend", None), (2, 1, "blocked", "friend")]
    rooms = {r.name: r for r in snapshot.rooms}
    assert rooms["Games"].topic == "new" and rooms["Games"].members == {1}
    assert rooms["Games"].created_by == 1 and rooms["lobby"].members == set()
    assert snapshot.bans == ["10.0.0.8"]
    assert (snapshot.next_user_id, snapshot.next_room_id, snapshot.next_message_id) == (3, 3, 8)
    await store.close()


@pytest_twisted.ensureDeferred
async def test_history_is_newest_first_cut_and_oldest_first_returned(make_store):
    store = make_store()
    await store.open()
    for uid, name in [(1, "a"), (2, "b"), (3, "c")]:
        await store.add_user(user(uid, name))
    await store.add_room(Room(1, "r", 1, 1.0))
    for mid in range(1, 11):
        await store.add_message(message(mid, 1 + mid % 2, room_id=1))
    await store.add_message(message(11, 1, recipient_id=2))
    await store.add_message(message(12, 2, recipient_id=1))
    await store.add_message(message(13, 3, recipient_id=2))

    room = await store.room_history(1, 3)
    assert [m.id for m in room] == [8, 9, 10]
    assert [m.id for m in await store.room_history(1, 3, before_id=8)] == [5, 6, 7]
    assert room[0].body == "body 8" and room[0].sender_name == "user1" and room[0].room_id == 1
    assert [m.id for m in await store.direct_history(1, 2, 10)] == [11, 12]
    assert [m.id for m in await store.direct_history(2, 1, 1)] == [12]
    assert [m.id for m in await store.inbox(2, 10)] == [11, 13]

    await store.mark_delivered([11])
    assert [m.id for m in await store.inbox(2, 10, undelivered_only=True)] == [13]
    store, _ = await reopen(store, make_store)
    assert [(m.id, m.delivered) for m in await store.inbox(2, 10)] == [(11, True), (13, False)]
    await store.close()


@pytest_twisted.ensureDeferred
async def test_sqlite_failed_write_fails_alone(tmp_path):
    """A write that breaks a constraint fails its own Deferred; its batch-mates commit."""
    store = SQLiteStore(str(tmp_path / "s.sqlite3"), reactor)
    await store.open()
    await store.add_user(user(1, "alice"))
    duplicate = store.add_user(user(2, "ALICE"))  # same name, case-folded
    fine = store.add_user(user(3, "carol"))
    with pytest.raises(Exception, match="UNIQUE"):
        await duplicate
    await fine
    store, snapshot = await reopen(store, lambda: SQLiteStore(str(tmp_path / "s.sqlite3"), reactor))
    assert [u.username for u in snapshot.users] == ["alice", "carol"]
    await store.close()


@pytest_twisted.ensureDeferred
async def test_sqlite_is_wal_and_migrated(tmp_path):
    import sqlite3

    path = str(tmp_path / "s.sqlite3")
    store = SQLiteStore(path, reactor)
    await store.open()
    await store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert conn.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


@pytest_twisted.ensureDeferred
async def test_sqlite_bad_path_fails_open(tmp_path):
    store = SQLiteStore(str(tmp_path / "missing-dir" / "s.sqlite3"), reactor)
    with pytest.raises(Exception, match="unable to open"):
        await store.open()
