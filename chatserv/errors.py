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
