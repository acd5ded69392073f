"""Kill the daemon with SIGKILL mid-stream: every acknowledged message is kept exactly once."""

import json
import random
import shutil
import signal
import socket
import sqlite3

import psycopg

from chatserv.credentials import password_digest
from tests.support import TIMEOUT, Twistd


class JsonLines:
    """A blocking seed 002 client: one JSON object per line."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.buffer = b""

    def send(self, **request):
        self.sock.sendall(json.dumps(request).encode() + b"\n")

    def receive(self) -> dict | None:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def receive_safely(self) -> dict | None:
        """The next object, or None once the connection is gone (reset by a killed server)."""
        try:
            return self.receive()
        except OSError:
            return None

    def receive_type(self, kind) -> dict:
        while (reply := self.receive())["type"] != kind:
            pass
        return reply


def register(port, name, password) -> JsonLines:
    client = JsonLines(port)
    client.send(user=name, type="register")
    assert client.receive_type("username_register_status")["taken"] == "false"
    client.send(user=name, type="salt")
    salt = client.receive_type("salt")["salt"]
    client.send(user=name, type="login", password=password_digest(salt, password))
    assert client.receive_type("login")["success"] == "true"
    return client


LOBBY_BODIES = ("SELECT body FROM messages JOIN rooms ON rooms.id = messages.room_id"
                " WHERE rooms.name = 'lobby' ORDER BY messages.id")


def lobby_bodies(db) -> list[str]:
    if db.startswith("postgresql://"):
        with psycopg.connect(db) as conn:
            return [row[0] for row in conn.execute(LOBBY_BODIES)]
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return [row[0] for row in conn.execute(LOBBY_BODIES)]
    finally:
        conn.close()


def test_acknowledged_messages_survive_sigkill(tmp_path, sql_db):
    seed = random.randrange(1 << 30)
    kill_after = random.Random(seed).randrange(20, 400)
    db = sql_db
    daemon = Twistd(tmp_path, "--db", db, "--messages-per-second", "0")
    acknowledged = []
    try:
        client = register(daemon.ports["salted"], "writer", "pw")
        for number in range(kill_after):  # keep 50 in flight, as a fast client would
            client.send(user="writer", type="message", message=f"m{number}")
            if number >= 50:
                acknowledged.append(client.receive_type("message")["message"])
        for number in range(kill_after, kill_after + 20):
            client.send(user="writer", type="message", message=f"m{number}")
    finally:
        daemon.kill()
    while (reply := client.receive_safely()) is not None:
        if reply.get("type") == "message":
            acknowledged.append(reply["message"])

    stored = lobby_bodies(db)
    assert len(stored) == len(set(stored)), f"duplicates (seed {seed})"
    assert set(acknowledged) <= set(stored), f"lost acknowledged messages (seed {seed})"
    assert stored == sorted(stored, key=lambda body: int(body[1:])), f"out of order (seed {seed})"

    daemon = Twistd(tmp_path, "--db", db)
    try:
        again = JsonLines(daemon.ports["salted"])
        again.send(user="writer", type="salt")
        salt = again.receive_type("salt")["salt"]
        again.send(user="writer", type="login", password=password_digest(salt, "pw"))
        assert again.receive_type("login")["success"] == "true"
    finally:
        daemon.stop()
    assert lobby_bodies(db) == stored
    if db.startswith("postgresql://"):
        return
    backup = tmp_path / "backup" / "copy.sqlite3"  # SIGTERM checkpointed the WAL: one file is all
    backup.parent.mkdir()
    shutil.copyfile(db, backup)
    assert lobby_bodies(str(backup)) == stored


# Stands in for whatever could still stop the SQLite writer thread (it catches every Exception).
DYING_WRITER = """
from chatserv.store.sql import SQLStore
original = SQLStore._apply
def apply(self, conn, statements):
    if any("doomed" in map(str, params) for _, params in statements):
        raise SystemExit("the writer thread stops here")
    return original(self, conn, statements)
SQLStore._apply = apply
"""


def test_a_daemon_whose_store_writer_stops_exits_non_zero_and_keeps_what_it_acknowledged(tmp_path):
    db = str(tmp_path / "chat.sqlite3")
    daemon = Twistd(tmp_path, "--db", db, preamble=DYING_WRITER)
    try:
        client = register(daemon.ports["salted"], "writer", "pw")
        client.send(user="writer", type="message", message="kept")
        assert client.receive_type("message")["message"] == "kept"
        client.send(user="writer", type="message", message="doomed")
        status = daemon.wait()  # it stops by itself, so that a supervisor restarts it
    finally:
        daemon.process.kill()
    assert status not in (0, -signal.SIGTERM), daemon.log
    assert "the store can no longer write" in daemon.log
    assert lobby_bodies(db) == ["kept"]

    daemon = Twistd(tmp_path, "--db", db)  # the restart: it serves again
    try:
        again = register(daemon.ports["salted"], "other", "pw")
        again.send(user="other", type="message", message="after the restart")
        assert again.receive_type("message")["message"] == "after the restart"
    finally:
        daemon.stop()
    assert lobby_bodies(db) == ["kept", "after the restart"]
