"""One suite, every store (memory, SQLite, PostgreSQL): what is written comes back, after a
reopen too; and what each SQL engine adds: migrations, failures, a database that goes away."""

import os
import re
import shutil
import sqlite3
from contextlib import contextmanager

import attrs
import psycopg
import pytest
import pytest_twisted
from twisted.internet import reactor

from chatserv import errors
from chatserv.model import HistoryBounds, Message, Room, User
from chatserv.store import open_store
from chatserv.store import sqlite as sqlite_store
from chatserv.store.memory import MemoryStore
from chatserv.store.migrations import MIGRATIONS, script
from chatserv.store.postgres import PostgresStore
from chatserv.store.sql import SQLStore, WriterStopped
from chatserv.store.sqlite import SQLiteStore
from tests.support import PostgresOutage


@pytest.fixture
def make_store(store_db):
    """A factory: calling it again reopens the same data (a daemon restart)."""
    if store_db == "memory":
        memory = MemoryStore()
        return lambda: memory
    return lambda: open_store(store_db, reactor)


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
    assert await store.add_user(user(7, "alice")) == 1  # the store gives the ids
    assert await store.add_room(Room(7, "lobby", None, 5.0)) == 1
    assert await store.add_message(message(7, 1, room_id=1)) == 1
    await store.close()


@pytest_twisted.ensureDeferred
async def test_small_tables_survive_a_reopen(make_store):
    store = make_store()
    await store.open()
    alice, bob = user(1, "alice"), user(2, "Bob")
    assert [await store.add_user(alice), await store.add_user(bob)] == [1, 2]
    alice.public_key = "KEY"
    await store.update_user(alice)
    await store.set_contact(1, 2, "friend")
    await store.set_contact(2, 1, "friend")
    await store.set_contact(2, 1, "blocked", before_block="friend")
    assert await store.add_room(Room(1, "lobby", None, 5.0)) == 1
    assert await store.add_room(Room(2, "Games", 1, 6.0, topic="old")) == 2
    await store.update_room(Room(2, "Games", 1, 6.0, topic="new"))
    await store.add_member(2, 1)
    await store.add_member(2, 2)
    await store.add_member(2, 2)  # already a member: nothing changes
    await store.remove_member(2, 2)
    await store.add_ban("10.0.0.9")
    await store.add_ban("10.0.0.8")
    await store.add_ban("10.0.0.8")
    await store.remove_ban("10.0.0.9")
    assert await store.add_message(message(7, 1, room_id=2)) == 1

    store, snapshot = await reopen(store, make_store)
    assert [(u.id, u.username, u.verifier, u.public_key, u.created_at) for u in snapshot.users] == [
        (1, "alice", "verifier-1", "KEY", 1001.0), (2, "Bob", "verifier-2", None, 1002.0)]
    assert sorted(snapshot.contacts) == [(1, 2, "friend", None), (2, 1, "blocked", "friend")]
    rooms = {r.name: r for r in snapshot.rooms}
    assert rooms["Games"].topic == "new" and rooms["Games"].members == {1}
    assert rooms["Games"].created_by == 1 and rooms["lobby"].members == set()
    assert snapshot.bans == ["10.0.0.8"]
    new_ids = [await store.add_user(user(9, "carol")), await store.add_room(Room(9, "more", None, 7.0)),
               await store.add_message(message(9, 1, room_id=2))]
    assert new_ids == [3, 3, 2]  # past every stored id
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
    assert room[0].sent_at == 2008.0 and room[0].delivered is False
    assert [m.id for m in await store.direct_history(1, 2, 10)] == [11, 12]
    assert [m.id for m in await store.direct_history(2, 1, 1)] == [12]
    assert [m.id for m in await store.inbox(2, 10)] == [11, 13]

    await store.mark_delivered([11])
    assert [m.id for m in await store.inbox(2, 10, undelivered_only=True)] == [13]
    store, _ = await reopen(store, make_store)
    assert [(m.id, m.delivered) for m in await store.inbox(2, 10)] == [(11, True), (13, False)]
    await store.close()


