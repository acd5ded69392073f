"""Persistence behind one interface (``IStore``); ``open_store`` picks the engine from ``--db``."""

from chatserv.store.base import IStore

POSTGRESQL_SCHEMES = ("postgresql://", "postgres://")


def check_db(db: str) -> str:
    """``--db`` as given, if it can be used; ValueError (a clear one) if not."""
    if db.startswith(POSTGRESQL_SCHEMES):
        from chatserv.store.postgres import connection_params

        connection_params(db)
    elif not db:
        raise ValueError("empty: give a SQLite file path, 'memory' or a postgresql:// URL")
    return db


def open_store(db: str, reactor) -> IStore:
    """``memory`` for an in-memory store, a ``postgresql://user@host:port/dbname`` URL for
    PostgreSQL, anything else is a SQLite file path."""
    if db == "memory":
        from chatserv.store.memory import MemoryStore

        return MemoryStore()
    if db.startswith(POSTGRESQL_SCHEMES):
        from chatserv.store.postgres import PostgresStore

        return PostgresStore(db, reactor)
    from chatserv.store.sqlite import SQLiteStore

    return SQLiteStore(db, reactor)


__all__ = ["IStore", "check_db", "open_store"]
