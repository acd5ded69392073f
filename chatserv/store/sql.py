"""What the SQL stores share: one writer thread with group commit, reader threads, the
statements and the snapshot load. ``sqlite.py`` and ``postgres.py`` add their connections and
the few places where the engines differ.

Writes queue up while a transaction commits and then go out together in the next one, so
persistence keeps pace with fan-out. Every Deferred fires on the reactor thread once its
write is committed; no query ever runs on the reactor thread. Whatever one write raises
fails that write alone: the rest of its batch commits (one whose text the database cannot
hold fails with ``Invalid``, as input should). A write that finds the database gone fails
with ``StoreUnavailable`` (nothing was stored, so nothing is acknowledged); an engine whose
connection can be lost opens a new one for the next batch. Should the writer thread stop all
the same, every waiting write fails, ``when_broken`` fires and ``close`` still ends.

Statements are written once, with sqlite3's ``?`` or ``:name`` placeholders, in SQL that both
engines read alike (``ON CONFLICT``, ``TRUE``/``FALSE``, ``CAST``, an alias on every subquery);
an engine translates the placeholders for its driver.

Ids: the store gives every new user, room and message its id, and the write's Deferred fires
with it. Here (SQLite: the one writer is in this process) ids are counted from past the highest
stored one on the reactor thread (``_id``), so the writer thread does no per-row work for them.
PostgreSQL's inserts name a ``NewId`` as their first parameter instead, and its writer swaps in
``nextval`` of each table's identity sequence as the batch commits (``_assign_ids`` in
``postgres.py``); sequences are not transactional, so ids stay unique across nodes and are
never reused (a rolled-back insert leaves a gap). A room
that is not stored (a guest's) still takes its id from the rooms' counter, since its messages
are stored. Guest ids count down from the
lowest ever handed out (``counters``), so none is reused across restarts.
"""

from __future__ import annotations

import json
import queue
import secrets
import threading
import time
from contextlib import closing
from itertools import chain, groupby
from operator import itemgetter

from twisted.internet.defer import Deferred, fail, gatherResults
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from chatserv.errors import Invalid, StoreUnavailable
from chatserv.model import HistoryBounds, Message, Room, RoomBan, Snapshot, User, fold
from chatserv.store.base import IStore

log = Logger()

_STOP = object()


class NewId:
    """In a write's parameters (always first): the id the store gives the new row of ``table``."""

    __slots__ = ("table",)

    def __init__(self, table: str):
        self.table = table


NEW_USER, NEW_ROOM, NEW_MESSAGE = NewId("users"), NewId("rooms"), NewId("messages")
_ID_ONLY = None  # the SQL of a write that only takes an id (a room that is not stored)
_STATEMENTS, _SQL, _PARAMS = itemgetter(0), itemgetter(0), itemgetter(1)
_MAX_BATCH = 2000
# Ids a PostgreSQL writer under load reserves ahead (postgres.py), handed out over the next
# batches: one node's messages may be stored this far (plus a batch) below another's newer ids.
ID_BLOCK = 8192
IDS_OUT_OF_ORDER = ID_BLOCK + _MAX_BATCH  # between nodes, in id, at most
MESSAGE_COLUMNS = "id, sender_id, sender_name, body, sent_at, kind, recipient_id, room_id, delivered"
_INSERT_MESSAGE = f"INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
# Tables whose ids the store hands out.
ID_TABLES = ("users", "rooms", "messages")

# The Room fields after ``members`` that are stored with the room, in the order of their columns.
ROOM_SETTINGS = ("topic_by", "topic_at", "invite_only", "key", "limit", "moderated", "secret", "no_external",
                 "topic_locked")
_ROOM_SETTING_COLUMNS = ("topic_by, topic_at, invite_only, room_key, member_limit, moderated, secret,"
                         " no_external, topic_locked")
_ROOM_SETTING_UPDATE = ("topic_by = ?, topic_at = ?, invite_only = ?, room_key = ?, member_limit = ?,"
                        " moderated = ?, secret = ?, no_external = ?, topic_locked = ?")
_ROOM_FLAGS = {"invite_only", "moderated", "secret", "no_external", "topic_locked"}
_ROOMS = f"SELECT id, name, created_by, created_at, topic, {_ROOM_SETTING_COLUMNS} FROM rooms"


