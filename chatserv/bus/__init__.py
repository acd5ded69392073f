"""The publish seam: the domain hands every live event to ``IBus.publish(event, audience)``.

An ``Audience`` names who should hear an event in terms any node can resolve (user ids, a
room id, the people who hear a user's presence), never by the sessions of one process. A
sink declares what it renders (``Subscription``); the bus hands it only that. ``LocalBus``
(``chatserv.bus.local``) delivers to the sessions of this process; a bus that carries events
between nodes implements the same interface and hands what arrives to a local bus.
"""

from __future__ import annotations

import enum

import attrs
from zope.interface import Interface


class Subscription(enum.Flag):
    """What a sink renders beyond what every sink hears (its rooms' traffic, its own user's
    events and contacts' comings and goings)."""

    NONE = 0
    DIRECT = enum.auto()  # direct messages, live: showing one delivers it
    # Direct messages, live, but delivered only once the sink says so (``mark_delivered``): a
    # wire whose pushes can fail (seed 001 connects to its client) leaves them in the inbox.
    DIRECT_PUSHED = enum.auto()
    PRESENCE = enum.auto()  # everyone's comings and goings
    # Room-mates' comings and goings (IRC's JOIN and QUIT lines): a login costs one delivery
    # per room-mate, not one per connection.
    ROOM_PRESENCE = enum.auto()


HEARS_DIRECT = Subscription.DIRECT | Subscription.DIRECT_PUSHED


@attrs.frozen
class Audience:
    """Who hears an event: the union of what is set, less the ``skip_*``.

    ``users``: these users' sessions. ``room``: the room's members. ``presence_of``: whoever
    hears that user come and go (their contacts' owners, sessions watching them, room-mates
    subscribed to room presence, sessions subscribed to everyone's). ``sessions``: these
    sessions of this node (a kick). ``skip_blockers_of``: not the users who blocked that one.
    ``skip_session``: not that session (the origin, which has its own reply).
    """

    users: frozenset[int] = frozenset()
    room: int | None = None
    presence_of: int | None = None
    sessions: frozenset[int] = frozenset()
    skip_blockers_of: int | None = None
    skip_session: int | None = None

    def encode(self) -> dict:
        data = attrs.asdict(self)
        data["users"], data["sessions"] = sorted(self.users), sorted(self.sessions)
        return data

    @classmethod
    def decode(cls, data: dict) -> Audience:
        return cls(**{**data, "users": frozenset(data["users"]), "sessions": frozenset(data["sessions"])})


def to_users(*user_ids: int, skip_session: int | None = None) -> Audience:
    return Audience(users=frozenset(user_ids), skip_session=skip_session)


def to_room(room_id: int, *, skip_session: int | None = None,
            skip_blockers_of: int | None = None) -> Audience:
    return Audience(room=room_id, skip_session=skip_session, skip_blockers_of=skip_blockers_of)


class IDirectory(Interface):
    """What a bus asks the domain to resolve an audience (answered from the node's cache)."""

    def room_members(room_id):
        """The ids of the room's members (empty if there is no such room)."""

    def rooms_of(user_id):
        """The ids of the rooms the user is in."""

    def contact_owners(user_id):
        """The ids of the users who keep ``user_id`` as a contact (any status)."""

    def blockers_of(user_id):
        """The ids of the users who blocked ``user_id``."""


class IBus(Interface):
    def publish(event, audience):
        """Hand ``event`` to every session ``audience`` names that subscribes to it; the number
        of sessions of this node it was handed to."""

    def subscribe(session):
        """``session`` (its user and sink, and ``session.subscribes``) hears events from now."""

    def unsubscribe(session):
        """``session`` hears nothing more."""

    def watch_presence(session, user_ids):
        """``session`` also hears when these users come and go."""

    def unwatch(user_id):
        """Nobody watches this user any more: a guest that has gone for good (ids are never
        reused), so that watching it keeps nothing."""

    def sessions_of(user_id):
        """The user's sessions on this node."""

    def users_online():
        """The ids of the users online on any node."""

    def is_online(user_id):
        """Whether the user has a session on any node."""

    def remote_user(user_id):
        """A ``UserRef`` for a user online only on another node, else None."""

    def names_elsewhere():
        """``UserRef``s of the users online on other nodes, by the name they go by there."""

    def protocols_elsewhere(user_id):
        """The protocols the user is connected with on other nodes."""

    def claim_name(key, user_id):
        """A Deferred: True if the name folded to ``key`` is now ``user_id``'s on every node (an
        IRC nick, a guest's name), False if another user holds it."""

    def release_name(key, user_id):
        """``user_id`` no longer goes by the name folded to ``key`` (nothing if it did not)."""

    def notify(kind, data):
        """Tell the other nodes that something they cache changed (``chatserv.nodes.Replica``):
        ``user`` (an id), ``room`` (its fields), ``alias`` ([user id, name]), ``ban``/``unban``
        (an address), ``token``/``token_dropped`` (a REST session ID's digest), ``login`` (a
        password check, for the shared login throttle)."""


__all__ = ["Audience", "HEARS_DIRECT", "IBus", "IDirectory", "Subscription", "to_room", "to_users"]
