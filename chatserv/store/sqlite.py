"""The SQLite store: WAL, one writer thread with group commit, reads on a reader thread.

Writes queue up while a transaction commits and then go out together in the next one, so
persistence keeps pace with fan-out. Every Deferred fires on the reactor thread once its
write is committed; no query ever runs on the reactor thread. Whatever one write raises fails
that write alone and the writer goes on; should the writer thread stop all the same, every
waiting write fails, ``when_broken`` fires and ``close`` still ends. A clean close closes both
connections and checkpoints the WAL into the main file, so that file alone is a full backup.
"""

from __future__ import annotations

import json
import queue
import secrets
import sqlite3
import threading
import time

from twisted.internet.defer import Deferred, fail
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from chatserv.model import Message, Room, Snapshot, User, fold
from chatserv.store.base import IStore
from chatserv.store.migrations import migrate

log = Logger()

_STOP = object()
_MAX_BATCH = 2000
_MESSAGE_COLUMNS = "id, sender_id, sender_name, body, sent_at, kind, recipient_id, room_id, delivered"


_LAST_MESSAGE_COLUMNS = ("m.id, m.sender_id, m.sender_name, m.body, m.sent_at, m.kind, m.recipient_id,"
                         " m.room_id, m.delivered")
# Every conversation of :user: direct ones (the other party, the newest message either way,
# the unread ones received after the read mark) and the rooms in :rooms (a JSON array).
_CONVERSATIONS = f"""
WITH peers(peer, last_id) AS (
    SELECT CASE WHEN sender_id = :user THEN recipient_id ELSE sender_id END, MAX(id) FROM messages
    WHERE recipient_id = :user OR (sender_id = :user AND recipient_id IS NOT NULL) GROUP BY 1),
rooms(room, last_id, mark) AS (
    SELECT r.value, (SELECT MAX(id) FROM messages WHERE room_id = r.value),
           (SELECT last_read_id FROM read_marks
            WHERE user_id = :user AND kind = 'room' AND target_id = r.value)
    FROM json_each(:rooms) AS r)
SELECT 'user', peer, (SELECT COUNT(*) FROM (SELECT 1 FROM messages
        WHERE recipient_id = :user AND sender_id = peer AND sender_id != :user AND id > COALESCE(
            (SELECT last_read_id FROM read_marks
             WHERE user_id = :user AND kind = 'user' AND target_id = peer), 0)
        LIMIT :cap)), {_LAST_MESSAGE_COLUMNS}
FROM peers JOIN messages AS m ON m.id = peers.last_id
UNION ALL
SELECT 'room', room, CASE WHEN mark IS NULL THEN 0 ELSE (SELECT COUNT(*) FROM (SELECT 1 FROM messages
        WHERE room_id = room AND id > mark AND sender_id != :user LIMIT :cap)) END, {_LAST_MESSAGE_COLUMNS}
FROM rooms LEFT JOIN messages AS m ON m.id = rooms.last_id
"""


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # durable against process crashes in WAL mode
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


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


class _ReaderPool(ThreadPool):
    """The reader thread, like the writer, never keeps the process alive at exit."""

    def threadFactory(self, *args, **kwargs):
        return threading.Thread(*args, daemon=True, **kwargs)