@pytest_twisted.ensureDeferred
async def test_conversations_last_message_and_unread_after_the_read_mark(make_store):
    store = make_store()
    await store.open()
    for uid, name in [(1, "a"), (2, "b"), (3, "c")]:
        await store.add_user(user(uid, name))
    for rid in (1, 2, 3):
        await store.add_room(Room(rid, f"r{rid}", 1, 1.0))
    await store.add_message(message(1, 2, recipient_id=1))
    await store.add_message(message(2, 2, recipient_id=1))
    await store.add_message(message(3, 1, recipient_id=2))
    await store.add_message(message(4, 2, recipient_id=1))
    await store.add_message(message(5, 1, recipient_id=3))  # sent, never answered
    await store.add_message(message(6, 2, room_id=1))
    await store.add_message(message(7, 1, room_id=1))
    await store.add_message(message(8, 3, room_id=1))
    await store.add_message(message(9, 2, room_id=2))
    await store.add_message(message(10, 3, recipient_id=2))  # someone else's conversation

    def table(rows):
        return sorted((kind, target, last and last.id, unread) for kind, target, last, unread in rows)

    # No mark: every message received is unread; a room never marked counts none.
    assert table(await store.conversations(1, [1, 2, 3], 100)) == [
        ("room", 1, 8, 0), ("room", 2, 9, 0), ("room", 3, None, 0), ("user", 2, 4, 3), ("user", 3, 5, 0)]
    await store.set_read_mark(1, "user", 2, 2)
    await store.set_read_mark(1, "room", 1, 6)
    await store.set_read_mark(1, "room", 1, 1)  # a mark never moves back
    await store.set_read_mark(1, "room", 3, 0)
    store, _ = await reopen(store, make_store)
    assert table(await store.conversations(1, [1, 3], 100)) == [
        ("room", 1, 8, 1), ("room", 3, None, 0), ("user", 2, 4, 1), ("user", 3, 5, 0)]
    assert table(await store.conversations(2, [], 1)) == [("user", 1, 4, 1), ("user", 3, 10, 1)]
    await store.close()


@pytest_twisted.ensureDeferred
async def test_an_older_database_counts_as_unread_only_what_was_never_delivered(tmp_path):
    import sqlite3

    path = str(tmp_path / "s.sqlite3")
    conn = sqlite3.connect(path)
    conn.executescript(script(MIGRATIONS[0], "sqlite") + "PRAGMA user_version = 1;")
    conn.executemany("INSERT INTO users VALUES (?, ?, ?, '1', 'v', 0, NULL)", [(1, "a", "a"), (2, "b", "b")])
    conn.executemany("INSERT INTO messages (id, sender_id, sender_name, recipient_id, body, kind, sent_at,"
                     " delivered) VALUES (?, 2, 'b', 1, 'hi', 'text', 0, ?)", [(1, 1), (2, 1), (3, 0)])
    conn.commit()
    conn.close()
    store = SQLiteStore(path, reactor)
    await store.open()
    [(_, _, last, unread)] = await store.conversations(1, [], 100)
    assert (last.id, unread) == (3, 1)
    await store.close()


@pytest_twisted.ensureDeferred
async def test_login_tokens_survive_a_reopen_until_removed(make_store):
    store = make_store()
    await store.open()
    await store.add_user(user(1, "a"))
    await store.save_token("d1", 1, 10.0, 10.0)
    await store.save_token("d2", 1, 11.0, 11.0)
    await store.save_token("d1", 1, 10.0, 50.0)  # a later use
    await store.remove_token("d2")
    store, snapshot = await reopen(store, make_store)
    assert snapshot.tokens == [("d1", 1, 10.0, 50.0)]
    await store.close()


