"""Typed events the service delivers to session sinks (``sink.deliver(event)``).

An event is shared by every recipient, so a protocol renders it once per wire variant with
``render_once`` and writes the same bytes to each of its sessions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import attrs

from chatserv.model import Message, Room, RoomChange, User


@attrs.define(eq=False)
class Event:
    _rendered: dict = attrs.field(factory=dict, init=False, repr=False)
    ends_session: ClassVar[bool] = False  # the session is closed once this is rendered

    def render_once(self, key, render: Callable[[], bytes]) -> bytes:
        """Return ``render()``, computed once per ``key`` for all recipients of this event."""
        try:
            return self._rendered[key]
        except KeyError:
            data = self._rendered[key] = render()
            return data


@attrs.define(eq=False)
class DirectMessage(Event):
    message: Message
    sender: User
    recipient: User
    tags: dict | None = None  # client-only tags (IRCv3 ``+name``), relayed live and never stored


@attrs.define(eq=False)
class RoomMessage(Event):
    message: Message
    sender: User
    room: Room
    tags: dict | None = None  # client-only tags (IRCv3 ``+name``), relayed live and never stored


@attrs.define(eq=False)
class PresenceChanged(Event):
    user: User
    online: bool
    protocol: str
    reason: str = ""  # why the last session ended (an IRC QUIT message)
    # Coming online by a guest's session logging in: whoever saw the guest sees a rename
    # (Renamed) rather than this user arriving.
    renamed_from: User | None = None


@attrs.define(eq=False)
class Renamed(Event):
    """``user`` now goes by ``service.name_of(user)``; it was shown as ``old_name``.

    ``before`` is set when a guest logged in and became the account ``user``.
    """

    user: User
    old_name: str
    before: User | None = None


@attrs.define(eq=False)
class Typing(Event):
    user: User
    active: bool
    room: Room | None = None
    recipient: User | None = None
    tags: dict | None = None  # every client-only tag of an IRC TAGMSG that carried ``+typing``


@attrs.define(eq=False)
class Tagged(Event):
    """Client-only tags sent on their own (an IRC TAGMSG: reactions, replies...): never stored."""

    user: User
    tags: dict
    room: Room | None = None
    recipient: User | None = None


@attrs.define(eq=False)
class ContactChanged(Event):
    owner: User
    contact: User
    status: str | None  # None: the contact was removed
    previous: str | None = None  # the status before (None: there was no relation)


@attrs.define(eq=False)
class ReadMarked(Event):
    """``user`` read a conversation (with ``peer``, or in ``room``) up to message ``up_to``:
    their other sessions clear its unread count."""

    user: User
    up_to: int
    peer: User | None = None
    room: Room | None = None


@attrs.define(eq=False)
class MembershipChanged(Event):
    """Someone joined or left a room (``by`` set and ``joined`` false: a kick)."""

    room: Room
    user: User
    joined: bool
    by: User | None = None
    reason: str = ""


@attrs.define(eq=False)
class RoomChanged(Event):
    """``by`` changed the room's settings or roles (``chatserv.model.RoomChange``)."""

    room: Room
    by: User
    changes: tuple[RoomChange, ...]


@attrs.define(eq=False)
class Invited(Event):
    """``by`` invited ``user`` into ``room`` (told to the invited user)."""

    room: Room
    by: User
    user: User


@attrs.define(eq=False)
class TopicChanged(Event):
    room: Room
    by: User


@attrs.define(eq=False)
class Kicked(Event):
    """The service ends this session (a second login where the protocol forbids two)."""

    ends_session: ClassVar[bool] = True
    reason: str


@attrs.define(eq=False)
class ServerShutdown(Event):
    ends_session: ClassVar[bool] = True
    reason: str = "server shutting down"
