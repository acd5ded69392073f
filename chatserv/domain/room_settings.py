"""Room settings and roles: operators, voice, bans, keys, limits, invitations.

Part of the rooms concern, a mixin of ``ChatService``: the rules they put on joining a
room, speaking in it and changing it hold on every port. No wire format here: IRC shows
these as channel modes, other ports meet them as typed refusals (``errors.Banned``...).

Operators are a room's founder (the account that created it, whenever it is in the room),
whoever an operator made one, and the first to join an empty room that has no founder (to
IRC an empty channel is a new one). Server operators (``make_server_operator``) may manage
any room, the lobby included. Grants and settings are stored; a guest's grants live as
long as the guest.
"""

from __future__ import annotations

import attrs
from twisted.internet.defer import Deferred, gatherResults, succeed

from chatserv import errors, events
from chatserv.model import (
    LOBBY,
    ROOM_FLAGS,
    ROOM_ROLES,
    ROOM_VALUES,
    Room,
    RoomBan,
    RoomChange,
    RoomInfo,
    User,
    fold,
)

KEY_LENGTH = 23  # characters in a room key (as IRC servers allow)
MASK_LENGTH = 100  # characters in a ban mask
BANS_PER_ROOM = 100
_KEY_FORBIDDEN = frozenset(" ,:\t\r\n\x00\x0b\x0c")


def valid_key(key) -> bool:
    """1-23 visible characters, none of them a space or a comma, not starting with a colon."""
    return (isinstance(key, str) and 0 < len(key) <= KEY_LENGTH and key.isprintable()
            and not _KEY_FORBIDDEN.intersection(key))


