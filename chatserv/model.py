"""The shared model: one of each, used by every protocol (DESIGN.md, "The shared model")."""

from __future__ import annotations

import attrs

CONTACT_STATUSES = frozenset({"friend", "new", "blocked", "last_words", "timeout"})
LOBBY = "lobby"


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def fold(name: str) -> str:
    """The key under which user and room names are unique: ASCII letters compare without case.

    IRC's ``CASEMAPPING=ascii``, which every client implements: ``#Straße`` and ``#STRASSE``
    are two rooms, as IRC clients expect, and only A-Z/a-z are folded.
    """
    return name.translate(_ASCII_LOWER)


@attrs.define(eq=False)
class User:
    """An account. Guests (temporary names) have negative ids and are never stored."""

    id: int
    username: str
    salt: str
    verifier: str | None
    created_at: float
    public_key: str | None = None

    @property
    def guest(self) -> bool:
        return self.id < 0


@attrs.define(eq=False)
class Room:
    """A named room: seed 003 rooms, seed 004 groups and IRC channels are all rooms.

    A room a guest created is not ``persistent``: it is never stored and vanishes once empty.
    """

    id: int
    name: str
    created_by: int | None
    created_at: float
    topic: str = ""
    members: set[int] = attrs.field(factory=set)
    persistent: bool = True


@attrs.frozen
class Message:
    """A stored message to one user (``recipient_id``) or to one room (``room_id``)."""

    id: int
    sender_id: int
    sender_name: str
    body: str
    sent_at: float
    kind: str = "text"
    recipient_id: int | None = None
    room_id: int | None = None
    delivered: bool = False

    @property
    def is_direct(self) -> bool:
        return self.recipient_id is not None


@attrs.frozen
class HistoryBounds:
    """Which stored messages a history query wants: ids strictly between ``after_id`` and
    ``before_id``, sent at or after ``since`` and before ``until`` (seconds); None is open.
    ``oldest``: the oldest ``limit`` of them rather than the newest."""

    after_id: int | None = None
    before_id: int | None = None
    since: float | None = None
    until: float | None = None
    oldest: bool = False


@attrs.frozen
class Snapshot:
    """What a store hands the service at start: the small tables, held in memory."""

    users: list[User]
    rooms: list[Room]
    contacts: list[tuple[int, int, str, str | None]]  # owner, contact, status, status before a block
    bans: list[str]
    next_user_id: int
    next_room_id: int
    next_message_id: int
    salt_secret: bytes  # kept in the store: fake salts for unknown names derive from it
    last_guest_id: int = 0  # the lowest guest id ever handed out: guest ids are never reused
    # Live login tokens: (SHA-256 digest of the token, user id, created at, last used).
    tokens: list[tuple[str, int, float, float]] = attrs.field(factory=list)


@attrs.frozen
class Conversation:
    """One conversation of a user, as the web page lists it: with a person or in a room.

    ``unread`` counts the messages from others after the user's read mark (see
    ``ChatService.mark_read``); a room the user never marked read counts none.
    """

    last: Message | None
    unread: int
    peer: User | None = None
    room: Room | None = None

    @property
    def last_id(self) -> int:
        return self.last.id if self.last is not None else 0
