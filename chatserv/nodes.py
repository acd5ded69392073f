"""One node of a cluster: what this node's domain does with what other nodes did.

Nodes share the store (the source of truth) and a Redis bus (``chatserv.bus.redis``). Each
node caches users, rooms, memberships, contacts and blocks, operators, topics and bans; when
another node changes one, its event (or, where no event is published, a notice:
``RedisBus.notify``) reaches this node's ``Replica``, which updates the cache (from the event,
or from the store) before or after this node's sessions hear the event, as the origin did.
After a Redis outage, ``catch_up`` delivers from the store the messages this node missed.

``nodes_check`` refuses at start what cannot work: several nodes (or ``--workers``) need a
shared store and a shared bus.
"""

from __future__ import annotations

import os
import socket

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from chatserv import events
from chatserv.bus import to_room, to_users
from chatserv.model import ROOM_FLAGS, ROOM_VALUES, Room, User, fold
from chatserv.store import POSTGRESQL_SCHEMES

log = Logger()

CATCH_UP_PAGE = 500
# What the store keeps of a room beside its members, roles and bans.
_ROOM_SETTINGS = ("topic", "topic_by", "topic_at", *ROOM_FLAGS, *ROOM_VALUES)


def default_node_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def nodes_check(db: str, bus: str, workers: int) -> None:
    """ValueError, saying what to do, if these options cannot work together."""
    shared_store = db.startswith(POSTGRESQL_SCHEMES)
    if workers < 1:
        raise ValueError("--workers: give 1 or more processes")
    if bus != "local" and not shared_store:
        raise ValueError(f"--bus {bus} needs a store every node shares: give --db postgresql://... "
                         f"(not {db!r}: each node would have its own)")
    if workers > 1 and (bus == "local" or not shared_store):
        raise ValueError("--workers needs a shared store and bus: give --db postgresql://... and "
                         "--bus redis://host:port/db")


