"""Typed domain failures.

The service raises these; every protocol maps them to its own reply codes in one table
(see ``chatserv.protocols.base.ErrorTable``), never in scattered ifs.
"""


class ChatError(Exception):
    """Base of every failure the service reports to a client."""

    def __init__(self, message: str = ""):
        super().__init__(message or self.__class__.__name__)
        self.message = message or self.__class__.__name__


class NotFound(ChatError):
    """The named user, room, contact or message does not exist."""


class AlreadyExists(ChatError):
    """A user or room of that name exists already."""


class NotLoggedIn(ChatError):
    """The request needs a logged-in session."""


class BadCredentials(ChatError):
    """Unknown user or wrong password (deliberately not told apart)."""


class Blocked(ChatError):
    """The recipient has blocked the sender."""


class Denied(ChatError):
    """The session may not do this (not a member, not the owner, spoofed sender...)."""


class Invalid(ChatError):
    """The request is malformed: bad name, empty body, wrong type, too long."""


class Offline(ChatError):
    """The target user has no live session that can take the request."""


class RateLimited(ChatError):
    """The session sends faster than its limit allows."""


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


# Room settings refusing a join or a message (every port that joins or speaks honours them).


class Banned(Denied):
    """A ban mask of the room matches the user: they may not join it."""


class InviteOnly(Denied):
    """The room is invite-only and the user was not invited."""


class WrongKey(Denied):
    """The room has a key and the user did not give it."""


class RoomFull(Denied):
    """The room has as many members as its limit allows."""


class CannotSend(Denied):
    """The room is moderated (or the sender is banned) and the sender has no voice there."""


class NotOperator(Denied):
    """Only a room operator (or a server operator) may do this."""


class InvalidKey(Invalid):
    """A room key must be 1-23 visible characters without spaces or commas."""


class ListFull(Invalid):
    """The room's ban list holds as many masks as it may."""
