"""The SQLite store: a file in WAL mode, one writer thread with group commit, one reader thread.

What it shares with the PostgreSQL store (the writer, the statements) is in ``sql.py``. A
clean close closes both connections and checkpoints the WAL into the main file, so that file
alone is a full backup.
"""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager

from twisted.logger import Logger

from chatserv.errors import StoreUnavailable
from chatserv.store.migrations import migrate_sqlite
from chatserv.store.sql import SQLStore

log = Logger()


class SQLiteStore(SQLStore):
    engine = "sqlite"

    def __init__(self, path: str, reactor):
        super().__init__(reactor)
        self.path = path

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

    def _closing(self, conn):
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            self._reactor.callFromThread(log.warn, "SQLite: no checkpoint at close ({why}): the data"
                                         " stays in the WAL", why=exc)

    def _describe(self):
        return f"SQLite database {self.path}"