@implementer(IStore)
class SQLiteStore:
    def __init__(self, path: str, reactor):
        self.path = path
        self._reactor = reactor
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._closed: Deferred | None = None
        self._readers = _ReaderPool(minthreads=1, maxthreads=1, name="chatserv-store-read")
        self._reader_conn: sqlite3.Connection | None = None
        self._batch: list = []  # the writes the writer thread is committing
        self._stopped: Failure | None = None  # why the writer thread stopped, if it did unasked
        self._open_failed = False
        self._broken: list[Deferred] = []

    # life cycle

    def open(self):
        opened = Deferred()
        self._writer = threading.Thread(
            target=self._write_loop, args=(opened,), name="chatserv-store-write", daemon=True
        )
        self._writer.start()
        return opened

    def close(self):
        """Finish the queued writes, close both connections and checkpoint the WAL."""
        if self._closed is None:
            self._closed = Deferred()
            self._readers.stop()  # waits for a read in progress; queued ones never run
            if self._reader_conn is not None:
                self._reader_conn.close()
                self._reader_conn = None
            if self._stopped is not None or self._open_failed:
                self._closed.callback(None)  # no writer left: nothing to wait for
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

    def _write_loop(self, opened: Deferred):
        try:
            conn = _connect(self.path)
            migrate(conn)
            snapshot = self._load(conn)
        except Exception:
            self._reactor.callFromThread(self._failed_open, opened, Failure())
            return
        self._reactor.callFromThread(self._start_readers)
        self._reactor.callFromThread(opened.callback, snapshot)
        try:
            self._serve(conn)
        except BaseException:
            self._reactor.callFromThread(self._writer_stopped, Failure())
            try:
                conn.close()
            except Exception:
                pass  # already broken: the failure above says why
            return
        self._reactor.callFromThread(self._finish_close)

    def _serve(self, conn):
        """Commit batches until told to stop; then checkpoint the WAL and close."""
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
                self._commit(conn, batch)
            self._batch = []
            if stopping:
                try:
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.Error as exc:
                    self._reactor.callFromThread(log.warn, "SQLite: no checkpoint at close ({why}): the data"
                                                 " stays in the WAL", why=exc)
                conn.close()
                return

    def _commit(self, conn, batch):
        """Commit a whole batch in one transaction; if that fails, each write alone, so that what
        one write raises (a value SQLite cannot bind, a constraint) fails that write only."""
        try:
            self._transaction(conn, [statement for statements, _ in batch for statement in statements])
            outcomes = [(d, None) for _, d in batch]
        except Exception:
            if len(batch) == 1:
                outcomes = [(batch[0][1], Failure())]
            else:
                outcomes = [(d, self._commit_one(conn, statements)) for statements, d in batch]
        self._reactor.callFromThread(_fire, outcomes)

    @classmethod
    def _commit_one(cls, conn, statements):
        try:
            cls._transaction(conn, statements)
        except Exception:
            return Failure()
        return None

    @staticmethod
    def _transaction(conn, statements):
        try:
            conn.execute("BEGIN IMMEDIATE")
            for sql, params in statements:
                conn.execute(sql, params)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _writer_stopped(self, failure: Failure):
        """The writer thread died: fail what waits for it, and say so."""
        log.failure("SQLite: the writer thread stopped; no write can be stored any more", failure)
        self._stopped = failure
        waiting = [d for _, d in self._batch]
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
            self._closed.callback(None)

    def _failed_open(self, opened: Deferred, failure: Failure):
        self._open_failed = True
        if self._closed is not None and not self._closed.called:
            self._closed.callback(None)
        opened.errback(failure)

    def _start_readers(self):
        if self._closed is None:  # not closed while it opened
            self._readers.start()

    def _finish_close(self):
        self._closed.callback(None)

    def _write(self, *statements):
        if self._closed is not None:
            raise RuntimeError("store is closed")
        if self._stopped is not None:
            return fail(WriterStopped("the store's writer thread stopped"))
        d = Deferred()
        self._queue.put((statements, d))
        return d

    def _read(self, sql, params, convert=None):
        if self._closed is not None:
            return fail(RuntimeError("store is closed"))

        def run():
            if self._reader_conn is None:
                self._reader_conn = _connect(self.path)
            rows = self._reader_conn.execute(sql, params).fetchall()
            return [convert(r) for r in rows] if convert else rows

        return deferToThreadPool(self._reactor, self._readers, run)

    @staticmethod
    def _load(conn) -> Snapshot:
        users = [User(*row) for row in conn.execute(
            "SELECT id, username, salt, verifier, created_at, public_key FROM users ORDER BY id"
        )]
        rooms = {row[0]: Room(*row) for row in conn.execute(
            "SELECT id, name, created_by, created_at, topic FROM rooms ORDER BY id"
        )}
        for room_id, user_id in conn.execute("SELECT room_id, user_id FROM room_members"):
            rooms[room_id].members.add(user_id)
        contacts = conn.execute(
            "SELECT owner_id, contact_id, status, status_before_block FROM contacts").fetchall()
        bans = [row[0] for row in conn.execute("SELECT address FROM bans ORDER BY address")]
        tokens = [tuple(row) for row in conn.execute(
            "SELECT digest, user_id, created_at, last_used FROM login_tokens")]
        # Made at the first start; whoever inserts first wins, so every reader gets the same one.
        conn.execute("INSERT OR IGNORE INTO secrets (name, value) VALUES ('salt', ?)",
                     (secrets.token_bytes(32),))
        (salt_secret,) = conn.execute("SELECT value FROM secrets WHERE name = 'salt'").fetchone()

        def next_id(table):
            return conn.execute(f"SELECT COALESCE(MAX(id), 0) + 1 FROM {table}").fetchone()[0]

        # A room that was never stored (a guest's) may have left messages behind in a crash:
        # room ids are never reused, so they never show up in a new room.
        (last_room_message,) = conn.execute(
            "SELECT COALESCE(MAX(room_id), 0) FROM messages WHERE room_id IS NOT NULL").fetchone()
        (last_guest_id,) = conn.execute("SELECT value FROM counters WHERE name = 'last_guest_id'").fetchone()
        return Snapshot(
            users=users,
            rooms=list(rooms.values()),
            contacts=[tuple(c) for c in contacts],
            bans=bans,
            next_user_id=next_id("users"),
            next_room_id=max(next_id("rooms"), last_room_message + 1),
            next_message_id=next_id("messages"),
            tokens=tokens,
            last_guest_id=last_guest_id,
            salt_secret=salt_secret,
        )

    # writes

    def add_user(self, user):
        return self._write((
            "INSERT INTO users (id, username, username_key, salt, verifier, created_at, public_key)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (user.id, user.username, fold(user.username), user.salt, user.verifier,
             user.created_at, user.public_key),
        ))

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
        return self._write((
            "INSERT INTO rooms (id, name, name_key, topic, created_by, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (room.id, room.name, fold(room.name), room.topic, room.created_by, room.created_at),
        ))

    def update_room(self, room):
        return self._write(("UPDATE rooms SET topic = ? WHERE id = ?", (room.topic, room.id)))

    def add_member(self, room_id, user_id):
        return self._write((
            "INSERT OR IGNORE INTO room_members (room_id, user_id) VALUES (?, ?)",
            (room_id, user_id),
        ))

    def remove_member(self, room_id, user_id):
        return self._write((
            "DELETE FROM room_members WHERE room_id = ? AND user_id = ?", (room_id, user_id),
        ))

    def add_message(self, message):
        return self._write((
            f"INSERT INTO messages ({_MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (message.id, message.sender_id, message.sender_name, message.body, message.sent_at,
             message.kind, message.recipient_id, message.room_id, int(message.delivered)),
        ))

    def mark_delivered(self, message_ids):
        return self._write(*[
            ("UPDATE messages SET delivered = 1 WHERE id = ?", (mid,)) for mid in message_ids
        ])

    def note_guest_id(self, guest_id):
        return self._write((
            "UPDATE counters SET value = MIN(value, ?) WHERE name = 'last_guest_id'", (guest_id,),
        ))

    def forget_room_messages(self, room_id):
        return self._write(("DELETE FROM messages WHERE room_id = ?", (room_id,)))

    def add_ban(self, address):
        return self._write((
            "INSERT OR IGNORE INTO bans (address, created_at) VALUES (?, ?)",
            (address, time.time()),
        ))

    def remove_ban(self, address):
        return self._write(("DELETE FROM bans WHERE address = ?", (address,)))

    def set_read_mark(self, user_id, kind, target_id, message_id):
        return self._write((
            "INSERT INTO read_marks (user_id, kind, target_id, last_read_id) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (user_id, kind, target_id)"
            " DO UPDATE SET last_read_id = MAX(last_read_id, excluded.last_read_id)",
            (user_id, kind, target_id, message_id),
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

    def _newest(self, where, params, limit, before_id):
        if before_id is not None:
            where += " AND id < ?"
            params = (*params, before_id)
        sql = (
            f"SELECT * FROM (SELECT {_MESSAGE_COLUMNS} FROM messages WHERE {where}"
            " ORDER BY id DESC LIMIT ?) ORDER BY id"
        )
        return self._read(sql, (*params, limit), _message)

    def room_history(self, room_id, limit, before_id=None):
        return self._newest("room_id = ?", (room_id,), limit, before_id)

    def direct_history(self, user_id, other_id, limit, before_id=None):
        return self._newest(
            "((recipient_id = ? AND sender_id = ?) OR (recipient_id = ? AND sender_id = ?))",
            (user_id, other_id, other_id, user_id),
            limit,
            before_id,
        )

    def conversations(self, user_id, room_ids, unread_cap):
        def row(r):
            return r[0], r[1], _message(r[3:]) if r[3] is not None else None, r[2]

        return self._read(_CONVERSATIONS, {"user": user_id, "rooms": json.dumps(list(room_ids)),
                                           "cap": unread_cap}, row)

    def inbox(self, user_id, limit, undelivered_only=False):
        where = "recipient_id = ?" + (" AND delivered = 0" if undelivered_only else "")
        return self._newest(where, (user_id,), limit, None)

    def message_range(self, bounds, limit, room_id=None, pair=None):
        if room_id is not None:
            where, params = "room_id = ?", [room_id]
        else:
            user_id, other_id = pair
            where = "((recipient_id = ? AND sender_id = ?) OR (recipient_id = ? AND sender_id = ?))"
            params = [user_id, other_id, other_id, user_id]
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
        sql = (f"SELECT * FROM (SELECT {_MESSAGE_COLUMNS} FROM messages WHERE {where}"
               " ORDER BY id ASC LIMIT ?) ORDER BY id") if bounds.oldest else (
               f"SELECT * FROM (SELECT {_MESSAGE_COLUMNS} FROM messages WHERE {where}"
               " ORDER BY id DESC LIMIT ?) ORDER BY id")
        return self._read(sql, (*params, limit), _message)

    def last_seen(self, user_id):
        found = self._read("SELECT room_id, message_id FROM last_seen WHERE user_id = ?", (user_id,))
        return found.addCallback(dict)

    def set_last_seen(self, user_id, room_id, message_id):
        return self._write((
            "INSERT INTO last_seen (user_id, room_id, message_id) VALUES (?, ?, ?)"
            " ON CONFLICT (user_id, room_id) DO UPDATE SET message_id = MAX(message_id, excluded.message_id)",
            (user_id, room_id, message_id),
        ))


def _fire(outcomes):
    for d, failure in outcomes:
        if failure is None:
            d.callback(None)
        else:
            d.errback(failure)
