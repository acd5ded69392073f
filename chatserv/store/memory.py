"""The in-memory store: ``--db memory``, and the reference the SQLite store is tested against."""

from __future__ import annotations

import secrets

import attrs
from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from chatserv.model import Message, Room, Snapshot, User, fold
from chatserv.store.base import IStore


def _newest(messages, limit, before_id):
    chosen = [m for m in messages if before_id is None or m.id < before_id]
    return chosen[-limit:] if limit > 0 else []


def _within(message, bounds) -> bool:
    return ((bounds.after_id is None or message.id > bounds.after_id)
            and (bounds.before_id is None or message.id < bounds.before_id)
            and (bounds.since is None or message.sent_at >= bounds.since)
            and (bounds.until is None or message.sent_at < bounds.until))


def _room_row(room: Room) -> Room:
    """What the rooms table keeps: members, roles and bans are kept apart, as in the SQLite
    store, and only their own writes change them."""
    return attrs.evolve(room, members=set(), operators=set(), voiced=set(), bans={})


@implementer(IStore)
class MemoryStore:
    def __init__(self):
        self._users: dict[int, User] = {}
        self._rooms: dict[int, Room] = {}
        self._members: set[tuple[int, int]] = set()
        self._roles: set[tuple[int, int, str]] = set()
        self._room_bans: dict[int, dict] = {}
        self._contacts: dict[tuple[int, int], tuple[str, str | None]] = {}
        self._messages: dict[int, Message] = {}
        self._bans: set[str] = set()
        self._last_seen: dict[tuple[int, int], int] = {}
        self._read_marks: dict[tuple[int, str, int], int] = {}
        self._tokens: dict[str, tuple[str, int, float, float]] = {}
        self._last_guest_id = 0
        self._last_ids = {"users": 0, "rooms": 0, "messages": 0}
        self._salt_secret = secrets.token_bytes(32)  # made once, like the SQLite store's

    def open(self):
        rooms = []
        for room in self._rooms.values():
            members = {uid for rid, uid in self._members if rid == room.id}
            roles = {role: {uid for rid, uid, held in self._roles if rid == room.id and held == role}
                     for role in ("operator", "voice")}
            rooms.append(attrs.evolve(room, members=members, operators=roles["operator"],
                                      voiced=roles["voice"], bans=dict(self._room_bans.get(room.id, {}))))
        return succeed(
            Snapshot(
                users=[attrs.evolve(u) for u in self._users.values()],
                rooms=rooms,
                contacts=[(o, c, *relation) for (o, c), relation in self._contacts.items()],
                bans=sorted(self._bans),
                tokens=list(self._tokens.values()),
                salt_secret=self._salt_secret,
            )
        )

    def close(self):
        return succeed(None)

    def when_broken(self):
        return Deferred()  # memory never stops taking writes

    def _new_id(self, table) -> int:
        self._last_ids[table] += 1
        return self._last_ids[table]

    def add_user(self, user):
        user = attrs.evolve(user, id=self._new_id("users"))
        self._users[user.id] = user
        return succeed(user.id)

    def update_user(self, user):
        self._users[user.id] = attrs.evolve(user)
        return succeed(None)

    def set_contact(self, owner_id, contact_id, status, before_block=None):
        self._contacts[owner_id, contact_id] = (status, before_block)
        return succeed(None)

    def remove_contact(self, owner_id, contact_id):
        self._contacts.pop((owner_id, contact_id), None)
        return succeed(None)

    def add_room(self, room):
        room_id = self._new_id("rooms")
        if room.persistent:
            self._rooms[room_id] = _room_row(attrs.evolve(room, id=room_id))
        return succeed(room_id)

    def update_room(self, room):
        self._rooms[room.id] = _room_row(room)
        return succeed(None)

    def add_member(self, room_id, user_id):
        self._members.add((room_id, user_id))
        return succeed(None)

    def remove_member(self, room_id, user_id):
        self._members.discard((room_id, user_id))
        return succeed(None)

    def set_room_role(self, room_id, user_id, role, held):
        (self._roles.add if held else self._roles.discard)((room_id, user_id, role))
        return succeed(None)

    def add_room_ban(self, room_id, ban):
        self._room_bans.setdefault(room_id, {})[fold(ban.mask)] = ban
        return succeed(None)

    def remove_room_ban(self, room_id, mask):
        self._room_bans.get(room_id, {}).pop(fold(mask), None)
        return succeed(None)

    def add_message(self, message):
        message = attrs.evolve(message, id=self._new_id("messages"))
        self._messages[message.id] = message
        return succeed(message.id)

    def mark_delivered(self, message_ids):
        for mid in message_ids:
            if mid in self._messages:
                self._messages[mid] = attrs.evolve(self._messages[mid], delivered=True)
        return succeed(None)

    def room_history(self, room_id, limit, before_id=None):
        found = [m for m in self._messages.values() if m.room_id == room_id]
        return succeed(_newest(found, limit, before_id))

    def direct_history(self, user_id, other_id, limit, before_id=None):
        pair = {(user_id, other_id), (other_id, user_id)}
        found = [m for m in self._messages.values() if (m.sender_id, m.recipient_id) in pair]
        return succeed(_newest(found, limit, before_id))

    def inbox(self, user_id, limit, undelivered_only=False):
        found = [
            m
            for m in self._messages.values()
            if m.recipient_id == user_id and not (undelivered_only and m.delivered)
        ]
        return succeed(_newest(found, limit, None))

    def message_range(self, bounds, limit, room_id=None, pair=None):
        if room_id is not None:
            found = [m for m in self._messages.values() if m.room_id == room_id]
        else:
            users = set(pair)
            found = [m for m in self._messages.values()
                     if m.recipient_id is not None and {m.sender_id, m.recipient_id} == users]
        found = sorted((m for m in found if _within(m, bounds)), key=lambda m: m.id)
        point = bounds.around_point()
        if point is not None:
            column, value = point
            before = (limit - 1) // 2
            earlier = [m for m in found if getattr(m, column) < value][::-1][:before][::-1]
            later = [m for m in found if getattr(m, column) >= value][:limit - before]
            return succeed(earlier + later)
        return succeed(found[:limit] if bounds.oldest else found[-limit:] if limit > 0 else [])

    def last_seen(self, user_id):
        return succeed({room: mid for (uid, room), mid in self._last_seen.items() if uid == user_id})

    def set_last_seen(self, user_id, room_id, message_id):
        key = (user_id, room_id)
        self._last_seen[key] = max(self._last_seen.get(key, message_id), message_id)
        return succeed(None)

    def new_guest_id(self):
        self._last_guest_id -= 1
        return self._last_guest_id

    def forget_room_messages(self, room_id):
        for mid in [m.id for m in self._messages.values() if m.room_id == room_id]:
            del self._messages[mid]
        return succeed(None)

    def add_ban(self, address):
        self._bans.add(address)
        return succeed(None)

    def remove_ban(self, address):
        self._bans.discard(address)
        return succeed(None)

    def set_read_mark(self, user_id, kind, target_id, message_id):
        key = (user_id, kind, target_id)
        self._read_marks[key] = max(self._read_marks.get(key, 0), message_id)
        return succeed(None)

    def conversations(self, user_id, room_ids, unread_cap):
        last: dict[tuple[str, int], Message] = {}
        unread: dict[tuple[str, int], int] = {}
        rooms = set(room_ids)
        for m in sorted(self._messages.values(), key=lambda m: m.id):
            if m.room_id in rooms:
                key = ("room", m.room_id)
            elif m.recipient_id == user_id or (m.sender_id == user_id and m.is_direct):
                key = ("user", m.sender_id if m.recipient_id == user_id else m.recipient_id)
            else:
                continue
            last[key] = m
            mark = self._read_marks.get((user_id, *key), None if key[0] == "room" else 0)
            if mark is not None and m.id > mark and m.sender_id != user_id:
                unread[key] = min(unread.get(key, 0) + 1, unread_cap)
        found = [(kind, target, m, unread.get((kind, target), 0)) for (kind, target), m in last.items()]
        found += [("room", rid, None, 0) for rid in rooms if ("room", rid) not in last]
        return succeed(found)

    def save_token(self, digest, user_id, created_at, last_used):
        self._tokens[digest] = (digest, user_id, created_at, last_used)
        return succeed(None)

    def remove_token(self, digest):
        self._tokens.pop(digest, None)
        return succeed(None)

    def user_by_id(self, user_id):
        user = self._users.get(user_id)
        return succeed(attrs.evolve(user) if user is not None else None)

    def room_by_id(self, room_id):
        room = self._rooms.get(room_id)
        if room is None:
            return succeed(None)
        return succeed(attrs.evolve(room, members={uid for rid, uid in self._members if rid == room_id}))

    def messages_after(self, after_id, limit):
        return succeed(sorted((m for m in self._messages.values() if m.id > after_id),
                              key=lambda m: m.id)[:limit])

    def snapshot(self):
        return self.open()

    def newest_message_id(self):
        return succeed(max(self._messages, default=0))
