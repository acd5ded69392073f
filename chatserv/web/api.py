"""What the REST and Socket.IO halves of seed 004 share: the error table, the JSON shapes.

Both halves speak JSON and say ``{"error": ...}`` (REST, status 400) or ``error {message}``
(Socket.IO); ``ERRORS.reply(exc)`` gives ``(status, text)`` for either.
"""

from __future__ import annotations

import datetime

from chatserv import errors, events
from chatserv.model import Conversation, Message, Room, User
from chatserv.service import ChatService
from chatserv.wire import BadRequest, ErrorTable


class TooLarge(BadRequest):
    """A body or frame over the port's bound."""


ERRORS = ErrorTable({
    TooLarge: lambda e: (413, e.message),
    BadRequest: lambda e: (400, e.message),
    errors.BadCredentials: (400, "Invalid username or password"),
    errors.UserNotFound: (400, "User not found"),
    errors.RoomNotFound: (400, "Group not found"),
    errors.UsernameTaken: (400, "Username already exists"),
    errors.Blocked: (400, "You are blocked by this user"),
    errors.Busy: (503, "Server busy, try again"),
    errors.ChatError: lambda e: (400, e.message),
})


def iso_time(seconds: float) -> str:
    """ISO 8601 in UTC, as the front end parses it."""
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat().replace("+00:00", "Z")


MAX_ID = 2**63 - 1  # ids are SQLite integers: a larger one must not reach the store


def whole_number(value) -> int | None:
    """An int from JSON, or a string of ASCII digits that is one (``str.isdigit`` also takes
    "²", which ``int`` refuses); else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 19:
        return int(value)
    return None


def user_reference(service: ChatService, value) -> User:
    """A user named by id (an integer, or its digits) or by username: ``contactID`` is either."""
    if isinstance(value, bool):
        raise BadRequest("contact must be a user id or a username")
    if whole_number(value) is not None:
        return service.user_by_id(whole_number(value))
    if isinstance(value, str) and value:
        return service.user(value)
    raise BadRequest("contact must be a user id or a username")


def contact_entry(user: User, status: str) -> dict:
    return {"contact_id": user.id, "name": user.username, "url": "", "status": status}


def presence_entry(user: User, online: bool) -> dict:
    """The ``user_status`` event's shape, for ``/getPresence`` (the page starts from it)."""
    return {"user_id": user.id, "username": user.username, "status": "online" if online else "offline"}


def group_entry(room: Room) -> dict:
    return {"group_id": room.id, "name": room.name}


def history_entry(message: Message) -> dict:
    """A stored message as history lists it; ``type`` is ``text``, or IRC's ``action`` (/me)
    and ``notice``."""
    return {"message_id": message.id, "content": message.body, "sender_user_id": message.sender_id,
            "sender_username": message.sender_name, "type": message.kind,
            "send_at": iso_time(message.sent_at)}


def conversation_entry(conversation: Conversation, status: str | None, online: bool) -> dict:
    """One ``/getConversations`` entry: ``kind`` ``user`` (``status`` the contact status, or
    None for someone who is not a contact) or ``group``."""
    last = history_entry(conversation.last) if conversation.last is not None else None
    if conversation.room is not None:
        return {"kind": "group", "id": conversation.room.id, "name": conversation.room.name,
                "last_message": last, "unread": conversation.unread}
    peer = conversation.peer
    return {"kind": "user", "id": peer.id, "name": peer.username, "contact_status": status,
            "status": "online" if online else "offline", "last_message": last,
            "unread": conversation.unread}


def read_entry(event: events.ReadMarked) -> dict:
    """The ``conversation_read`` event's payload: a session of the user read that far."""
    kind, target = ("group", event.room.id) if event.room is not None else ("user", event.peer.id)
    return {"kind": kind, "id": target, "last_read_id": event.up_to}


def new_message(message: Message) -> dict:
    """The ``new_message`` event's payload; ``recipient_id`` names the conversation."""
    return {
        "message_id": message.id,
        "sender_id": message.sender_id,
        "sender_username": message.sender_name,
        "content": message.body,
        "type": message.kind,
        "timestamp": iso_time(message.sent_at),
        "is_group": not message.is_direct,
        "recipient_id": message.recipient_id if message.is_direct else message.room_id,
    }
