"""Persistence behind one interface (``IStore``); ``open_store`` picks the engine from ``--db``."""

from chatserv.store.base import IStore


def open_store(db: str, reactor) -> IStore:
    """``memory`` for an in-memory store, anything else is a SQLite file path."""
    if db == "memory":
        from chatserv.store.memory import MemoryStore

        return MemoryStore()
    from chatserv.store.sqlite import SQLiteStore

    return SQLiteStore(db, reactor)


__all__ = ["IStore", "open_store"]