@pytest_twisted.ensureDeferred
async def test_the_guest_counter_the_salt_secret_and_a_vanished_rooms_messages(make_store):
    store = make_store()
    first = await store.open()
    assert len(first.salt_secret) == 32
    assert [store.new_guest_id() for _ in range(3)] == [-1, -2, -3]
    await store.add_user(user(1, "a"))
    assert await store.add_room(Room(1, "kept", 1, 1.0)) == 1
    assert await store.add_room(Room(9, "guests'", None, 1.0, persistent=False)) == 2  # numbered, not stored
    for mid in (1, 2):
        await store.add_message(message(mid, 1, room_id=2))
    await store.add_message(message(3, 1, room_id=1))

    store, snapshot = await reopen(store, make_store)
    fresh = store.new_guest_id()  # never one handed out before (a shared store: from a new block)
    assert (fresh == -4 if getattr(store, "guest_id_block", 1) == 1 else fresh < -3)
    assert snapshot.salt_secret == first.salt_secret
    assert [r.name for r in snapshot.rooms] == ["kept"]
    assert await store.add_room(Room(1, "later", 1, 1.0)) == 3  # past every room id a message names
    await store.forget_room_messages(2)
    assert await store.room_history(2, 10) == [] and [m.id for m in await store.room_history(1, 10)] == [3]
    await store.close()


@pytest_twisted.ensureDeferred
async def test_nodes_sharing_a_postgresql_store_never_hand_out_the_same_guest_id(postgresql_url):
    first, second = open_store(postgresql_url, reactor), open_store(postgresql_url, reactor)
    await first.open()
    await second.open()
    block = first.guest_id_block
    ids = [store.new_guest_id() for _ in range(block) for store in (first, second)]
    assert len(set(ids)) == len(ids) and max(ids) < 0  # a whole block each, none in common
    await first.close()
    await second.close()


@pytest_twisted.ensureDeferred
async def test_a_write_committed_with_others_fails_alone(sql_db):
    """A write that breaks a constraint fails its own Deferred; its batch-mates commit."""
    store = open_store(sql_db, reactor)
    await store.open()
    await store.add_user(user(1, "alice"))
    duplicate = store.add_user(user(2, "ALICE"))  # same name, case-folded
    fine = store.add_user(user(3, "carol"))
    with pytest.raises(Exception, match="(?i)unique"):
        await duplicate
    await fine
    store, snapshot = await reopen(store, lambda: open_store(sql_db, reactor))
    assert [u.username for u in snapshot.users] == ["alice", "carol"]
    await store.close()


