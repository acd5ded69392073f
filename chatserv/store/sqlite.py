"""The SQLite store: a file in WAL mode, one writer thread with group commit, one reader thread.

What it shares with the PostgreSQL store (the writer, the statements) is in ``sql.py``. A
clean close closes both connections and checkpoints the WAL into the main file, so that file
alone is a full backup.

Checkpoints run beside the writer, not in it. SQLite's own (``wal_autocheckpoint``) runs in the
connection whose commit takes the WAL past 1,000 pages: that commit then copies every page
back into the database file, two system calls a page, and here took 20 ms, during which no
write was committed and so no message delivered; it was most of the p99 at a steady rate. The
reader thread instead makes a ``PASSIVE`` checkpoint (one that waits for nobody) every
``CHECKPOINT_EVERY`` seconds while writes come in, so when the writer's own one comes round,
only the last few pages are left to copy.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import contextmanager

from twisted.logger import Logger

from chatserv.errors import StoreUnavailable
from chatserv.store.migrations import migrate_sqlite
from chatserv.store.sql import SQLStore

log = Logger()

CHECKPOINT_EVERY = 0.1  # seconds between background checkpoints while writes come in


class SQLiteStore(SQLStore):
    engine = "sqlite"

    def __init__(self, path: str, reactor):
        super().__init__(reactor)
        self.path = path
        self._next_checkpoint = 0.0  # the writer thread's: when it may ask for the next one

    def _connect(self):
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.OperationalError as e:
            raise StoreUnavailable(f"cannot open the SQLite database {self.path}: {e}") from None
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # durable against process crashes in WAL mode
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        return conn

    def _migrate(self, conn):
        migrate_sqlite(conn)

    @contextmanager
    def _transaction(self, conn):
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _commit(self, conn, batch):
        conn = super()._commit(conn, batch)
        now = time.monotonic()
        if now >= self._next_checkpoint:
            self._next_checkpoint = now + CHECKPOINT_EVERY
            self._readers.callInThread(self._checkpoint)
        return conn

    def _checkpoint(self):
        """In the reader thread: copy what the WAL holds into the database file, as far as
        readers allow, while the writer goes on."""
        try:
            self._reader().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except (sqlite3.Error, StoreUnavailable) as exc:
            self._reactor.callFromThread(log.warn, "SQLite: background checkpoint failed ({why}); the"
                                         " writer checkpoints on its own", why=exc)

    def _closing(self, conn):
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            self._reactor.callFromThread(log.warn, "SQLite: no checkpoint at close ({why}): the data"
                                         " stays in the WAL", why=exc)

    def _describe(self):
        return f"SQLite database {self.path}"
