"""The events the domain publishes (``chatserv.bus``): plain, serialisable values.

An event names people and rooms by ``UserRef`` and ``RoomRef`` (an id and the name shown at
the time), never by the domain's mutable ``User`` and ``Room``: it carries no verifier or
salt, and ``encode``/``decode`` turn it into a dict of ids, names, text and times and back,
so that a bus can carry it to another node. An event is shared by every recipient, so a
protocol renders it once per wire variant with ``render_once`` and writes the same bytes to
each of its sessions.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from typing import ClassVar

import attrs

from chatserv.model import Message, RoomChange


@attrs.frozen
class UserRef:
    """Who, in an event: what every wire shows of a user."""

    id: int
    username: str

    @property
    def guest(self) -> bool:
        return self.id < 0

    @classmethod
    def of(cls, user) -> UserRef:
        if isinstance(user, dict):  # decoded
            return cls(**user)
        return user if isinstance(user, UserRef) else cls(user.id, user.username)


@attrs.frozen
class RoomRef:
    """Which room, in an event."""

    id: int
    name: str

    @classmethod
    def of(cls, room) -> RoomRef:
        return room if isinstance(room, RoomRef) else cls(room.id, room.name)


def _user(user) -> UserRef | None:
    return None if user is None else UserRef.of(user)


def _room(room) -> RoomRef | None:
    return None if room is None else RoomRef.of(room)


def _tags(tags) -> dict | None:
    return None if tags is None else dict(tags)


@attrs.frozen(eq=False)
class Event:
    # Bytes rendered for all recipients, per wire variant: never part of the value.
    _rendered: dict = attrs.field(factory=dict, init=False, repr=False)
    ends_session: ClassVar[bool] = False  # the session is closed once this is rendered

    def render_once(self, key, render: Callable[..., bytes], *args) -> bytes:
        """Return ``render(*args)``, computed once per ``key`` for all recipients of this event.

        Passing ``render``'s arguments, rather than a closure over them, makes the other
        recipients' calls cost no object at all (the fan-out hot path).
        """
        try:
            return self._rendered[key]
        except KeyError:
            data = self._rendered[key] = render(*args)
            return data


@attrs.frozen(eq=False)
class DirectMessage(Event):
    message: Message
    sender: UserRef = attrs.field(converter=UserRef.of)
    recipient: UserRef = attrs.field(converter=UserRef.of)
    # client-only tags (IRCv3 ``+name``), relayed live and never stored
    tags: dict | None = attrs.field(default=None, converter=_tags)


@attrs.frozen(eq=False)
class RoomMessage(Event):
    message: Message
    sender: UserRef = attrs.field(converter=UserRef.of)
    room: RoomRef = attrs.field(converter=RoomRef.of)
    # client-only tags (IRCv3 ``+name``), relayed live and never stored
    tags: dict | None = attrs.field(default=None, converter=_tags)


@attrs.frozen(eq=False)
class PresenceChanged(Event):
    user: UserRef = attrs.field(converter=UserRef.of)
    online: bool
    protocol: str
    reason: str = ""  # why the last session ended (an IRC QUIT message)
    # Coming online by a guest's session logging in: whoever saw the guest sees a rename
    # (Renamed) rather than this user arriving.
    renamed_from: UserRef | None = attrs.field(default=None, converter=_user)


@attrs.frozen(eq=False)
class Renamed(Event):
    """``user`` now goes by ``service.name_of(user)``; it was shown as ``old_name``.

    ``before`` is set when a guest logged in and became the account ``user``.
    """

    user: UserRef = attrs.field(converter=UserRef.of)
    old_name: str
    before: UserRef | None = attrs.field(default=None, converter=_user)


@attrs.frozen(eq=False)
class Typing(Event):
    user: UserRef = attrs.field(converter=UserRef.of)
    active: bool
    room: RoomRef | None = attrs.field(default=None, converter=_room)
    recipient: UserRef | None = attrs.field(default=None, converter=_user)
    # every client-only tag of an IRC TAGMSG that carried ``+typing``
    tags: dict | None = attrs.field(default=None, converter=_tags)


@attrs.frozen(eq=False)
class Tagged(Event):
    """Client-only tags sent on their own (an IRC TAGMSG: reactions, replies...): never stored."""

    user: UserRef = attrs.field(converter=UserRef.of)
    tags: dict = attrs.field(converter=dict)
    room: RoomRef | None = attrs.field(default=None, converter=_room)
    recipient: UserRef | None = attrs.field(default=None, converter=_user)


@attrs.frozen(eq=False)
class ContactChanged(Event):
    owner: UserRef = attrs.field(converter=UserRef.of)
    contact: UserRef = attrs.field(converter=UserRef.of)
    status: str | None  # None: the contact was removed
    previous: str | None = None  # the status before (None: there was no relation)


@attrs.frozen(eq=False)
class ReadMarked(Event):
    """``user`` read a conversation (with ``peer``, or in ``room``) up to message ``up_to``:
    their other sessions clear its unread count."""

    user: UserRef = attrs.field(converter=UserRef.of)
    up_to: int
    peer: UserRef | None = attrs.field(default=None, converter=_user)
    room: RoomRef | None = attrs.field(default=None, converter=_room)


@attrs.frozen(eq=False)
class MembershipChanged(Event):
    """Someone joined or left a room (``by`` set and ``joined`` false: a kick)."""

    room: RoomRef = attrs.field(converter=RoomRef.of)
    user: UserRef = attrs.field(converter=UserRef.of)
    joined: bool
    by: UserRef | None = attrs.field(default=None, converter=_user)
    reason: str = ""


def _change(change) -> RoomChange:
    """A room change as a plain value: its user (a role's holder) as a ``UserRef``."""
    if isinstance(change, dict):
        change = RoomChange(**change)
    return attrs.evolve(change, user=_user(change.user))


def _changes(changes) -> tuple[RoomChange, ...]:
    return tuple(_change(change) for change in changes)


@attrs.frozen(eq=False)
class RoomChanged(Event):
    """``by`` changed the room's settings or roles (``chatserv.model.RoomChange``)."""

    room: RoomRef = attrs.field(converter=RoomRef.of)
    by: UserRef = attrs.field(converter=UserRef.of)
    changes: tuple[RoomChange, ...] = attrs.field(converter=_changes)


@attrs.frozen(eq=False)
class Invited(Event):
    """``by`` invited ``user`` into ``room`` (told to the invited user)."""

    room: RoomRef = attrs.field(converter=RoomRef.of)
    by: UserRef = attrs.field(converter=UserRef.of)
    user: UserRef = attrs.field(converter=UserRef.of)


@attrs.frozen(eq=False)
class TopicChanged(Event):
    """``by`` set the topic of ``room`` to ``text``."""

    room: RoomRef = attrs.field(converter=RoomRef.of)
    by: UserRef = attrs.field(converter=UserRef.of)
    text: str


@attrs.frozen(eq=False)
class Kicked(Event):
    """The service ends this session (a second login where the protocol forbids two)."""

    ends_session: ClassVar[bool] = True
    reason: str


@attrs.frozen(eq=False)
class ServerShutdown(Event):
    ends_session: ClassVar[bool] = True
    reason: str = "server shutting down"


# the codec: an event as a dict of plain values (JSON-ready), and back

EVENT_TYPES: dict[str, type[Event]] = {cls.__name__: cls for cls in (
    DirectMessage, RoomMessage, PresenceChanged, Renamed, Typing, Tagged, ContactChanged,
    ReadMarked, MembershipChanged, RoomChanged, Invited, TopicChanged, Kicked, ServerShutdown)}
_VALUES = (UserRef, RoomRef, Message)  # the nested values an event field may hold


def _nested(cls) -> dict[str, type]:
    """Which of ``cls``'s fields hold a nested value, and of which class."""
    attrs.resolve_types(cls, globals())
    found = {}
    for field in attrs.fields(cls):
        kinds = typing.get_args(field.type) if isinstance(field.type, types.UnionType) else (field.type,)
        for kind in kinds:
            if kind in _VALUES:
                found[field.name] = kind
    return found


_NESTED = {name: _nested(cls) for name, cls in EVENT_TYPES.items()}


def encode(event: Event) -> dict:
    """``event`` as a dict of ids, names, text and times (``type``: its class)."""
    data = attrs.asdict(event, filter=lambda field, _: field.init, recurse=True)
    data["type"] = type(event).__name__
    return data


def decode(data: dict) -> Event:
    """The event ``encode`` gave ``data`` for; KeyError or TypeError if it is not one."""
    fields = dict(data)
    name = fields.pop("type")
    cls = EVENT_TYPES[name]
    for field, kind in _NESTED[name].items():
        if fields.get(field) is not None:
            fields[field] = kind(**fields[field])
    return cls(**fields)
