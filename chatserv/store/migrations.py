"""Versioned schema migrations, applied in order at start; ``PRAGMA user_version`` is the version.

Never edit a released step: append a new one.
"""

MIGRATIONS = [
    """
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        username TEXT NOT NULL,
        username_key TEXT NOT NULL UNIQUE,
        salt TEXT NOT NULL,
        verifier TEXT,
        created_at REAL NOT NULL,
        public_key TEXT
    );
    CREATE TABLE contacts (
        owner_id INTEGER NOT NULL REFERENCES users(id),
        contact_id INTEGER NOT NULL REFERENCES users(id),
        status TEXT NOT NULL,
        PRIMARY KEY (owner_id, contact_id)
    );
    CREATE TABLE rooms (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        name_key TEXT NOT NULL UNIQUE,
        topic TEXT NOT NULL DEFAULT '',
        created_by INTEGER,
        created_at REAL NOT NULL
    );
    CREATE TABLE room_members (
        room_id INTEGER NOT NULL REFERENCES rooms(id),
        user_id INTEGER NOT NULL REFERENCES users(id),
        PRIMARY KEY (room_id, user_id)
    );
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        sender_id INTEGER NOT NULL,
        sender_name TEXT NOT NULL,
        recipient_id INTEGER,
        room_id INTEGER,
        body TEXT NOT NULL,
        kind TEXT NOT NULL,
        sent_at REAL NOT NULL,
        delivered INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX messages_room ON messages(room_id, id) WHERE room_id IS NOT NULL;
    CREATE INDEX messages_direct ON messages(recipient_id, sender_id, id)
        WHERE recipient_id IS NOT NULL;
    CREATE TABLE bans (
        address TEXT PRIMARY KEY,
        created_at REAL NOT NULL
    );
    """,
    # 2: a block remembers the contact status it replaced, so unblocking restores it
    # (seed 001's block/unblock over a seed 000/004 contact: one relation).
    """
    ALTER TABLE contacts ADD COLUMN status_before_block TEXT;
    """,
    # 3: secrets the daemon keeps across restarts (the one fake salts derive from)
    """
    CREATE TABLE secrets (
        name TEXT PRIMARY KEY,
        value BLOB NOT NULL
    );
    """,
    # 4: guest ids are never reused, even across restarts: the lowest one handed out is kept,
    # starting below any guest id the messages already name.
    """
    CREATE TABLE counters (
        name TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    );
    INSERT INTO counters (name, value)
        SELECT 'last_guest_id', MIN(0, COALESCE(MIN(sender_id), 0), COALESCE(MIN(recipient_id), 0))
        FROM messages;
    """,
    # 5: per-user read state (the web page's unread counts), login tokens that outlive a restart
    # (seed 004 session IDs, kept as SHA-256 digests), and an index for "every conversation of
    # a user", which reads the direct messages a user sent as well as those received.
    """
    CREATE TABLE read_marks (
        user_id INTEGER NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('user', 'room')),
        target_id INTEGER NOT NULL,
        last_read_id INTEGER NOT NULL,
        PRIMARY KEY (user_id, kind, target_id)
    ) WITHOUT ROWID;
    INSERT INTO read_marks (user_id, kind, target_id, last_read_id)
        SELECT recipient_id, 'user', sender_id, MAX(id) FROM messages
        WHERE recipient_id IS NOT NULL AND delivered = 1 GROUP BY recipient_id, sender_id;
    CREATE TABLE login_tokens (
        digest TEXT PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id),
        created_at REAL NOT NULL,
        last_used REAL NOT NULL
    );
    CREATE INDEX messages_sent ON messages(sender_id, recipient_id, id) WHERE recipient_id IS NOT NULL;
    """,
    # 6: names compare as IRC's CASEMAPPING=ascii does (model.fold): SQLite's lower() folds
    # A-Z only. Keys that were distinct stay distinct (ASCII folding is finer than casefold).
    """
    UPDATE users SET username_key = lower(username);
    UPDATE rooms SET name_key = lower(name);
    """,
    # 7: the newest room message an account was shown on IRC, so a reconnect replays only what
    # it missed.
    """
    CREATE TABLE last_seen (
        user_id INTEGER NOT NULL REFERENCES users(id),
        room_id INTEGER NOT NULL REFERENCES rooms(id),
        message_id INTEGER NOT NULL,
        PRIMARY KEY (user_id, room_id)
    );
    """,
]


def migrate(conn) -> int:
    """Bring ``conn``'s schema up to date; returns the version it ends at."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
    return len(MIGRATIONS)