def _room(row) -> Room:
    settings = {field: bool(value) if field in _ROOM_FLAGS else value
                for field, value in zip(ROOM_SETTINGS, row[5:], strict=True)}
    return Room(*row[:5], **settings)
_LAST_MESSAGE_COLUMNS = ("m.id, m.sender_id, m.sender_name, m.body, m.sent_at, m.kind, m.recipient_id,"
                         " m.room_id, m.delivered")
def _conversations(json_ids: str) -> str:
    """Every conversation of :user: direct ones (the other party, the newest message either way,
    the unread ones received after the read mark) and the rooms in :rooms, a JSON array that
    ``json_ids`` (an engine's SQL constant) turns into rows."""
    return f"""
WITH peers(peer, last_id) AS (
    SELECT CASE WHEN sender_id = :user THEN recipient_id ELSE sender_id END, MAX(id) FROM messages
    WHERE recipient_id = :user OR (sender_id = :user AND recipient_id IS NOT NULL) GROUP BY 1),
listed(room) AS (SELECT CAST(r.value AS BIGINT) FROM {json_ids} AS r),
rooms(room, last_id, mark) AS (
    SELECT room, (SELECT MAX(id) FROM messages WHERE room_id = room),
           (SELECT last_read_id FROM read_marks
            WHERE user_id = :user AND kind = 'room' AND target_id = room)
    FROM listed)
SELECT 'user', peer, (SELECT COUNT(*) FROM (SELECT 1 FROM messages
        WHERE recipient_id = :user AND sender_id = peer AND sender_id != :user AND id > COALESCE(
            (SELECT last_read_id FROM read_marks
             WHERE user_id = :user AND kind = 'user' AND target_id = peer), 0)
        LIMIT :cap) AS unread), {_LAST_MESSAGE_COLUMNS}
FROM peers JOIN messages AS m ON m.id = peers.last_id
UNION ALL
SELECT 'room', room, CASE WHEN mark IS NULL THEN 0 ELSE (SELECT COUNT(*) FROM (SELECT 1 FROM messages
        WHERE room_id = room AND id > mark AND sender_id != :user LIMIT :cap) AS unread) END,
    {_LAST_MESSAGE_COLUMNS}
FROM rooms LEFT JOIN messages AS m ON m.id = rooms.last_id
"""


_BY_ID, _BY_ID_DESC = " ORDER BY id", " ORDER BY id DESC"
_BY_TIME, _BY_TIME_DESC = " ORDER BY sent_at, id", " ORDER BY sent_at DESC, id DESC"


def _first(where, sides, params, order, limit):
    """SQL and its parameters: the first ``limit`` messages in ``order`` of those ``where``
    picks for any of ``sides`` (each side's leading parameters; ``params`` follow). Each side
    is its own limited read, so each uses its index; several are merged and cut again."""
    one = ("SELECT * FROM (SELECT " + MESSAGE_COLUMNS + " FROM messages WHERE " + where + order
           + " LIMIT ?) AS side")
    values = [v for side in sides for v in (*side, *params, limit)]
    if len(sides) == 1:
        return one, values
    merged = "SELECT * FROM (" + " UNION ALL ".join([one] * len(sides)) + order + " LIMIT ?) AS merged"
    return merged, [*values, limit]


def _message(row) -> Message:
    return Message(
        id=row[0],
        sender_id=row[1],
        sender_name=row[2],
        body=row[3],
        sent_at=row[4],
        kind=row[5],
        recipient_id=row[6],
        room_id=row[7],
        delivered=bool(row[8]),
    )


class WriterStopped(RuntimeError):
    """The writer thread is gone: no write can be acknowledged any more."""


class _DaemonThreadPool(ThreadPool):
    """Reader threads, like the writer, never keep the process alive at exit."""

    def threadFactory(self, *args, **kwargs):
        return threading.Thread(*args, daemon=True, **kwargs)