def tables(db) -> dict[str, list[str]]:
    """Each table's columns, in order, as the engine's catalogue lists them."""
    if db.startswith("postgresql://"):
        with psycopg.connect(db) as conn:
            rows = conn.execute(
                "SELECT table_name, column_name FROM information_schema.columns"
                " WHERE table_schema = 'public' AND table_name != 'schema_version'"
                " ORDER BY table_name, ordinal_position").fetchall()
    else:
        conn = sqlite3.connect(db)
        rows = [(table, column) for (table,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            for _, column, *_ in conn.execute(f"PRAGMA table_info({table})")]
        conn.close()
    found = {}
    for table, column in rows:
        found.setdefault(table, []).append(column)
    return found


@pytest_twisted.ensureDeferred
async def test_every_migration_gives_both_engines_the_same_tables(tmp_path, postgresql_url):
    schemas = []
    for db in (str(tmp_path / "chat.sqlite3"), postgresql_url):
        store = open_store(db, reactor)
        await store.open()
        await store.close()
        schemas.append(tables(db))
    assert schemas[0] == schemas[1] and "messages" in schemas[0]


# What SQLite reads and PostgreSQL reads otherwise, or not at all (see migrations.py).
ONE_ENGINE_SQL = re.compile(r"\bREAL\b|\bBLOB\b|AUTOINCREMENT|WITHOUT ROWID|INSERT OR|\bPRAGMA\b", re.I)


def test_a_step_both_engines_share_is_sql_both_read_alike():
    """PostgreSQL's REAL is 4 bytes (a time loses its seconds) and BLOB, WITHOUT ROWID or
    INSERT OR are SQLite's: a step using them needs PerEngine."""
    shared = [number for number, step in enumerate(MIGRATIONS, 1) if isinstance(step, str)]
    assert shared and [n for n in shared if ONE_ENGINE_SQL.search(MIGRATIONS[n - 1])] == []


def set_schema_version(db, version):
    if db.startswith("postgresql://"):
        with psycopg.connect(db) as conn:
            conn.execute("UPDATE schema_version SET version = %s", (version,))
    else:
        conn = sqlite3.connect(db)
        conn.execute(f"PRAGMA user_version = {version}")
        conn.close()


@pytest_twisted.ensureDeferred
async def test_a_database_from_a_newer_chatserv_is_refused(sql_db):
    store = open_store(sql_db, reactor)
    await store.open()
    await store.close()
    set_schema_version(sql_db, len(MIGRATIONS) + 1)
    with pytest.raises(errors.StoreUnavailable, match=f"version {len(MIGRATIONS) + 1}, newer"):
        await open_store(sql_db, reactor).open()


@pytest_twisted.ensureDeferred
async def test_sqlite_is_wal_and_migrated(tmp_path):
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
    with pytest.raises(errors.StoreUnavailable, match="unable to open"):
        await store.open()
    await store.close()  # ends at once: no writer to wait for


@pytest.mark.parametrize("breaks", [
    {"body": "\ud800"},  # a lone surrogate: UTF-8 cannot encode it (UnicodeEncodeError)
    {"sent_at": 2**64},  # too big for an SQLite integer (OverflowError)
    {"kind": object()},  # a value sqlite3 cannot bind at all (ProgrammingError)
], ids=["surrogate", "overflow", "unbindable"])
@pytest_twisted.ensureDeferred
async def test_whatever_one_write_raises_fails_it_alone_and_the_writer_goes_on(sql_db, breaks):
    if "sent_at" in breaks and sql_db.startswith("postgresql://"):
        pytest.skip("PostgreSQL stores 2**64 as a double precision time")
    store = open_store(sql_db, reactor)
    await store.open()
    await store.add_user(user(1, "alice"))
    await store.add_room(Room(1, "r", 1, 1.0))
    alone = store.add_message(attrs.evolve(message(1, 1, room_id=1), **breaks))
    with pytest.raises(Exception):  # noqa: B017 - each value fails in its own way
        await alone
    assert (await store.add_message(message(2, 1, room_id=1))) == 2  # acknowledged (id 1 is a gap)
    before = store.add_message(message(3, 1, room_id=1))  # in one batch with a bad write
    batched = store.add_message(attrs.evolve(message(4, 1, room_id=1), **breaks))
    after = store.add_message(message(5, 1, room_id=1))
    await before
    with pytest.raises(Exception):  # noqa: B017
        await batched
    await after
    assert [m.id for m in await store.room_history(1, 10)] == [2, 3, 5]
    store, _ = await reopen(store, lambda: open_store(sql_db, reactor))
    assert [m.id for m in await store.room_history(1, 10)] == [2, 3, 5]
    await store.close()


class Injected(BaseException):
    """Stands for whatever could still stop the writer thread (the code catches every Exception)."""


@pytest.mark.allow_log_errors  # the store logs why its writer stopped
@pytest_twisted.ensureDeferred
async def test_a_writer_that_stops_anyway_fails_every_waiting_write_and_still_closes(sql_db, monkeypatch):
    def apply(self, conn, statements):
        if any("doomed" in map(str, params) for _, params in statements):
            raise Injected()
        return original(self, conn, statements)

    original = SQLStore._apply
    monkeypatch.setattr(SQLStore, "_apply", apply)
    store = open_store(sql_db, reactor)
    await store.open()
    await store.add_user(user(1, "alice"))
    broken = store.when_broken()
    doomed = store.add_message(attrs.evolve(message(1, 1, recipient_id=1), body="doomed"))
    with pytest.raises(WriterStopped):
        await doomed
    assert isinstance(await broken, Injected)
    assert isinstance(await store.when_broken(), Injected)  # asked after the fact: told at once
    with pytest.raises(WriterStopped):
        await store.add_message(message(2, 1, recipient_id=1))
    await store.close()


async def sqlite_with_one_message(path) -> SQLiteStore:
    """An open SQLite store at ``path`` holding alice, her room 1 and one message in it."""
    store = SQLiteStore(str(path), reactor)
    await store.open()
    await store.add_user(user(1, "alice"))
    await store.add_room(Room(1, "r", 1, 1.0))
    await store.add_message(message(1, 1, room_id=1))
    return store


@contextmanager
def main_file_copied(path, copy):
    """A connection to a copy of the database's main file alone, without the WAL beside it."""
    shutil.copyfile(path, copy)
    conn = sqlite3.connect(copy)
    try:
        yield conn
    finally:
        conn.close()


@pytest_twisted.ensureDeferred
async def test_sqlite_close_leaves_the_main_file_a_complete_backup(tmp_path):
    """Both connections closed and the WAL checkpointed: a copy of the one file has everything."""
    path = tmp_path / "s.sqlite3"
    store = await sqlite_with_one_message(path)
    assert [m.id for m in await store.room_history(1, 10)] == [1]  # the reader has a connection
    await store.close()
    backup = tmp_path / "backup" / "copy.sqlite3"
    backup.parent.mkdir()
    with main_file_copied(path, backup) as conn:
        assert conn.execute("SELECT username FROM users").fetchall() == [("alice",)]
        assert conn.execute("SELECT body FROM messages").fetchall() == [("body 1",)]
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert not os.path.exists(f"{path}-wal") or os.path.getsize(f"{path}-wal") == 0


@pytest_twisted.ensureDeferred
async def test_sqlite_checkpoints_into_the_main_file_while_the_writer_goes_on(tmp_path, monkeypatch):
    """Without waiting for the WAL to reach SQLite's own threshold, nor for a close: the
    reader thread has copied the committed messages into the main file."""
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_EVERY", 0)  # after every commit
    path = tmp_path / "s.sqlite3"
    store = await sqlite_with_one_message(path)
    await store.room_history(1, 10)  # a read, queued on the reader thread after the checkpoint
    with main_file_copied(path, tmp_path / "copy.sqlite3") as conn:
        assert conn.execute("SELECT body FROM messages").fetchall() == [("body 1",)]
    await store.close()


@pytest_twisted.ensureDeferred
async def test_ranges_and_last_seen(make_store):
    """What CHATHISTORY, znc playback and the join-time replay read, alike on both stores."""
    store = make_store()
    await store.open()
    for uid, name in [(1, "a"), (2, "b"), (3, "c")]:
        await store.add_user(user(uid, name))
    await store.add_room(Room(1, "r", 1, 1.0))
    await store.add_room(Room(2, "s", 1, 1.0))
    for mid in range(1, 11):  # sent at 2001.0 .. 2010.0
        await store.add_message(message(mid, 1, room_id=1))
    await store.add_message(message(11, 1, recipient_id=2))
    await store.add_message(message(12, 3, recipient_id=1))
    await store.add_message(message(13, 2, recipient_id=3))
    await store.add_message(message(14, 2, room_id=2))

    def ids(found):
        return [m.id for m in found]

    assert ids(await store.message_range(HistoryBounds(), 3, room_id=1)) == [8, 9, 10]
    assert ids(await store.message_range(HistoryBounds(after_id=3, before_id=9), 3, room_id=1)) == [6, 7, 8]
    assert ids(await store.message_range(HistoryBounds(after_id=3, before_id=9, oldest=True), 3,
                                         room_id=1)) == [4, 5, 6]
    assert ids(await store.message_range(HistoryBounds(since=2004.0, until=2006.0), 10, room_id=1)) == [4, 5]
    assert ids(await store.message_range(HistoryBounds(), 10, pair=(2, 1))) == [11]
    assert ids(await store.message_range(HistoryBounds(oldest=True), 10, pair=(1, 3))) == [12]
    # around a point, in one read: (limit - 1) // 2 before it, the rest from it on
    assert ids(await store.message_range(HistoryBounds(around_id=5), 4, room_id=1)) == [4, 5, 6, 7]
    assert ids(await store.message_range(HistoryBounds(around=2002.0), 4, room_id=1)) == [1, 2, 3, 4]
    assert ids(await store.message_range(HistoryBounds(around_id=10, after_id=8), 5, room_id=1)) == [9, 10]
    assert ids(await store.message_range(HistoryBounds(around_id=11), 1, pair=(1, 2))) == [11]

    assert await store.last_seen(1) == {}
    await store.set_last_seen(1, 1, 7)
    await store.set_last_seen(1, 1, 5)  # never back
    await store.set_last_seen(1, 2, 14)
    await store.set_last_seen(2, 1, 3)
    store, _ = await reopen(store, make_store)
    assert await store.last_seen(1) == {1: 7, 2: 14}
    await store.close()


@pytest_twisted.ensureDeferred
async def test_sqlite_history_reads_use_an_index_in_the_order_they_return(tmp_path, monkeypatch):
    """A room read bounded by a time, and a direct conversation's read, walk an index in the
    order they return: none reads or sorts the whole conversation."""
    path = str(tmp_path / "plan.sqlite3")
    store = SQLiteStore(path, reactor)
    await store.open()
    read = []
    monkeypatch.setattr(store, "_read", lambda sql, params, convert=None: read.append((sql, params)))
    store.message_range(HistoryBounds(until=2005.0), 50, room_id=1)
    store.message_range(HistoryBounds(since=2005.0, oldest=True), 50, room_id=1)
    store.message_range(HistoryBounds(around=2005.0), 50, room_id=1)
    store.message_range(HistoryBounds(before_id=9), 50, pair=(1, 2))
    store.direct_history(1, 2, 50)
    await store.close()
    conn = sqlite3.connect(path)
    for sql, params in read:
        plan = list(conn.execute("EXPLAIN QUERY PLAN " + sql, params))
        reads = [step for _, _, _, step in plan if re.match(r"(SCAN|SEARCH) messages\b", step)]
        assert reads and all(step.startswith("SEARCH messages USING INDEX") for step in reads), plan
        assert ("room_id = ?" in sql) == all("messages_room_time" in step for step in reads), plan
        # What is sorted is the few rows the sides returned, never a query that reads messages.
        reading = {parent for _, parent, _, step in plan if step in reads}
        assert not any(parent in reading for _, parent, _, step in plan if "TEMP B-TREE" in step), plan
    conn.close()


@pytest_twisted.ensureDeferred
async def test_sqlite_names_are_keyed_as_irc_ascii_casemapping(tmp_path):
    """Migration 2 rewrites keys made with Unicode casefolding: #Straße and #STRASSE are two."""
    path = str(tmp_path / "s.sqlite3")
    conn = sqlite3.connect(path)
    conn.executescript(script(MIGRATIONS[0], "sqlite") + "PRAGMA user_version = 1;")
    conn.execute("INSERT INTO rooms (id, name, name_key, created_at) VALUES (1, ?, 'strasse', 1.0)",
                 ("Stra\u00dfe",))
    conn.commit()
    conn.close()
    store = SQLiteStore(path, reactor)
    await store.open()
    await store.add_room(Room(2, "STRASSE", None, 2.0))
    store, snapshot = await reopen(store, lambda: SQLiteStore(path, reactor))
    assert sorted(r.name for r in snapshot.rooms) == ["STRASSE", "Stra\u00dfe"]
    await store.close()


@pytest_twisted.ensureDeferred
async def test_postgresql_unreachable_fails_open_with_where_and_why(unused_port):
    store = PostgresStore(f"postgresql://chat@127.0.0.1:{unused_port}/chat", reactor)
    with pytest.raises(errors.StoreUnavailable) as failed:
        await store.open()
    where = f"PostgreSQL database 'chat' at 127.0.0.1:{unused_port}"
    assert str(failed.value).startswith(f"{where} is unreachable")
    assert "refused" in str(failed.value) and "\n" not in str(failed.value)
    assert failed.value.message == "storage unavailable, try again later"  # all a client is told


@pytest_twisted.ensureDeferred
async def test_postgresql_ids_come_from_the_sequences_every_node_shares(postgresql_url):
    """An id another node (here: a plain INSERT) took from a sequence is never handed out again."""
    store = PostgresStore(postgresql_url, reactor)
    await store.open()
    assert [await store.add_user(user(9, f"u{n}")) for n in range(3)] == [1, 2, 3]
    with psycopg.connect(postgresql_url) as conn:
        (by_sequence,) = conn.execute(
            "INSERT INTO users (username, username_key, salt, created_at) VALUES ('s', 's', '1', 1)"
            " RETURNING id").fetchone()
    assert by_sequence == 4
    assert await store.add_user(user(9, "next")) == 5
    store, _ = await reopen(store, lambda: PostgresStore(postgresql_url, reactor))
    assert await store.add_user(user(9, "after")) == 6
    await store.close()


@pytest_twisted.ensureDeferred
async def test_postgresql_a_busy_node_hands_out_a_reserved_block_unique_across_nodes(postgresql_url):
    """Under load, id assignment costs no query for most batches; ids stay unique across nodes."""
    node_a, node_b = PostgresStore(postgresql_url, reactor), PostgresStore(postgresql_url, reactor)
    await node_a.open()
    await node_b.open()
    with psycopg.connect(postgresql_url, autocommit=True) as conn:
        first = node_a._take_ids(conn, "messages", 40)
        from_b = node_b._take_ids(conn, "messages", 40)
        (outside,) = conn.execute("SELECT nextval(pg_get_serial_sequence('messages', 'id'))").fetchone()
        second = node_a._take_ids(conn, "messages", 40)
        assert second[0] == first[-1] + 1  # from its block: no other node took these
        assert len({*first, *second, *from_b, outside}) == 121
        reserved_at = node_a._clock()
        node_a._clock = lambda: reserved_at + 60
        assert node_a._take_ids(conn, "messages", 1)[0] > max(from_b[-1], outside)  # an old block is skipped
    await node_a.close()
    await node_b.close()


@pytest_twisted.ensureDeferred
async def test_postgresql_going_away_fails_writes_and_the_store_reconnects_by_itself(
        postgresql_url, postgresql_admin):
    store = PostgresStore(postgresql_url, reactor)
    await store.open()
    await store.add_user(user(1, "alice"))
    assert await store.inbox(1, 10) == []

    # The connections end: the write that finds out fails, and nothing acknowledges it...
    outage = PostgresOutage(postgresql_admin, postgresql_url)
    outage.end_connections()
    with pytest.raises(errors.StoreUnavailable, match="is unavailable"):
        await store.add_user(user(2, "lost"))
    # ...the next write and read go out on new connections.
    carol = await store.add_user(user(3, "carol"))
    assert await store.inbox(1, 10) == []

    # The server is gone: every write and read fails, clearly, until it is back.
    outage.begin()
    for attempt in range(2):
        with pytest.raises(errors.StoreUnavailable):
            await store.add_message(message(attempt + 1, 1, recipient_id=carol))
    with pytest.raises(errors.StoreUnavailable, match="is unreachable"):
        await store.inbox(carol, 10)
    outage.end()
    stored = await store.add_message(message(3, 1, recipient_id=carol))
    assert [m.id for m in await store.inbox(carol, 10)] == [stored]

    store, snapshot = await reopen(store, lambda: PostgresStore(postgresql_url, reactor))
    assert [u.username for u in snapshot.users] == ["alice", "carol"]
    await store.close()


@pytest_twisted.ensureDeferred
async def test_postgresql_a_bad_message_in_a_batch_fails_alone(postgresql_url):
    """A batch of room messages goes out as one COPY; one that cannot be stored fails alone, and
    a text PostgreSQL cannot hold (NUL) is the sender's error, not the server's."""
    store = PostgresStore(postgresql_url, reactor)
    await store.open()
    with psycopg.connect(postgresql_url) as holder:
        holder.execute("LOCK TABLE messages")  # the first write waits: the rest queue up as one batch
        first = store.add_message(message(1, 1, room_id=1))
        queued = [store.add_message(message(mid, 1, room_id=1)) for mid in range(2, 22)]
        nul = store.add_message(attrs.evolve(message(30, 1, room_id=1), body="a\x00b"))
        late = store.add_message(message(31, 1, room_id=1))
    await first
    for stored in queued:
        await stored
    with pytest.raises(errors.Invalid, match="cannot store"):
        await nul
    await late
    history = await store.room_history(1, 100)
    assert [m.id for m in history] == [*range(1, 22), 23]  # the NUL one's id 22 is a gap
    await store.close()
