"""Messages: sending (stored first, then published), history, the inbox and delivery
state, conversations and read marks. A mixin of ``ChatService``."""

from __future__ import annotations

import collections
from collections.abc import Iterable

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger

from chatserv import errors, events
from chatserv.bus import Subscription, to_room
from chatserv.domain.common import deferred, keepable
from chatserv.model import Conversation, HistoryBounds, Message, Room, Session, User, fold

log = Logger()

UNREAD_CAP = 1000  # unread messages counted per conversation ("1000" means "at least")
# How many direct messages recently shown live (here or, by the bus, on another node) a login's
# read of the waiting ones leaves out, in case it saw one before its delivery mark committed.
SHOWN_WINDOW = 10_000


class Messages:
    def _init_messages(self):
        self._newest: dict[int, int] = {}  # room id -> id of its newest message handed out since start
        # what accounts were shown in rooms the store does not keep: room id -> user id -> message id
        self._seen_unstored: dict[int, dict[int, int]] = collections.defaultdict(dict)
        # direct messages a session showed live, newest last (``shown_live``)
        self._shown: collections.OrderedDict[int, None] = collections.OrderedDict()

    def _check_body(self, body, kind) -> str:
        if not isinstance(body, str) or not body:
            raise errors.EmptyMessage()
        if len(body) > self.limits.max_body:
            raise errors.MessageTooLong()
        keepable(str(kind or "text"), "message type")
        return keepable(body, "message")

    def _new_message(self, sender: User, body, kind, **target) -> Message:
        """A message to store; the store gives it its id (``_stored``)."""
        return Message(0, sender.id, sender.username, body, self.clock.seconds(), str(kind or "text"),
                       **target)

    @deferred
    async def send_direct(self, sender: User, to, body, kind="text", *,
                          origin: Session | None = None, tags: dict | None = None) -> Message:
        """Store a direct message, then hand it to the recipient's live sessions (or inbox).

        Stored undelivered: whichever node's session shows it live marks it (``shown_live``).
        ``tags``: client-only tags that travel with the live message and are never stored.
        """
        self._check_body(body, kind)
        recipient = to if isinstance(to, User) else self.user_or_guest(to)
        if self.has_blocked(recipient, sender):
            raise errors.Blocked("blocked")
        message = self._new_message(sender, body, kind, recipient_id=recipient.id)
        message = attrs.evolve(message, id=await self.store.add_message(message))
        self.stats["messages"] += 1
        event = events.DirectMessage(message, sender, recipient, tags)
        if recipient.id == sender.id:  # to oneself: every session, the origin too
            delivered = self._publish(event, (sender.id,))
        else:  # the recipient's sessions, and the sender's others
            delivered = self._publish(event, (recipient.id, sender.id), origin)
        self.shown_live(message)
        self._delivered(message, delivered)
        return message

    def shown_live(self, message: Message) -> None:
        """A direct message was just handed to this node's sessions: if one of them renders it
        live, the store marks it delivered (once per message, in the store's group commit; a
        second node marking it too changes nothing), so no login shows it again as waiting.
        The other nodes hear of it too, so that a login there before the mark commits leaves it
        out as well. Sinks that confirm delivery themselves (``DIRECT_PUSHED``) mark it when
        they do."""
        if message.delivered or not any(s.subscribes & Subscription.DIRECT
                                        for s in self.bus.sessions_of(message.recipient_id)):
            return
        self.note_shown(message.id)
        self.bus.notify("shown", message.id)
        self.store.mark_delivered([message.id]).addErrback(lambda failure: log.warn(
            "cannot mark message {id} delivered: {why}", id=message.id, why=failure.getErrorMessage()))

    def note_shown(self, message_id: int) -> None:
        """A session (here or on another node) showed this direct message live."""
        self._shown[message_id] = None
        if len(self._shown) > SHOWN_WINDOW:
            self._shown.popitem(last=False)

    def _delivered(self, message: Message, sessions: int):
        """Count the sessions a message was handed to, and how long after its arrival."""
        self.stats["deliveries"] += sessions
        self.delivery_latency.observe(max(0.0, self.clock.seconds() - message.sent_at))

    def send_room(self, sender: User, name, body, kind="text", *,
                  origin: Session | None = None, tags: dict | None = None) -> Deferred:
        """Store a room message, then hand it to every member's sessions but ``origin``.

        Deferred[Message]. A plain callback rather than a coroutine: this is the fan-out hot
        path, run once per message, and resuming a coroutine costs more than the call.
        """
        try:
            self._check_body(body, kind)
            room = name if isinstance(name, Room) else self.room(name)
            self._check_speak(sender, room)
        except errors.ChatError:
            return fail()
        message = self._new_message(sender, body, kind, room_id=room.id)
        stored = self.store.add_message(message)
        stored.addCallback(self._fan_out, message, sender, room, tags, origin)
        return stored

    def _fan_out(self, message_id: int, draft: Message, sender: User, room: Room, tags,
                 origin: Session | None) -> Message:
        message = attrs.evolve(draft, id=message_id)
        self.stats["messages"] += 1
        if self._rooms_by_id.get(room.id) is room:  # not a guest's room gone meanwhile
            self._newest[room.id] = message_id
        audience = to_room(room.id, skip_session=origin.id if origin is not None else None,
                           skip_blockers_of=sender.id)
        self._delivered(message, self.bus.publish(events.RoomMessage(message, sender, room, tags), audience))
        return message

    def typing(self, user: User, active: bool, *, room=None, to=None,
               origin: Session | None = None, tags: dict | None = None) -> None:
        """Tell a room's members, or one user, that ``user`` is typing (``tags``: an IRC
        TAGMSG's client-only tags, relayed with it)."""
        self._relay(events.Typing, dict(user=user, active=bool(active), tags=tags), room, to, origin)

    def tag_message(self, user: User, tags: dict, *, room=None, to=None,
                    origin: Session | None = None) -> None:
        """Relay client-only tags on their own (reactions, replies) to a room or one user."""
        self._relay(events.Tagged, dict(user=user, tags=dict(tags)), room, to, origin)

    def _relay(self, kind, fields: dict, room, to, origin):
        """Publish a never-stored event to a room's members, or to one user unless they blocked
        the sender; the sender's other sessions hear it too."""
        user = fields["user"]
        if room is not None:
            room = room if isinstance(room, Room) else self.room(room)
            if user.id not in room.members:
                raise errors.NotMember()
            self._publish_to_room(kind(room=room, **fields), room, origin)
        elif to is not None:
            recipient = to if isinstance(to, User) else self.user_or_guest(to)
            if not self.has_blocked(recipient, user):
                event = kind(recipient=recipient, **fields)
                self._publish(event, (recipient.id,))  # the origin too, when it is to itself
                if recipient.id != user.id:
                    self._publish(event, (user.id,), origin)

    def room_history(self, user: User, name, limit=None, before_id=None) -> Deferred:
        """Deferred[list[Message]] of a room the user is in, oldest first."""
        room = self.room(name)
        if user.id not in room.members:
            raise errors.NotMember()
        return self.store.room_history(room.id, limit or self.limits.history, before_id)

    def direct_history(self, user: User, other, limit=None, before_id=None) -> Deferred:
        """Deferred[list[Message]] between the user and ``other``, oldest first."""
        other = other if isinstance(other, User) else self.user(other)
        return self.store.direct_history(user.id, other.id, limit or self.limits.history, before_id)

    def history_range(self, user: User, target, bounds: HistoryBounds, limit: int) -> Deferred:
        """Deferred[list[Message]], oldest first: a room's messages (``target`` a Room, which the
        user must be in) or those between the user and ``target`` (a User), within ``bounds``."""
        if isinstance(target, Room):
            if user.id not in target.members:
                raise errors.NotMember()
            return self.store.message_range(bounds, limit, room_id=target.id)
        return self.store.message_range(bounds, limit, pair=(user.id, target.id))

    def last_seen(self, user: User) -> Deferred:
        """Deferred[dict[room id, message id]]: the newest room message each of the account's
        sessions was shown, as recorded by ``note_seen`` (empty for a guest)."""
        if user.guest:
            return succeed({})
        unstored = {room_id: seen[user.id] for room_id, seen in self._seen_unstored.items()
                    if user.id in seen}
        return self.store.last_seen(user.id).addCallback(lambda stored: {**stored, **unstored})

    def newest_message_id(self, room: Room) -> int | None:
        """The id of the newest message handed to the room's members since the service started."""
        return self._newest.get(room.id)

    def note_seen(self, user: User, seen: dict) -> None:
        """Record that the account was shown room messages up to these ids ({room id: id});
        kept only forward, across restarts, for rooms the store keeps. Nothing is written
        once the service stops."""
        if user.guest or not self.running:
            return
        for room_id, message_id in seen.items():
            room = self._rooms_by_id.get(room_id)
            if room is not None and not room.persistent:  # a guest's room: kept while it lasts
                unstored = self._seen_unstored[room_id]
                unstored[user.id] = max(unstored.get(user.id, 0), message_id)
            elif room is not None:
                written = self.store.set_last_seen(user.id, room_id, message_id)
                written.addErrback(lambda failure: log.warn(
                    "cannot record what {user} was shown: {why}", user=user.username,
                    why=failure.getErrorMessage()))

    def inbox(self, user: User, limit=None) -> Deferred:
        """Deferred[list[Message]]: direct messages the user received, oldest first."""
        return self.store.inbox(user.id, limit or self.limits.history)

    @deferred
    async def take_undelivered(self, user: User, limit=1000) -> list[Message]:
        """Direct messages that waited for the user, now marked delivered (oldest first)."""
        waiting = await self.undelivered(user, limit)
        if waiting:
            await self.store.mark_delivered([m.id for m in waiting])
        return waiting

    def undelivered(self, user: User, limit=1000) -> Deferred:
        """Deferred[list[Message]]: direct messages the store says still wait for the user, oldest
        first, left waiting: a session that confirms delivery marks each with ``mark_delivered``.
        Those a session showed live are left out even if their mark is not committed yet."""
        waiting = self.store.inbox(user.id, limit, undelivered_only=True)
        return waiting.addCallback(lambda found: [m for m in found if m.id not in self._shown])

    @deferred
    async def mark_delivered(self, user: User, messages: Iterable[Message]) -> None:
        """Mark the user's direct messages delivered once a wire that only answers requests (seed
        003's inbox) has shown them, so other wires do not hand them over again as new."""
        unread = [m.id for m in messages if m.recipient_id == user.id and not m.delivered]
        if unread:
            await self.store.mark_delivered(unread)

    # conversations and read state (the web page's list and its unread counts)

    @deferred
    async def conversations(self, user: User, limit: int | None = None,
                            before: int | None = None) -> list[Conversation]:
        """The user's conversations, newest message first: every direct one (contact or not),
        every room the user is in, and contacts never written to (``last`` None) at the end.

        ``before``: only those whose newest message id is below it (paging, with ``limit``).
        """
        rows = await self.store.conversations(user.id, [r.id for r in self.rooms_of(user)], UNREAD_CAP)
        found, peers = [], set()
        for kind, target, last, unread in rows:
            if kind == "room":
                room = self._rooms_by_id.get(target)
                if room is not None:
                    found.append(Conversation(last, unread, room=room))
            else:
                peer = self._users.get(target) or self._guest_by_id(target)
                if peer is not None:  # a guest that left takes its conversations along
                    peers.add(target)
                    found.append(Conversation(last, unread, peer=peer))
        found += [Conversation(None, 0, peer=contact) for contact, _ in self.contacts(user)
                  if contact.id not in peers]
        found.sort(key=lambda c: (-c.last_id, fold(c.room.name if c.room else c.peer.username)))
        if before is not None:
            found = [c for c in found if c.last_id < before]
        return found[:limit] if limit is not None else found

    @deferred
    async def mark_read(self, user: User, *, peer: User | None = None, room: Room | None = None,
                        up_to: int | None = None) -> int:
        """The user has read the conversation with ``peer`` (or in ``room``) up to message
        ``up_to`` (default: its newest). Marks only move forward; every session of the user
        hears it (ReadMarked), so each clears its unread count. Returns the mark given."""
        if room is not None and user.id not in room.members:
            raise errors.NotMember()
        if up_to is None:
            newest = await (self.store.room_history(room.id, 1) if room is not None
                            else self.store.direct_history(user.id, peer.id, 1))
            up_to = newest[-1].id if newest else 0
        kind, target = ("room", room.id) if room is not None else ("user", peer.id)
        await self.store.set_read_mark(user.id, kind, target, up_to)
        self._publish(events.ReadMarked(user, up_to, peer=peer, room=room), (user.id,))
        return up_to
