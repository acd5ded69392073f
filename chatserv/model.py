"""The shared model: one of each, used by every protocol (DESIGN.md, "The shared model")."""

from __future__ import annotations

import fnmatch

import attrs

from chatserv.bus import Subscription

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
    # Who set the topic and when (IRC's 333); the settings below are IRC's channel modes.
    topic_by: str = ""
    topic_at: float = 0.0
    invite_only: bool = False  # joining needs an invitation
    key: str = ""  # joining needs this key (empty: none)
    limit: int = 0  # members at most (0: no limit)
    moderated: bool = False  # only operators and voiced members speak
    secret: bool = False  # not listed, and not shown to non-members
    no_external: bool = True  # only members speak
    topic_locked: bool = True  # only operators change the topic
    operators: set[int] = attrs.field(factory=set)  # granted by an operator (the founder is one anyway)
    voiced: set[int] = attrs.field(factory=set)
    bans: dict[str, RoomBan] = attrs.field(factory=dict)  # fold(mask) -> RoomBan

    @property
    def founder(self) -> int | None:
        """The account that created the room: an operator whenever it is in it."""
        return self.created_by


# The settings of a room that are a yes or a no, and those that hold a value.
ROOM_FLAGS = ("invite_only", "moderated", "secret", "no_external", "topic_locked")
ROOM_VALUES = ("key", "limit")
ROOM_ROLES = ("operator", "voice")


@attrs.frozen
class RoomInfo:
    """What a port may show of a room's settings, as they are now (``ChatService.room_info``)."""

    invite_only: bool
    key: str
    limit: int
    moderated: bool
    secret: bool
    no_external: bool
    topic_locked: bool
    topic_by: str
    topic_at: float


@attrs.frozen
class RoomBan:
    """A ban mask (``nick!user@host``, ``*`` and ``?`` wildcards), who set it and when."""

    mask: str
    set_by: str
    set_at: float

    def matches(self, name: str) -> bool:
        """Hosts and user names are not told apart here (every user shows the same host):
        the nick part is matched against the user's name, the user part too, and the host
        part only bans anyone when it is all wildcards."""
        nick, _, rest = self.mask.partition("!")
        ident, _, host = rest.partition("@")
        key = fold(name)
        return (fnmatch.fnmatchcase(key, _glob(nick)) and fnmatch.fnmatchcase(key, _glob(ident or "*"))
                and not (host or "*").strip("*"))


def _glob(pattern: str) -> str:
    """An IRC mask part as an fnmatch pattern: only ``*`` and ``?`` are special."""
    return fold(pattern).replace("[", "[[]")


@attrs.frozen
class RoomChange:
    """One change to a room's settings.

    ``setting`` is one of ROOM_FLAGS (``value`` a bool), ROOM_VALUES (the new key or limit;
    empty or 0 unsets it), ROOM_ROLES (``user`` gains it, or with ``value`` False loses it)
    or ``ban`` (``mask`` is added, or removed with ``value`` False).
    """

    setting: str
    value: bool | int | str = True
    user: User | None = None
    mask: str = ""


@attrs.define(eq=False)
class Session:
    """One live connection (or REST session) of a user on one protocol. ``subscribes``: what
    its sink renders (``chatserv.bus.Subscription``), beyond what every sink hears."""

    id: int
    user: User
    protocol: str
    address: str
    sink: object
    subscribes: Subscription = Subscription.DIRECT
    server_operator: bool = False  # may manage every room (see RoomSettings.make_server_operator)


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
    ``oldest``: the oldest ``limit`` of them rather than the newest. ``around_id`` (or
    ``around``, a time): the ``limit`` around that point instead, ``(limit - 1) // 2`` of them
    before it and the rest from it on."""

    after_id: int | None = None
    before_id: int | None = None
    since: float | None = None
    until: float | None = None
    oldest: bool = False
    around_id: int | None = None
    around: float | None = None

    def around_point(self) -> tuple[str, float] | None:
        """The column and value of the point an "around" query centres on, if it is one."""
        if self.around_id is not None:
            return "id", self.around_id
        if self.around is not None:
            return "sent_at", self.around
        return None


@attrs.frozen
class Snapshot:
    """What a store hands the service at start: the small tables, held in memory."""

    users: list[User]
    rooms: list[Room]
    contacts: list[tuple[int, int, str, str | None]]  # owner, contact, status, status before a block
    bans: list[str]
    salt_secret: bytes  # kept in the store: fake salts for unknown names derive from it
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