@implementer(IStore)
class SQLStore:
    """The engine-neutral part; a subclass provides the hooks under "engine" below.

    A queued write is ``(statements, deferred, new)``: ``new`` is the id of the row it makes
    (or a ``NewId`` the writer replaces), None if it makes none.

    The writer thread keeps its per-row Python to a minimum: while it runs bytecode it holds
    the GIL, and a reactor thread waiting for the GIL waits out the whole switch interval.
    Batches are flattened and grouped into ``executemany`` runs by C iterators, and each
    batch's Deferreds are fired on the reactor thread (``_fire``).
    """

    engine: str  # the key of this engine's SQL in ``migrations.PerEngine``
    reader_threads = 1
    refused_values: tuple[type[Exception], ...] = ()  # the driver's "this value cannot be stored"
    json_ids = "json_each(:rooms)"  # rows whose ``value`` is each element of the JSON array :rooms

    def __init__(self, reactor):
        self._reactor = reactor
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._closed: Deferred | None = None
        self._readers = _DaemonThreadPool(minthreads=1, maxthreads=self.reader_threads,
                                          name=f"chatserv-{self.engine}-read")
        self._reader_local = threading.local()
        self._reader_conns: set = set()
        self._reader_lock = threading.Lock()
        self._conversations = _conversations(self.json_ids)
        self._conn = None  # the writer's connection: only the writer thread touches it
        self._batch: list = []  # the writes the writer thread is committing
        self._stopped: Failure | None = None  # why the writer thread stopped, if it did unasked
        self._broken: list[Deferred] = []
        self._next: dict[str, int] = {}  # the next id of each of ID_TABLES (the reactor thread's)
        self._last_guest_id = 0  # the lowest guest id handed out (the reactor thread's)
        self._guest_blocks: list[tuple[int, int]] = []  # claimed guest ids (guest_id_block > 1)

    # engine

    def _connect(self):
        """A new connection; StoreUnavailable if the database cannot be reached."""
        raise NotImplementedError

    def _migrate(self, conn):
        raise NotImplementedError

    def _transaction(self, conn):
        """A context manager: one transaction that commits at the end or rolls back on error."""
        raise NotImplementedError

    def _lost(self, conn) -> bool:
        """Has ``conn`` lost its database (after an error)?"""
        return False

    def _sql(self, sql: str) -> str:
        """A statement written with ``?`` or ``:name`` placeholders, as this engine's driver
        takes it."""
        return sql

    def _next_ids(self, conn) -> dict[str, int]:
        """The next id of each of ``ID_TABLES``: past every stored one."""
        free = {table: self._query(conn, f"SELECT COALESCE(MAX(id), 0) + 1 FROM {table}")[0][0]
                for table in ID_TABLES}
        # A room that was never stored (a guest's) may have left messages behind in a crash:
        # room ids are never reused, so they never show up in a new room.
        (last_room_message,) = self._query(
            conn, "SELECT COALESCE(MAX(room_id), 0) FROM messages WHERE room_id IS NOT NULL")[0]
        free["rooms"] = max(free["rooms"], last_room_message + 1)
        return free

    def _id(self, new: NewId):
        """What a new row's insert names as its id (on the reactor thread): counted here, where
        this process holds the database's only writer."""
        table = new.table
        self._next[table] = (taken := self._next[table]) + 1
        return taken

    def _assign_ids(self, conn, batch):
        """In the writer thread, before ``batch`` is applied: the batch as it goes to the
        database. Here every write already names its ids."""
        return batch

    def _describe(self) -> str:
        """The database, for log lines (never a password)."""
        raise NotImplementedError

    # life cycle

    guest_id_block = 1  # guest ids a node claims at once: more than one where nodes share the store

    def open(self):
        opened = Deferred()
        self._writer = threading.Thread(
            target=self._write_loop, args=(opened,), name=f"chatserv-{self.engine}-write", daemon=True
        )
        self._writer.start()
        return opened

    def close(self):
        """Finish the queued writes, then stop the readers and close every connection (the
        writer thread does that: no database I/O on the reactor thread)."""
        if self._closed is None:
            self._closed = Deferred()
            if self._writer is None or self._stopped is not None:  # no writer left: nothing to wait for
                self._stop_readers()
                self._closed.callback(None)
            else:
                self._queue.put(_STOP)
        return self._closed

    def when_broken(self) -> Deferred:
        """Deferred[BaseException]: fires, with what stopped it, if the writer thread stops
        unasked (never on a healthy store)."""
        d = Deferred()
        if self._stopped is not None:
            d.callback(self._stopped.value)
        else:
            self._broken.append(d)
        return d

    def _open_failed(self, opened: Deferred, failure: Failure):
        self._writer = None
        if self._closed is not None and not self._closed.called:
            self._closed.callback(None)
        opened.errback(failure)

    def _write_loop(self, opened: Deferred):
        conn = None
        try:
            conn = self._connect()
            self._migrate(conn)
            self._make_secrets(conn)
            snapshot = self._load(conn)
        except Exception:
            failure = Failure()
            if conn is not None:
                conn.close()
            self._reactor.callFromThread(self._open_failed, opened, failure)
            return
        self._reactor.callFromThread(self._start_readers)
        self._reactor.callFromThread(opened.callback, snapshot)
        self._conn = conn
        try:
            self._serve()
        except BaseException:
            self._reactor.callFromThread(self._writer_stopped, Failure())
            if self._conn is not None:
                try:
                    self._conn.close()
                except Exception:
                    pass  # already broken: the failure above says why
            return
        self._shut_down()

    def _serve(self):
        """Commit batches until told to stop."""
        while True:
            item = self._queue.get()
            stopping = item is _STOP
            self._batch = batch = [] if stopping else [item]
            while len(batch) < _MAX_BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stopping = True
                    continue
                batch.append(more)
            if batch:
                self._conn = self._commit(self._conn, batch)
            self._batch = []
            if stopping:
                return

    def _writer_stopped(self, failure: Failure):
        """The writer thread died: fail what waits for it, and say so."""
        log.failure("store: the writer thread stopped; no write can be stored any more", failure)
        self._stopped = failure
        waiting = [d for _, d, _ in self._batch]
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                waiting.append(item[1])
        for d in waiting:
            if not d.called:
                d.errback(WriterStopped("the store's writer thread stopped"))
        broken, self._broken = self._broken, []
        for d in broken:
            d.callback(failure.value)
        if self._closed is not None and not self._closed.called:
            self._stop_readers()
            self._closed.callback(None)

    def _start_readers(self):
        if self._closed is None:  # not closed while it opened
            self._readers.start()

    def _make_secrets(self, conn):
        """The salt secret is made at the first start; whoever inserts it first wins, so every
        node gets the same one."""
        conn.execute(self._sql("INSERT INTO secrets (name, value) VALUES ('salt', ?) ON CONFLICT DO NOTHING"),
                     (secrets.token_bytes(32),))

    def _commit(self, conn, batch):
        """Commit a whole batch in one transaction; on failure retry each write alone.

        Returns the connection for the next batch: None once the database is gone, and a new
        one is opened for the next batch.
        """
        try:
            if conn is None:
                conn = self._connect()
                self._reactor.callFromThread(log.info, "store: connected to {db} again", db=self._describe())
            batch = self._assign_ids(conn, batch)
            self._apply(conn, list(chain.from_iterable(map(_STATEMENTS, batch))))
            self._reactor.callFromThread(_fire, batch)
        except Exception:
            failure = Failure()
            if conn is None or self._lost(conn):
                conn = self._forget_writer(conn, failure)
                self._reactor.callFromThread(_fire, batch, self._unavailable(failure))
            elif len(batch) == 1:
                self._reactor.callFromThread(_fire, batch, self._refused(failure))
            else:
                conn = self._commit_each(conn, batch)
        return conn

    def _commit_each(self, conn, batch):
        """After a batch failed: each write in its own transaction, so only a bad one fails
        (with the ids it was given: a failed one leaves a gap)."""
        gone = None
        for write in batch:
            if gone is not None:
                self._reactor.callFromThread(_fire, [write], gone)
                continue
            try:
                [write] = self._assign_ids(conn, [write])
                self._apply(conn, write[0])
                self._reactor.callFromThread(_fire, [write])
            except Exception:
                failure = Failure()
                if self._lost(conn):
                    conn = self._forget_writer(conn, failure)
                    failure = gone = self._unavailable(failure)
                self._reactor.callFromThread(_fire, [write], self._refused(failure))
        return conn

    def _refused(self, failure: Failure) -> Failure:
        """Text the database cannot hold is input, not a fault: the sender gets its port's
        error reply. Any other failure stays as it is."""
        if failure.check(UnicodeEncodeError, *self.refused_values):
            return Failure(Invalid("text holds a character the database cannot store"))
        return failure

    def _apply(self, conn, statements):
        """``statements`` in one transaction; consecutive ones with the same SQL (a batch of
        room messages) as one ``executemany``."""
        with self._transaction(conn), closing(conn.cursor()) as cursor:
            for sql, run in groupby(statements, _SQL):
                if sql is not _ID_ONLY:
                    self._execute_run(cursor, sql, map(_PARAMS, run))

    def _execute_run(self, cursor, sql, params):
        """One statement, once for each of ``params`` (an iterator)."""
        cursor.executemany(self._sql(sql), params)

    def _forget_writer(self, conn, failure: Failure):
        if conn is not None:
            self._reactor.callFromThread(
                log.warn, "store: lost {db} ({why}); writes fail until it is back",
                db=self._describe(), why=one_line(failure.getErrorMessage()))
            conn.close()
        return None

    def _unavailable(self, failure: Failure) -> Failure:
        if failure.check(StoreUnavailable):
            return failure
        why = one_line(failure.getErrorMessage())
        return Failure(StoreUnavailable(f"{self._describe()} is unavailable: {why}"))

    def _closing(self, conn):
        """In the writer thread, after the last write and with the readers closed."""

    def _shut_down(self):
        """In the writer thread, after the last write: stop the readers, close every
        connection, then say so."""
        self._stop_readers()
        if self._conn is not None:
            self._closing(self._conn)
            self._conn.close()
        self._reactor.callFromThread(self._closed.callback, None)

    def _stop_readers(self):
        """Wait for a read in progress (queued ones never run) and close the readers' connections."""
        self._readers.stop()
        with self._reader_lock:
            readers, self._reader_conns = self._reader_conns, set()
        for reader in readers:
            reader.close()

    def _write(self, *statements, new=None):
        """Queue ``statements`` as one write; its Deferred fires with ``new`` once committed."""
        if self._closed is not None:
            raise RuntimeError("store is closed")
        if self._stopped is not None:
            return fail(WriterStopped("the store's writer thread stopped"))
        d = Deferred()
        self._queue.put((statements, d, new))
        return d

    # reads

    def _query(self, conn, sql, params=()):
        return conn.execute(self._sql(sql), params).fetchall()

    def _reader(self):
        conn = getattr(self._reader_local, "conn", None)
        if conn is None:
            conn = self._reader_local.conn = self._connect()
            with self._reader_lock:
                self._reader_conns.add(conn)
        return conn

    def _read_now(self, sql, params):
        """In a reader thread. A read is safe to repeat: one whose connection was lost is
        tried once more on a new connection."""
        for attempt in (1, 2):
            conn = self._reader()
            try:
                return self._query(conn, sql, params)
            except Exception:
                if not self._lost(conn):
                    raise
                failure = Failure()
                self._reader_local.conn = None
                with self._reader_lock:
                    self._reader_conns.discard(conn)
                conn.close()
                if attempt == 2:
                    raise self._unavailable(failure).value from None
        raise AssertionError("unreachable")

    def _read(self, sql, params, convert=None):
        if self._closed is not None:
            return fail(RuntimeError("store is closed"))

        def run():
            rows = self._read_now(sql, params)
            return [convert(r) for r in rows] if convert else rows

        return deferToThreadPool(self._reactor, self._readers, run)

    def _load(self, conn) -> Snapshot:
        snapshot = self._tables(conn)
        ((self._last_guest_id,),) = self._query(
            conn, "SELECT value FROM counters WHERE name = 'last_guest_id'")
        if self.guest_id_block > 1:
            self._guest_blocks = [self._claim_guest_block(conn)]
            self._last_guest_id = self._guest_blocks[0][0]
        self._next = self._next_ids(conn)
        return snapshot

    def _tables(self, conn) -> Snapshot:
        """The small tables as they are now (no change to this store's own counters)."""
        users = [User(*row) for row in self._query(
            conn, "SELECT id, username, salt, verifier, created_at, public_key FROM users ORDER BY id"
        )]
        rooms = {}
        for row in self._query(conn, _ROOMS):
            rooms[row[0]] = _room(row)
        for room_id, user_id in self._query(conn, "SELECT room_id, user_id FROM room_members"):
            rooms[room_id].members.add(user_id)
        for room_id, user_id, role in self._query(conn, "SELECT room_id, user_id, role FROM room_roles"):
            (rooms[room_id].operators if role == "operator" else rooms[room_id].voiced).add(user_id)
        for room_id, mask_key, mask, set_by, set_at in self._query(
                conn, "SELECT room_id, mask_key, mask, set_by, set_at FROM room_bans ORDER BY set_at"):
            rooms[room_id].bans[mask_key] = RoomBan(mask, set_by, set_at)
        contacts = self._query(
            conn, "SELECT owner_id, contact_id, status, status_before_block FROM contacts")
        bans = [row[0] for row in self._query(conn, "SELECT address FROM bans ORDER BY address")]
        tokens = [tuple(row) for row in self._query(
            conn, "SELECT digest, user_id, created_at, last_used FROM login_tokens")]
        ((salt_secret,),) = self._query(conn, "SELECT value FROM secrets WHERE name = 'salt'")
        return Snapshot(
            users=users,
            rooms=list(rooms.values()),
            contacts=[tuple(c) for c in contacts],
            bans=bans,
            tokens=tokens,
            salt_secret=bytes(salt_secret),
        )

    def snapshot(self):
        if self._closed is not None:
            return fail(RuntimeError("store is closed"))
        return deferToThreadPool(self._reactor, self._readers, lambda: self._tables(self._reader()))

    # writes

    def add_user(self, user):
        new = self._id(NEW_USER)
        return self._write((
            "INSERT INTO users (id, username, username_key, salt, verifier, created_at, public_key)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (new, user.username, fold(user.username), user.salt, user.verifier,
             user.created_at, user.public_key),
        ), new=new)

    def update_user(self, user):
        return self._write((
            "UPDATE users SET verifier = ?, public_key = ? WHERE id = ?",
            (user.verifier, user.public_key, user.id),
        ))

    def set_contact(self, owner_id, contact_id, status, before_block=None):
        return self._write((
            "INSERT INTO contacts (owner_id, contact_id, status, status_before_block) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (owner_id, contact_id) DO UPDATE SET status = excluded.status,"
            " status_before_block = excluded.status_before_block",
            (owner_id, contact_id, status, before_block),
        ))

    def remove_contact(self, owner_id, contact_id):
        return self._write((
            "DELETE FROM contacts WHERE owner_id = ? AND contact_id = ?", (owner_id, contact_id),
        ))

    def add_room(self, room):
        new = self._id(NEW_ROOM)
        if not room.persistent:
            return self._write((_ID_ONLY, (new,)), new=new)
        return self._write((
            "INSERT INTO rooms (id, name, name_key, topic, created_by, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (new, room.name, fold(room.name), room.topic, room.created_by, room.created_at),
        ), new=new)

    def update_room(self, room):
        values = [getattr(room, field) for field in ROOM_SETTINGS]
        return self._write((f"UPDATE rooms SET topic = ?, {_ROOM_SETTING_UPDATE} WHERE id = ?",
                            (room.topic, *values, room.id)))

    def set_room_role(self, room_id, user_id, role, held):
        if held:
            return self._write((
                "INSERT INTO room_roles (room_id, user_id, role) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                (room_id, user_id, role),
            ))
        return self._write(("DELETE FROM room_roles WHERE room_id = ? AND user_id = ? AND role = ?",
                            (room_id, user_id, role)))

    def add_room_ban(self, room_id, ban):
        return self._write((
            "INSERT INTO room_bans (room_id, mask_key, mask, set_by, set_at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (room_id, mask_key) DO UPDATE SET mask = excluded.mask, set_by = excluded.set_by,"
            " set_at = excluded.set_at",
            (room_id, fold(ban.mask), ban.mask, ban.set_by, ban.set_at),
        ))

    def remove_room_ban(self, room_id, mask):
        return self._write((
            "DELETE FROM room_bans WHERE room_id = ? AND mask_key = ?", (room_id, fold(mask)),
        ))

    def add_member(self, room_id, user_id):
        return self._write((
            "INSERT INTO room_members (room_id, user_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
            (room_id, user_id),
        ))

    def remove_member(self, room_id, user_id):
        return self._write((
            "DELETE FROM room_members WHERE room_id = ? AND user_id = ?", (room_id, user_id),
        ))

    def add_message(self, message):
        new = self._id(NEW_MESSAGE)
        return self._write((
            _INSERT_MESSAGE,
            (new, message.sender_id, message.sender_name, message.body, message.sent_at,
             message.kind, message.recipient_id, message.room_id, message.delivered),
        ), new=new)

    def mark_delivered(self, message_ids):
        return self._write(*[
            ("UPDATE messages SET delivered = TRUE WHERE id = ?", (mid,)) for mid in message_ids
        ])

    def new_guest_id(self):
        """The next guest id; the write that keeps it as the lowest goes before any that names it.

        A store several nodes share (``guest_id_block`` > 1) hands out ids from blocks each
        node claims in the database, so no two nodes give out the same id.
        """
        if self.guest_id_block > 1:
            return self._next_guest_id_in_block()
        self._last_guest_id -= 1
        guest_id = self._last_guest_id
        self._write((
            "UPDATE counters SET value = ? WHERE name = 'last_guest_id' AND value > ?", (guest_id, guest_id),
        )).addErrback(lambda failure: log.failure("cannot keep the guest id counter", failure))
        return guest_id

    def _claim_guest_block(self, conn) -> tuple[int, int]:
        """A block of guest ids no other node has: (the id above its first, its last)."""
        ((floor,),) = self._query(conn, "UPDATE counters SET value = value - ? WHERE name = 'last_guest_id'"
                                        " RETURNING value", (self.guest_id_block,))
        return floor + self.guest_id_block, floor

    def _next_guest_id_in_block(self) -> int:
        start, floor = self._guest_blocks[0]
        if self._last_guest_id - 1 < floor:
            if len(self._guest_blocks) == 1:
                raise StoreUnavailable("no guest ids left: the database has not answered")
            self._guest_blocks.pop(0)
            self._last_guest_id = self._guest_blocks[0][0]
            floor = self._guest_blocks[0][1]
        self._last_guest_id -= 1
        if self._last_guest_id - floor == self.guest_id_block // 2 and len(self._guest_blocks) == 1:
            claimed = deferToThreadPool(self._reactor, self._readers,
                                        lambda: self._claim_guest_block(self._reader()))
            claimed.addCallbacks(self._guest_blocks.append,
                                 lambda failure: log.warn("cannot claim guest ids: {why}",
                                                          why=failure.getErrorMessage()))
        return self._last_guest_id

    def forget_room_messages(self, room_id):
        return self._write(("DELETE FROM messages WHERE room_id = ?", (room_id,)))

    def add_ban(self, address):
        return self._write((
            "INSERT INTO bans (address, created_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
            (address, time.time()),
        ))

    def remove_ban(self, address):
        return self._write(("DELETE FROM bans WHERE address = ?", (address,)))

    def set_read_mark(self, user_id, kind, target_id, message_id):
        return self._write((
            "INSERT INTO read_marks (user_id, kind, target_id, last_read_id) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (user_id, kind, target_id) DO UPDATE SET last_read_id = excluded.last_read_id"
            " WHERE read_marks.last_read_id < excluded.last_read_id",
            (user_id, kind, target_id, message_id),
        ))

    def set_last_seen(self, user_id, room_id, message_id):
        return self._write((
            "INSERT INTO last_seen (user_id, room_id, message_id) VALUES (?, ?, ?)"
            " ON CONFLICT (user_id, room_id) DO UPDATE SET message_id = excluded.message_id"
            " WHERE last_seen.message_id < excluded.message_id",
            (user_id, room_id, message_id),
        ))

    def save_token(self, digest, user_id, created_at, last_used):
        return self._write((
            "INSERT INTO login_tokens (digest, user_id, created_at, last_used) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (digest) DO UPDATE SET last_used = excluded.last_used",
            (digest, user_id, created_at, last_used),
        ))

    def remove_token(self, digest):
        return self._write(("DELETE FROM login_tokens WHERE digest = ?", (digest,)))

    # reads

    def _chosen(self, where, params, limit):
        """The newest ``limit`` messages ``where`` says, oldest first."""
        sql = (f"SELECT * FROM (SELECT {MESSAGE_COLUMNS} FROM messages WHERE {where}"
               " ORDER BY id DESC LIMIT ?) AS chosen ORDER BY id")
        return self._read(sql, (*params, limit), _message)

    def _newest(self, where, params, limit, before_id):
        if before_id is not None:
            where += " AND id < ?"
            params = (*params, before_id)
        return self._chosen(where, params, limit)

    def room_history(self, room_id, limit, before_id=None):
        return self.message_range(HistoryBounds(before_id=before_id), limit, room_id=room_id)

    def direct_history(self, user_id, other_id, limit, before_id=None):
        return self.message_range(HistoryBounds(before_id=before_id), limit, pair=(user_id, other_id))

    def conversations(self, user_id, room_ids, unread_cap):
        def row(r):
            return r[0], r[1], _message(r[3:]) if r[3] is not None else None, r[2]

        return self._read(self._conversations, {"user": user_id, "rooms": json.dumps(list(room_ids)),
                                                "cap": unread_cap}, row)

    def inbox(self, user_id, limit, undelivered_only=False):
        where = "recipient_id = ?" + (" AND NOT delivered" if undelivered_only else "")
        return self._newest(where, (user_id,), limit, None)

    def message_range(self, bounds, limit, room_id=None, pair=None):
        """Each direction of a direct pair is read on its own index and the two limited lists
        merged; a room's reads bounded by a time go in the order of messages_room_time, so no
        read walks or sorts a whole conversation."""
        if room_id is not None:
            where, sides = "room_id = ?", [(room_id,)]
        else:
            user_id, other_id = pair
            where = "recipient_id = ? AND sender_id = ?"
            sides = [(user_id, other_id)]
            if other_id != user_id:  # a conversation with oneself has one direction
                sides.append((other_id, user_id))
        params = []
        if bounds.after_id is not None:
            where += " AND id > ?"
            params.append(bounds.after_id)
        if bounds.before_id is not None:
            where += " AND id < ?"
            params.append(bounds.before_id)
        if bounds.since is not None:
            where += " AND sent_at >= ?"
            params.append(bounds.since)
        if bounds.until is not None:
            where += " AND sent_at < ?"
            params.append(bounds.until)
        by_time = room_id is not None and (bounds.since, bounds.until, bounds.around) != (None, None, None)
        newest, oldest = (_BY_TIME_DESC, _BY_TIME) if by_time else (_BY_ID_DESC, _BY_ID)
        point = bounds.around_point()
        if point is None:
            sql, values = _first(where, sides, params, oldest if bounds.oldest else newest, limit)
            return self._read("SELECT * FROM (" + sql + ") AS chosen" + oldest, values, _message)
        column, value = point
        if column == "id":
            earlier, later = " AND id < ?", " AND id >= ?"
        else:
            earlier, later = " AND sent_at < ?", " AND sent_at >= ?"
        before = (limit - 1) // 2
        earlier_sql, earlier_values = _first(where + earlier, sides, [*params, value], newest, before)
        later_sql, later_values = _first(where + later, sides, [*params, value], oldest, limit - before)
        sql = ("SELECT * FROM (SELECT * FROM (" + earlier_sql + ") AS earlier UNION ALL SELECT * FROM ("
               + later_sql + ") AS later) AS around" + oldest)
        return self._read(sql, (*earlier_values, *later_values), _message)

    def last_seen(self, user_id):
        found = self._read("SELECT room_id, message_id FROM last_seen WHERE user_id = ?", (user_id,))
        return found.addCallback(dict)

    def user_by_id(self, user_id):
        found = self._read("SELECT id, username, salt, verifier, created_at, public_key FROM users"
                           " WHERE id = ?", (user_id,), lambda row: User(*row))
        return found.addCallback(lambda users: users[0] if users else None)

    def room_by_id(self, room_id):
        rooms = self._read(_ROOMS + " WHERE id = ?", (room_id,), _room)
        members = self._read("SELECT user_id FROM room_members WHERE room_id = ?", (room_id,))

        def joined(found):
            rooms, members = found
            if not rooms:
                return None
            rooms[0].members.update(row[0] for row in members)
            return rooms[0]

        return gatherResults([rooms, members], consumeErrors=True).addCallback(joined)

    def messages_after(self, after_id, limit):
        return self._read(f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id > ? ORDER BY id LIMIT ?",
                          (after_id, limit), _message)

    def newest_message_id(self):
        found = self._read("SELECT COALESCE(MAX(id), 0) FROM messages", ())
        return found.addCallback(lambda rows: rows[0][0])


def one_line(text: str) -> str:
    """A driver's error message, often several lines, as one log line."""
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def _fire(batch, failure: Failure | None = None):
    """On the reactor thread: each write of a batch committed (firing with its id) or failed."""
    if failure is None:
        for _, d, new in batch:
            d.callback(new)
    else:
        for _, d, _ in batch:
            d.errback(failure)