class Replica:
    """The domain's side of ``RedisBus.observer``."""

    def __init__(self, chat, bus):
        self.chat = chat
        self.bus = bus
        self._catching_up: Deferred | None = None
        self._held: list | None = None  # what waits for an account being read (``_in_order``)
        # one login throttle for the cluster: each node counts the others' checks too
        chat.throttle.on_outcome = lambda *outcome: bus.notify("login", list(outcome))

    # events another node published

    def remote(self, event, deliver) -> None:
        apply = getattr(self, f"_{type(event).__name__}", None)
        if apply is None:
            self._in_order(deliver)
        else:
            self._in_order(lambda: apply(event, deliver))

    def _in_order(self, work) -> None:
        """Do ``work`` now, or after the account being read from the store (and what waits for
        it), so that nothing another node did after making an account finds it missing here."""
        if self._held is None:
            work()
        else:
            self._held.append(work)

    def _release(self, _=None) -> None:
        held, self._held = self._held or [], None
        for done, work in enumerate(held, 1):
            work()
            if self._held is not None:  # it reads another account: the rest wait again
                self._held.extend(held[done:])
                return

    def _DirectMessage(self, event, deliver):
        self._deliver_direct(event.message, deliver)

    def _RoomMessage(self, event, deliver):
        self.chat._newest[event.room.id] = event.message.id
        deliver()

    def _MembershipChanged(self, event, deliver):
        chat, room = self.chat, self.chat._rooms_by_id.get(event.room.id)
        if room is None:
            self._refresh_room(event.room.id).addCallback(lambda _: deliver())
            return
        if event.joined:
            if event.user.id not in room.members:
                chat._joined(room, event.user, chat._founds(room, event.user))
                room.members.add(event.user.id)
                chat._rooms_of[event.user.id].add(room)
            deliver()
        else:
            deliver()
            if event.user.id in room.members:
                chat._left(room, event.user)
                chat._drop_member(room, event.user.id)

    def _RoomChanged(self, event, deliver):
        room = self.chat._rooms_by_id.get(event.room.id)
        if room is not None:
            at = self.chat.clock.seconds()
            for change in event.changes:
                self.chat._apply(room, event.by, change, at)
        deliver()

    def _Invited(self, event, deliver):
        self.chat._invites.setdefault(event.user.id, set()).add(event.room.id)
        deliver()

    def _TopicChanged(self, event, deliver):
        room = self.chat._rooms_by_id.get(event.room.id)
        if room is not None:
            room.topic, room.topic_by = event.text, event.by.username
            room.topic_at = self.chat.clock.seconds()
        deliver()

    def _ContactChanged(self, event, deliver):
        owner, contact = event.owner.id, event.contact.id
        if event.status is None:
            self.chat.contacts_cache.remove(owner, contact)
        else:
            before_block = event.previous if event.status == "blocked" else None
            self.chat.contacts_cache.set(owner, contact, event.status, before_block)
        deliver()

    def _Renamed(self, event, deliver):
        if event.user.guest:  # a guest's name is its username: the one the bus knows it by
            self.bus.renamed(event.user)
        deliver()

    def _PresenceChanged(self, event, deliver):
        deliver()
        if not event.online:  # gone from every node: as a local logout does
            user = event.user
            self.chat._drop_alias(user)
            if user.guest:  # a guest that is gone is gone for good
                self.bus.local.unwatch(user.id)
                for room in list(self.chat._rooms_of.get(user.id, ())):
                    self.chat._drop_member(room, user.id)

    # notices: changes no event carries

    def changed(self, kind: str, data) -> None:
        handle = getattr(self, f"_changed_{kind}", None)
        if handle is not None:
            self._in_order(lambda: handle(data))

    def _changed_user(self, user_id) -> None:
        self._held = [] if self._held is None else self._held
        read = self.chat.store.user_by_id(user_id).addCallbacks(self._user_loaded, self._not_read)
        read.addCallback(self._release)

    def _user_loaded(self, stored: User | None):
        if stored is None:
            return
        chat = self.chat
        cached = chat._users.get(stored.id)
        if cached is None:
            chat._users[stored.id] = stored
            chat._user_keys[fold(stored.username)] = stored
        else:  # sessions hold this object: change it in place
            cached.verifier, cached.public_key = stored.verifier, stored.public_key

    def _changed_room(self, fields):
        chat = self.chat
        if fields["id"] in chat._rooms_by_id:
            return
        room = Room(**fields)
        chat._rooms[fold(room.name)] = chat._rooms_by_id[room.id] = room
        if room.created_by is not None:
            chat._created_by[room.created_by].add(room)
        chat.room_arrived(room)

    def _refresh_room(self, room_id) -> Deferred:
        """A room this node has not heard of (its notice was lost in an outage): from the store."""
        def loaded(room):
            chat = self.chat
            if room is not None and room.id not in chat._rooms_by_id:
                chat._rooms[fold(room.name)] = chat._rooms_by_id[room.id] = room
                for user_id in room.members:
                    chat._rooms_of[user_id].add(room)

        return self.chat.store.room_by_id(room_id).addCallbacks(loaded, self._not_read)

    def _changed_alias(self, data):
        user_id, name = data
        user = self.chat._users.get(user_id)
        if user is None:
            return
        self.chat._drop_alias(user)
        if name != user.username:
            self.chat._aliases[fold(name)] = user
            self.chat._alias_of[user_id] = name

    def _changed_token(self, data):
        digest, user_id, created_at, last_used = data

        user = self.chat._users.get(user_id)
        if user is not None:
            for sessions in self.chat.token_watchers:
                sessions.adopt(digest, user, created_at, last_used)

    def _changed_token_dropped(self, digest):
        for sessions in self.chat.token_watchers:
            sessions.dropped(digest)

    def _changed_login(self, data):
        self.chat.throttle.counted_elsewhere(*data)

    def _changed_shown(self, message_id):
        self.chat.note_shown(message_id)

    def _changed_ban(self, address):
        self.chat.bans.add(address)

    def _changed_unban(self, address):
        self.chat.bans.discard(address)

    def _not_read(self, failure):
        log.warn("cannot read what another node changed: {why}", why=failure.getErrorMessage())

    # what was missed while the bus was away

    def refresh(self) -> Deferred:
        """The small tables again from the store: what other nodes changed while this node
        could not hear of it (accounts, rooms and their members and settings, contacts, bans)."""
        return self.chat.store.snapshot().addCallbacks(self._refreshed, self._not_read)

    def _refreshed(self, snapshot) -> None:
        chat = self.chat
        for stored in snapshot.users:
            self._user_loaded(stored)
        cache, fresh = chat.contacts_cache, {(o, c): (s, b) for o, c, s, b in snapshot.contacts}
        for owner, contact in cache.pairs():
            if (owner, contact) not in fresh:
                cache.remove(owner, contact)
        for (owner, contact), (status, before_block) in fresh.items():
            cache.set(owner, contact, status, before_block)
        chat.bans.clear()
        chat.bans.update(snapshot.bans)
        for stored in snapshot.rooms:
            self._room_refreshed(stored)

    def _room_refreshed(self, stored: Room) -> None:
        chat, room = self.chat, self.chat._rooms_by_id.get(stored.id)
        if room is None:
            chat._rooms[fold(stored.name)] = chat._rooms_by_id[stored.id] = stored
            for user_id in stored.members:
                chat._rooms_of[user_id].add(stored)
            return
        guests = {user_id for user_id in room.members if user_id < 0}  # never stored: kept as they are
        for user_id in room.members - stored.members - guests:
            chat._drop_member(room, user_id)
        for user_id in stored.members - room.members:
            room.members.add(user_id)
            chat._rooms_of[user_id].add(room)
        for field in _ROOM_SETTINGS:
            setattr(room, field, getattr(stored, field))
        room.operators = stored.operators | (room.operators & guests)
        room.voiced = stored.voiced | (room.voiced & guests)
        room.bans = stored.bans


    def catch_up(self, after_id: int) -> Deferred:
        """Deliver, once each, the stored messages with ids above ``after_id`` that this node has
        not delivered: those other nodes stored while the bus could not carry them."""
        if self._catching_up is not None:  # one at a time; the one running reads to the end
            return self._catching_up
        d = self._catching_up = self._page(after_id)
        d.addErrback(self._not_read)
        d.addBoth(self._caught_up)
        return d

    def _caught_up(self, result):
        self._catching_up = None
        return result

    def _page(self, after_id: int) -> Deferred:
        d = self.chat.store.messages_after(after_id, CATCH_UP_PAGE)
        d.addCallback(self._replay)
        return d

    def _replay(self, messages):
        for message in messages:
            if self.bus.seen(message.id):
                self.bus.stats["caught_up"] += 1
                self._replay_one(message)
        if len(messages) == CATCH_UP_PAGE:
            return self._page(messages[-1].id)
        return None

    def _replay_one(self, message) -> None:
        chat, sender = self.chat, events.UserRef(message.sender_id, message.sender_name)
        if message.room_id is not None:
            room = chat._rooms_by_id.get(message.room_id)
            if room is not None:
                chat._newest[room.id] = message.id
                self.bus.local.publish(events.RoomMessage(message, sender, room),
                                       to_room(room.id, skip_blockers_of=sender.id))
            return
        recipient = chat._users.get(message.recipient_id) or self.bus.remote_user(message.recipient_id)
        if recipient is None:
            return
        event = events.DirectMessage(message, sender, recipient)
        self._deliver_direct(message, lambda: self.bus.local.publish(
            event, to_users(message.recipient_id, message.sender_id)))

    def _deliver_direct(self, message, deliver) -> None:
        """Deliver a direct message here; if a session here showed it live, the store says it
        was delivered, so the recipient's next login does not show it again."""
        deliver()
        self.chat.shown_live(message)

__all__ = ["Replica", "default_node_name", "nodes_check"]
