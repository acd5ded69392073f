"""The PostgreSQL store (``--db postgresql://user@host:port/dbname``): psycopg 3 in threads.

One writer thread, with its own connection, commits in groups as the SQLite store does
(``sql.py``). Within a batch, a run of the same plain INSERT (messages, under load) goes out
as one COPY, and a run of any other statement as one ``executemany``, which psycopg
pipelines: a batch costs a round trip or two, not one per message. (On loopback, COPY stored
about three times as many messages per second as ``executemany``, for a fifth of the client
CPU per message; in ``bench.store`` it doubled the store's rate.) Reads run on a few reader
threads, each with its own connection. Every connection is in autocommit mode; the writer
opens each transaction itself.

If the server goes away, the writes of the batch that finds out fail with StoreUnavailable
(nothing is acknowledged that is not stored) and so does every later one until a connection
can be made again, which each new batch tries; a read is tried once more on a new connection.
"""

from __future__ import annotations

import re
import time

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from chatserv.errors import StoreUnavailable
from chatserv.store.migrations import migrate_postgresql
from chatserv.store.sql import ID_BLOCK, NewId, SQLStore, one_line

_CONNECT_TIMEOUT = 10  # seconds, unless the URL says otherwise (libpq waits forever by default)
_COPY_FROM = 8  # a COPY costs a round trip of its own: worth it for a run of rows, not for one
# Id blocks: a batch with this many new rows of a table (a writer under load) reserves
# ID_BLOCK more ids than it needs, handed out to the next batches. Ids left unused after
# _BLOCK_LIFETIME seconds are skipped, so two nodes' ids interleave within that time (and within
# IDS_OUT_OF_ORDER), as they do within one batch: history ordered by id stays ordered by time
# across nodes, and a node's catch-up after a bus outage reads back that far.
_BUSY_BATCH = 32
_BLOCK_LIFETIME = 1.0
_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")  # sqlite3's :name, not a :: cast
_PLAIN_INSERT = re.compile(r"INSERT INTO (\w+) (\([\w, ]+\)) VALUES \([?, ]+\)")


def connection_params(url: str) -> dict:
    """The libpq parameters of a ``postgresql://`` URL, with chatserv's defaults; ValueError
    if the URL cannot be read."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error as e:
        raise ValueError(f"not a PostgreSQL URL ({e}): {url!r}") from None
    params.setdefault("connect_timeout", _CONNECT_TIMEOUT)
    params.setdefault("application_name", "chatserv")
    return params


class PostgresStore(SQLStore):
    engine = "postgresql"
    reader_threads = 4
    refused_values = (psycopg.DataError,)  # NUL in text, which SQLite keeps
    json_ids = "json_array_elements_text(CAST(:rooms AS json))"
    guest_id_block = 10_000  # several nodes may share the database: each claims its guest ids

    def __init__(self, url: str, reactor):
        super().__init__(reactor)
        self._params = connection_params(url)
        self._conninfo = make_conninfo(**self._params)
        self._translated: dict[str, str] = {}
        self._copies: dict[str, str | None] = {}  # an INSERT's COPY, or None if it has none
        self._reserved: dict[str, tuple[list[int], float]] = {}  # a table's ids in hand, since when
        self._clock = time.monotonic

    def _describe(self):
        p = self._params
        return (f"PostgreSQL database {p.get('dbname', '')!r} at "
                f"{p.get('host', 'the local socket')}:{p.get('port', 5432)}")

    def _connect(self):
        try:
            return psycopg.connect(self._conninfo, autocommit=True)
        except psycopg.Error as e:
            raise StoreUnavailable(f"{self._describe()} is unreachable: {one_line(str(e))}") from None

    def _migrate(self, conn):
        migrate_postgresql(conn)

    def _transaction(self, conn):
        return conn.transaction()

    def _lost(self, conn):
        return conn.closed or conn.broken

    def _execute_run(self, cursor, sql, params):
        params = list(params)
        copy = self._copies.get(sql, False)
        if copy is False:
            insert = _PLAIN_INSERT.fullmatch(sql)
            copy = self._copies[sql] = insert and f"COPY {insert[1]} {insert[2]} FROM STDIN"
        if copy and len(params) >= _COPY_FROM:
            with cursor.copy(copy) as rows:
                for row in params:
                    rows.write_row(row)
        else:
            cursor.executemany(self._sql(sql), params)

    def _sql(self, sql):
        translated = self._translated.get(sql)
        if translated is None:
            translated = _NAMED.sub(r"%(\1)s", sql.replace("%", "%%").replace("?", "%s"))
            self._translated[sql] = translated
        return translated

    def _load(self, conn):
        # One snapshot of every table, even while other nodes write.
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            return super()._load(conn)

    def _id(self, new):
        """Other nodes insert too: the writer takes the id from the shared sequence."""
        return new

    def _assign_ids(self, conn, batch):
        """The batch with a real id in place of each ``NewId``, in its statement and as the
        id the write fires with (``_take_ids``)."""
        wanted: dict[str, int] = {}
        for _, _, new in batch:
            if type(new) is NewId:
                wanted[new.table] = wanted.get(new.table, 0) + 1
        if not wanted:
            return batch
        fresh = {table: iter(self._take_ids(conn, table, count)) for table, count in wanted.items()}
        assigned = []
        for statements, d, new in batch:
            if type(new) is NewId:
                new = next(fresh[new.table])
                (sql, params), *rest = statements
                statements = ((sql, (new, *params[1:])), *rest)
            assigned.append((statements, d, new))
        return assigned

    def _take_ids(self, conn, table, count):
        """From the table's identity sequence, which every node shares. A busy writer reserves
        a block and hands it out from memory, so most of its batches need no id query; a quiet
        one takes just what its batch needs (ids stay dense across restarts)."""
        reserved = self._reserved.get(table)
        now = self._clock()
        if reserved is None or now - reserved[1] > _BLOCK_LIFETIME:
            reserved = self._reserved[table] = ([], now)  # too old: skipped (a gap, never reused)
        ids = reserved[0]
        if len(ids) < count:
            spare = ID_BLOCK if count >= _BUSY_BATCH else 0
            ((more,),) = conn.execute(
                f"SELECT array_agg(nextval(pg_get_serial_sequence('{table}', 'id')))"
                " FROM generate_series(1, %s)", (count - len(ids) + spare,)).fetchall()
            ids.extend(sorted(more))
            self._reserved[table] = (ids, now)
        taken = ids[:count]
        del ids[:count]
        return taken

    def _next_ids(self, conn):
        """Move each id sequence past every stored id (ids written before the store handed
        them out, or a guest's room's messages) and hand out its next value. A sequence never
        moves back: an id it has handed out is never handed out again."""
        next_ids = {}
        for table, free in super()._next_ids(conn).items():
            sequence = f"pg_get_serial_sequence('{table}', 'id')"
            (next_ids[table],) = conn.execute(
                f"SELECT setval({sequence}, GREATEST(%s, nextval({sequence})), false)", (free,)
            ).fetchone()
        return next_ids
