"""Typed domain failures.

The service raises these; every protocol maps them to its own reply codes in one table
(see ``chatserv.wire.ErrorTable``), never in scattered ifs and never by reading
the message: a table that must tell two failures apart names their classes. The broad
classes (``NotFound``, ``AlreadyExists``, ``Denied``, ``Invalid``...) stay the catch-alls,
so a table that only knows them keeps working when a narrower class is added.

A class's ``description`` is its message when none is given: plain words for logs and for
the tables that show the domain's own words (``lambda exc: exc.message``).
"""

from typing import ClassVar


class ChatError(Exception):
    """Base of every failure the service reports to a client."""

    description: ClassVar[str] = ""

    def __init__(self, message: str = ""):
        self.message = message or self.description or self.__class__.__name__
        super().__init__(self.message)


class NotFound(ChatError):
    """The named user, room, contact or message does not exist."""


class UserNotFound(NotFound):
    description = "no such user"


class RoomNotFound(NotFound):
    description = "no such room"


class ContactNotFound(NotFound):
    description = "not a contact"


class MemberNotFound(NotFound):
    """The user acted upon (made an operator, ...) is not in the room."""

    description = "not a member"


class AlreadyExists(ChatError):
    """A user or room of that name exists already."""


class UsernameTaken(AlreadyExists):
    description = "username taken"


class RoomExists(AlreadyExists):
    description = "room exists"


class NotLoggedIn(ChatError):
    """The request needs a logged-in session."""


class BadCredentials(ChatError):
    """Unknown user or wrong password (deliberately not told apart)."""


class Blocked(ChatError):
    """The recipient has blocked the sender."""


class Denied(ChatError):
    """The session may not do this (not a member, not the owner, spoofed sender...)."""


class NotMember(Denied):
    """The caller acts on a room it is not in."""

    description = "not a member"


class NotOperator(Denied):
    description = "not an operator"


class GuestDenied(Denied):
    """Guests (temporary names) have no contacts, blocks or anything else that is stored."""

    description = "guests have no contacts"


class Invalid(ChatError):
    """The request is malformed: bad name, empty body, wrong type, too long."""


class InvalidUsername(Invalid):
    description = "invalid username"


class ReservedUsername(InvalidUsername):
    description = "reserved username"


class EmptyPassword(Invalid):
    description = "empty password"


class InvalidRoomName(Invalid):
    description = "invalid room name"


class UnknownContactStatus(Invalid):
    description = "unknown contact status"


class ContactIsSelf(Invalid):
    """A user names themself as their own contact."""

    description = "that is you"


class EmptyMessage(Invalid):
    description = "empty message"


class MessageTooLong(Invalid):
    description = "message too long"


class Offline(ChatError):
    """The target user has no live session that can take the request."""


class RateLimited(ChatError):
    """The session sends faster than its limit allows."""


class LoginThrottled(RateLimited):
    """Too many failed logins from one address against one name: that pair waits."""

    description = "too many failed logins: try again later"


class Busy(ChatError):
    """The server cannot check a password now (too many logins in flight, or hashing failed):
    nothing was tried, so nothing counts against the caller; try again shortly."""


class TooManyRooms(ChatError):
    """Creating a room is refused: the creator's or its address's rate or cap, or ``--max-rooms``."""


class StoreUnavailable(ChatError):
    """The database cannot be reached or opened: nothing was stored, so nothing is acknowledged,
    and the same request can succeed once it is back. A client is told only that; ``str()``
    holds the details, for the log."""

    def __init__(self, detail: str):
        super().__init__("storage unavailable, try again later")
        self.args = (detail,)


# Room settings refusing a join or a message (every port that joins or speaks honours them),
# and what changing them may meet (chatserv.domain.room_settings).


class Banned(Denied):
    """A ban mask of the room matches the user: they may not join it."""

    description = "you are banned from this room"


class InviteOnly(Denied):
    """The room is invite-only and the user was not invited."""

    description = "this room is invite-only"


class WrongKey(Denied):
    """The room has a key and the user did not give it."""

    description = "this room needs a key"


class RoomFull(Denied):
    """The room has as many members as its limit allows."""

    description = "this room is full"


class CannotSend(Denied):
    """The room is moderated (or the sender is banned) and the sender has no voice there."""

    description = "you may not speak in this room"


class NotServerOperator(Denied):
    """Only a server operator (IRC's OPER) may do this."""

    description = "not a server operator"


class AlreadyMember(AlreadyExists):
    """The user invited is in the room already."""

    description = "already a member"


class InvalidRoomSetting(Invalid):
    """A room setting's value is not one it can take (a limit, a ban mask)."""


class InvalidKey(InvalidRoomSetting):
    description = "a key is 1-23 visible characters, no spaces or commas"


class ListFull(InvalidRoomSetting):
    """The room's ban list holds as many masks as it may."""

    description = "the room's ban list is full"
