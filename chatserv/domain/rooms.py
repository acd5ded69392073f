"""Rooms: names, membership, topics and the limits on creating them (their settings and
roles: ``chatserv.domain.room_settings``). A mixin of ``ChatService``."""

from __future__ import annotations

import collections
import re

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from chatserv import errors, events
from chatserv.domain.common import deferred, keepable
from chatserv.limits import RateTable
from chatserv.model import LOBBY, Room, Session, User, fold

log = Logger()

# Seconds a node waits for a guest room another node claimed the name of (its notice).
ROOM_ARRIVAL_TIMEOUT = 10.0
_ROOM = re.compile(r"[^\s,:#\x00-\x1f\x7f][^\s,\x00-\x1f\x7f]{0,49}\Z")


class Rooms:
    def _init_rooms(self):
        self._rooms: dict[str, Room] = {}
        self._rooms_by_id: dict[int, Room] = {}
        # Indexes, so that nothing done for one user costs time in proportion to all rooms.
        self._rooms_of: dict[int, set[Room]] = collections.defaultdict(set)  # by member id
        self._created_by: dict[int, set[Room]] = collections.defaultdict(set)  # by creator id
        self._created_from: dict[str, set[Room]] = collections.defaultdict(set)  # by creator address
        self._creation: dict[Room, tuple[int, str]] = {}  # room -> (creator id, address)
        lim = self.limits
        self._user_room_rate = RateTable(self.clock, lim.room_rate_per_user, lim.room_burst_per_user)
        self._address_room_rate = RateTable(self.clock, lim.room_rate_per_address, lim.room_burst_per_address)
        self._creating: dict[str, list[Deferred]] = {}  # rooms being created while the store writes them
        self._arriving: dict[str, Deferred] = {}  # guest rooms another node is creating

    def _load_rooms(self, snapshot) -> Deferred | None:
        """Deferred: the lobby is made, when the store had none."""
        for room in snapshot.rooms:
            self._rooms[fold(room.name)] = self._rooms_by_id[room.id] = room
            for uid in room.members:
                self._rooms_of[uid].add(room)
            if room.created_by is not None:
                self._created_by[room.created_by].add(room)
        if fold(LOBBY) not in self._rooms:
            return Deferred.fromCoroutine(self._new_room(LOBBY, None))
        return None

    def room(self, name) -> Room:
        room = self._rooms.get(fold(name)) if isinstance(name, str) else None
        if room is None:
            raise errors.RoomNotFound()
        return room

    def room_by_id(self, room_id) -> Room:
        """The room with that id (seed 004 names groups by id), else NotFound."""
        room = self._rooms_by_id.get(room_id)
        if room is None:
            raise errors.RoomNotFound()
        return room

    def rooms(self) -> list[Room]:
        return sorted(self._rooms.values(), key=lambda r: fold(r.name))

    def room_count(self) -> int:
        return len(self._rooms)

    def rooms_of(self, user: User) -> list[Room]:
        return sorted(self._rooms_of.get(user.id, ()), key=lambda r: fold(r.name))

    def members(self, room: Room) -> list[User]:
        found = (self._users.get(uid) or self._guest_by_id(uid) for uid in room.members)
        return sorted((u for u in found if u), key=lambda u: fold(u.username))

    def is_member(self, user: User, room: Room) -> bool:
        return user.id in room.members

    def topic(self, room: Room) -> str:
        return room.topic

    def _guest_by_id(self, user_id):
        sessions = self.bus.sessions_of(user_id)
        if sessions:
            return sessions[0].user
        elsewhere = self.bus.remote_user(user_id)  # a guest online on another node
        return User(elsewhere.id, elsewhere.username, "", None, 0.0) if elsewhere is not None else None

    def validate_room_name(self, name) -> str:
        if not isinstance(name, str) or not _ROOM.match(name):
            raise errors.InvalidRoomName()
        return keepable(name, "room name")

    def _check_room_quota(self, creator: User, address: str):
        """Refuse a new room over ``--max-rooms``, or over its creator's (or address's) cap or rate."""
        limits = self.limits
        if 0 < limits.max_rooms <= len(self._rooms):
            raise errors.TooManyRooms("the server has too many rooms")
        if 0 < limits.max_rooms_per_user <= len(self._created_by.get(creator.id, ())):
            raise errors.TooManyRooms("you have created too many rooms")
        if address and 0 < limits.max_rooms_per_address <= len(self._created_from.get(address, ())):
            raise errors.TooManyRooms("too many rooms were created from your address")
        buckets = [self._user_room_rate.bucket(creator.id)]
        if address:
            buckets.append(self._address_room_rate.bucket(address))
        if not all(bucket.ready() for bucket in buckets):
            raise errors.TooManyRooms("you are creating rooms too fast: try again later")
        for bucket in buckets:
            bucket.allow()

    async def _new_room(self, name, creator: User | None, address: str = "") -> Room:
        """A new room; one a guest creates is kept in memory only, until it is empty."""
        if creator is not None:
            self._check_room_quota(creator, address)
        guest = creator is not None and creator.guest
        room = Room(0, name, creator.id if creator and not guest else None, self.clock.seconds(),
                    persistent=not guest)
        key = fold(name)
        waiting = self._creating[key] = []
        try:
            if guest and not await self.bus.claim_name("#" + key, creator.id):
                made = await self._made_elsewhere(key)  # another node won the name
                del self._creating[key]
                for d in waiting:
                    d.callback(made)
                return made
            room.id = await self.store.add_room(room)  # stored (or only numbered) first, then cached
        except BaseException:
            del self._creating[key]
            for d in waiting:
                d.errback()
            raise
        del self._creating[key]
        self._rooms[key] = self._rooms_by_id[room.id] = room
        self.bus.notify("room", {"id": room.id, "name": room.name, "created_by": room.created_by,
                                 "created_at": room.created_at, "persistent": room.persistent})
        if creator is not None:
            self._creation[room] = (creator.id, address)
            self._created_by[creator.id].add(room)
            if address:
                self._created_from[address].add(room)
        for d in waiting:
            d.callback(room)
        return room

    def _made_elsewhere(self, key: str) -> Deferred:
        """The guest room whose name another node claimed: once that node's notice is here
        (``room_arrived``); Busy if it does not come (that node died meanwhile)."""
        room = self._rooms.get(key)
        if room is not None:
            return succeed(room)
        arriving = self._arriving[key] = Deferred()
        arriving.addTimeout(ROOM_ARRIVAL_TIMEOUT, self.clock)

        def not_arrived(failure):
            failure.trap(defer.TimeoutError)
            raise errors.Busy("the room is being created elsewhere: try again")

        return arriving.addErrback(not_arrived).addBoth(self._arrival_done, key)

    def _arrival_done(self, result, key):
        self._arriving.pop(key, None)
        return result

    def room_arrived(self, room: Room) -> None:
        """Another node made ``room`` (its notice): whoever waits for its name here has it."""
        arriving = self._arriving.get(fold(room.name))
        if arriving is not None:
            arriving.callback(room)

    def _being_created(self, name) -> Deferred | None:
        """Deferred[Room] if a room of that name is being created now, else None."""
        waiting = self._creating.get(fold(name))
        if waiting is None:
            return None
        d = Deferred()
        waiting.append(d)
        return d

    def _creator_address(self, user: User, origin: Session | None, address: str | None) -> str:
        if address is not None:
            return address
        return origin.address if origin is not None else self._last_address.get(user.id, "")

    @deferred
    async def create_room(self, user: User, name, *, address: str | None = None) -> Room:
        """Create a room with ``user`` as its creator and first member (``address``: where the
        request came from, for the per-address cap; by default the user's last address)."""
        self.validate_room_name(name)
        if fold(name) in self._rooms or fold(name) in self._creating:
            raise errors.RoomExists()
        room = await self._new_room(name, user, self._creator_address(user, None, address))
        await self._add_member(room, user, origin=None)
        return room

    @deferred
    async def join_room(self, user: User, name, *, create=False, origin: Session | None = None,
                        address: str | None = None, key: str = "") -> Room:
        """Join (and with ``create``, first create) a room; members hear of it.

        The room's settings may refuse it (``errors.Banned``, ``InviteOnly``, ``WrongKey``,
        ``RoomFull``): see ``RoomSettings``.
        """
        pending = self._being_created(name) if isinstance(name, str) else None
        if pending is not None:
            room = await pending
        elif create and fold(self.validate_room_name(name)) not in self._rooms:
            room = await self._new_room(name, user, self._creator_address(user, origin, address))
        else:
            room = self.room(name)
        if user.id not in room.members:
            self._check_join(user, room, key)
            await self._add_member(room, user, origin)
        return room

    async def _add_member(self, room, user, origin):
        await self._enroll(room, user)
        self._publish_to_room(events.MembershipChanged(room, user, True), room, origin)

    async def _enroll(self, room, user):
        """A membership and the role it brings (``RoomSettings._founds``), in the store (an
        account's, in a persistent room), then in memory."""
        founding = self._founds(room, user)
        if not user.guest and room.persistent:
            await self.store.add_member(room.id, user.id)
        if founding:
            await self._store_role(room, user, "operator", True)
        self._joined(room, user, founding)
        room.members.add(user.id)
        self._rooms_of[user.id].add(room)

    def _drop_member(self, room: Room, user_id: int):
        """End a membership in memory; a room that is not persistent vanishes once empty."""
        room.members.discard(user_id)
        rooms = self._rooms_of.get(user_id)
        if rooms is not None:
            rooms.discard(room)
            if not rooms:
                del self._rooms_of[user_id]
        if not room.persistent and not room.members:
            self._vanish(room)

    def _vanish(self, room: Room):
        del self._rooms[fold(room.name)], self._rooms_by_id[room.id]
        self._seen_unstored.pop(room.id, None)
        self._newest.pop(room.id, None)
        creator, address = self._creation.pop(room, (None, ""))
        if not room.persistent and creator is not None:
            self.bus.release_name("#" + fold(room.name), creator)
        for index, key in ((self._created_by, creator), (self._created_from, address)):
            rooms = index.get(key)
            if rooms is not None:
                rooms.discard(room)
                if not rooms:
                    del index[key]
        if not self.running:  # a stopping node hears its peers' guests leave: its store is closed
            return
        self.store.forget_room_messages(room.id).addErrback(
            lambda failure: log.failure("cannot forget the messages of a vanished room", failure))

    @deferred
    async def leave_room(self, user: User, name, *, origin: Session | None = None,
                         by: User | None = None, reason: str = "") -> Room:
        """End a membership; members, and the one leaving, hear of it."""
        room = self.room(name)
        if by is not None and by.id != user.id and not self.can_manage(by, room):
            raise errors.NotOperator()
        if user.id not in room.members:
            raise errors.NotMember()
        if not user.guest and room.persistent:
            await self.store.remove_member(room.id, user.id)
        await self._store_roles_lost(room, user)
        if user.id not in room.members:  # another leave (or a kick) ended it while it was written
            return room
        self._publish_to_room(events.MembershipChanged(room, user, False, by, reason), room, origin)
        self._left(room, user)
        self._drop_member(room, user.id)
        return room

    @deferred
    async def set_topic(self, user: User, name, topic: str, *, origin: Session | None = None) -> Room:
        room = self.room(name)
        if user.id not in room.members:
            raise errors.NotMember()
        text = keepable(str(topic), "topic")[: self.limits.max_body]
        if room.topic_locked and not self.can_manage(user, room):
            raise errors.NotOperator()
        by, at = user.username, self.clock.seconds()
        if room.persistent:
            await self.store.update_room(attrs.evolve(room, topic=text, topic_by=by, topic_at=at))
        room.topic, room.topic_by, room.topic_at = text, by, at
        self._publish_to_room(events.TopicChanged(room, user, text), room, origin)
        return room