class RoomSettings:
    def _init_room_settings(self):
        self._invites: dict[int, set[int]] = {}  # user id -> rooms it was invited to, until it joins

    # who may do what

    def is_operator(self, user: User, room: Room) -> bool:
        """The founder, and whoever was made an operator of the room."""
        return room.founder == user.id or user.id in room.operators

    def is_voiced(self, user: User, room: Room) -> bool:
        return user.id in room.voiced

    def is_server_operator(self, user: User) -> bool:
        """A session of the user on this node proved it (an operator's power ends with its session)."""
        return any(session.server_operator for session in self.bus.sessions_of(user.id))

    def make_server_operator(self, session, granted: bool = True) -> None:
        """The session proved it is a server operator (IRC's OPER): it may manage every room."""
        session.server_operator = granted

    def can_manage(self, user: User, room: Room) -> bool:
        """May change the room, its topic and its members: an operator, or a server operator."""
        return self.is_operator(user, room) or self.is_server_operator(user)

    def is_banned_from(self, user: User, room: Room) -> bool:
        """A ban matches the user's name, or the other name it goes by now (an IRC nick)."""
        names = {user.username, self.name_of(user)}
        return any(ban.matches(name) for ban in room.bans.values() for name in names)

    def is_invited(self, user: User, room: Room) -> bool:
        return room.id in self._invites.get(user.id, ())

    def room_info(self, room: Room) -> RoomInfo:
        return RoomInfo(**{field.name: getattr(room, field.name) for field in attrs.fields(RoomInfo)})

    def room_bans(self, room: Room) -> list[RoomBan]:
        """The room's ban masks, oldest first."""
        return sorted(room.bans.values(), key=lambda ban: ban.set_at)

    def listed_rooms(self, user: User) -> list[Room]:
        """Every room but the secret ones ``user`` is not in."""
        return [room for room in self.rooms() if not room.secret or user.id in room.members]

    # the rules, run by the service

    def _check_join(self, user: User, room: Room, key: str) -> None:
        """Refuse a join the room's settings forbid; the founder always gets in."""
        if room.founder == user.id:
            return
        if self.is_banned_from(user, room):
            raise errors.Banned()
        invited = self.is_invited(user, room)
        if room.invite_only and not invited:
            raise errors.InviteOnly()
        if room.key and key != room.key and not invited:
            raise errors.WrongKey()
        if room.limit and len(room.members) >= room.limit and not invited:
            raise errors.RoomFull()

    def _check_speak(self, user: User, room: Room) -> None:
        """Refuse a room message the room's settings forbid (cheap when none apply)."""
        if user.id not in room.members:
            if room.no_external:
                raise errors.NotMember()
        elif not (room.moderated or room.bans):
            return
        if self.is_operator(user, room) or self.is_voiced(user, room):
            return
        if room.moderated or self.is_banned_from(user, room):
            raise errors.CannotSend()

    def _founds(self, room: Room, user: User) -> bool:
        """A join into an empty room without a founder makes the joiner its operator."""
        return not room.members and room.founder is None and fold(room.name) != fold(LOBBY)

    def _joined(self, room: Room, user: User, founding: bool) -> None:
        """Called, once it is stored, just before ``user`` becomes a member: in memory."""
        self._invites.get(user.id, set()).discard(room.id)
        if founding:
            room.operators.add(user.id)

    def _store_roles_lost(self, room: Room, user: User) -> Deferred:
        """A member who leaves loses the roles it had there; Deferred: that is stored."""
        lost = [role for role, holders in (("operator", room.operators), ("voice", room.voiced))
                if user.id in holders]
        return gatherResults([self._store_role(room, user, role, False) for role in lost])

    def _left(self, room: Room, user: User) -> None:
        """Once that is stored: the roles go from memory too."""
        room.operators.discard(user.id)
        room.voiced.discard(user.id)

    def _store_role(self, room: Room, user: User, role: str, held: bool) -> Deferred:
        """Roles are stored for accounts in rooms that are stored (a guest's room never is)."""
        if user.guest or not room.persistent:
            return succeed(None)
        return self.store.set_room_role(room.id, user.id, role, held)

    def _forget_roles(self, user: User) -> None:
        """A guest is going: so are its roles and invitations (nothing of it was stored)."""
        for room in self.rooms_of(user):
            room.operators.discard(user.id)
            room.voiced.discard(user.id)
        self._invites.pop(user.id, None)

    # changes

    def change_room(self, by: User, name, changes: list[RoomChange]) -> Deferred:
        """Deferred[list[RoomChange]]: apply the changes that change something, store them,
        and tell every member (``by`` included) in one ``RoomChanged`` event."""
        return Deferred.fromCoroutine(self._change_room(by, name, list(changes)))

    async def _change_room(self, by: User, name, changes: list[RoomChange]) -> list[RoomChange]:
        room = name if isinstance(name, Room) else self.room(name)
        if not self.can_manage(by, room):
            raise errors.NotOperator()
        for change in changes:
            self._check_change(room, change)
        # Worked out on a copy and stored first; the room in memory changes only once stored.
        draft = attrs.evolve(room, operators=set(room.operators), voiced=set(room.voiced),
                             bans=dict(room.bans))
        at = self.clock.seconds()
        applied = [change for change in changes if self._apply(draft, by, change, at)]
        if not applied:
            return applied
        if room.persistent:
            await self._store_changes(draft, applied)
        for change in applied:
            self._apply(room, by, change, at)
        self._publish_to_room(events.RoomChanged(room, by, tuple(applied)), room)
        return applied

    async def _store_changes(self, room: Room, applied: list[RoomChange]) -> None:
        if any(change.setting in ROOM_FLAGS or change.setting in ROOM_VALUES for change in applied):
            await self.store.update_room(room)
        for change in applied:
            if change.setting in ROOM_ROLES:
                await self._store_role(room, change.user, change.setting, bool(change.value))
            elif change.setting == "ban" and change.value:
                await self.store.add_room_ban(room.id, room.bans[fold(change.mask)])
            elif change.setting == "ban":
                await self.store.remove_room_ban(room.id, change.mask)

    def _check_change(self, room: Room, change: RoomChange) -> None:
        setting, value = change.setting, change.value
        if setting == "key":
            if value and not valid_key(value):
                raise errors.InvalidKey()
        elif setting == "limit":
            if not isinstance(value, int) or value < 0:
                raise errors.InvalidRoomSetting("a limit is a number of members")
        elif setting in ROOM_ROLES:
            if change.user is None or change.user.id not in room.members:
                raise errors.MemberNotFound()
        elif setting == "ban":
            if not change.mask or len(change.mask) > MASK_LENGTH or not change.mask.isprintable():
                raise errors.InvalidRoomSetting("a ban mask is nick!user@host, at most 100 characters")
            if value and len(room.bans) >= BANS_PER_ROOM and fold(change.mask) not in room.bans:
                raise errors.ListFull()
        elif setting not in ROOM_FLAGS:
            raise errors.InvalidRoomSetting("unknown room setting")

    def _apply(self, room: Room, by: User, change: RoomChange, at: float) -> bool:
        """Apply one change; False when it changes nothing."""
        setting, value = change.setting, change.value
        if setting in ROOM_FLAGS or setting in ROOM_VALUES:
            value = bool(value) if setting in ROOM_FLAGS else value
            if getattr(room, setting) == value:
                return False
            setattr(room, setting, value)
            return True
        if setting in ROOM_ROLES:
            holders = room.operators if setting == "operator" else room.voiced
            if (change.user.id in holders) == bool(value):
                return False
            holders.add(change.user.id) if value else holders.discard(change.user.id)
            return True
        key = fold(change.mask)
        if (key in room.bans) == bool(value):
            return False
        if value:
            room.bans[key] = RoomBan(change.mask, by.username, at)
        else:
            del room.bans[key]
        return True

    async def _take_roles(self, room: Room, guest: User, account: User) -> None:
        """The account a guest logged in to takes the guest's roles in ``room``: stored, then in memory."""
        taken = [(role, holders) for role, holders in (("operator", room.operators), ("voice", room.voiced))
                 if guest.id in holders and account.id not in holders]
        await gatherResults([self._store_role(room, account, role, True) for role, _ in taken])
        for _, holders in taken:
            holders.add(account.id)

    def invite(self, by: User, name, user: User) -> Room:
        """``by``, a member, invites ``user``: one join past invite-only, the key and the limit."""
        room = self.room(name)
        if by.id not in room.members:
            raise errors.NotMember()
        if room.invite_only and not self.can_manage(by, room):
            raise errors.NotOperator()
        if user.id in room.members:
            raise errors.AlreadyMember()
        self._invites.setdefault(user.id, set()).add(room.id)
        self._publish(events.Invited(room, by, user), (user.id,))
        return room

    def end_sessions(self, by: User, user: User, reason: str) -> None:
        """A server operator disconnects every session of ``user`` (IRC's KILL)."""
        if not self.is_server_operator(by):
            raise errors.NotServerOperator()
        self._publish(events.Kicked(reason), (user.id,))
