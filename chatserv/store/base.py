"""The store interface. Only a store touches the database.

The store is the source of truth and gives every user, room, message and guest its id. The
small tables (users, contacts, rooms, members, bans) are handed to the service once, at
``open``, and cached there; every write returns a Deferred that fires once the change is
durable, and the service updates its cache only then. Message history is read back on demand.
"""

from zope.interface import Interface


class IStore(Interface):
    def open():
        """Apply migrations and load the small tables: Deferred[Snapshot]."""

    def close():
        """Finish every queued write and release the database: Deferred[None]."""

    def when_broken():
        """Deferred[BaseException]: fires, with the reason, if the store can no longer write at
        all (its writer thread stopped); a daemon should then exit, so a supervisor restarts it."""

    def add_user(user):
        """Persist a new User: Deferred[int], the id the store gave it (``user.id`` is ignored)."""

    def update_user(user):
        """Persist a changed verifier or public key."""

    def set_contact(owner_id, contact_id, status, before_block=None):
        """Create or change the contact relation (status ``blocked`` is a block; ``before_block``:
        the status that block replaced, which unblocking restores)."""

    def remove_contact(owner_id, contact_id):
        """Delete the contact relation."""

    def add_room(room):
        """Persist a new Room (one that is not ``persistent`` only takes an id): Deferred[int],
        the id the store gave it. Room ids are never reused."""

    def update_room(room):
        """Persist a changed topic or setting (``chatserv.model.ROOM_FLAGS`` and ``ROOM_VALUES``)."""

    def set_room_role(room_id, user_id, role, held):
        """Give (``held``) or take back an account's role in a room: ``operator`` or ``voice``."""

    def add_room_ban(room_id, ban):
        """Persist a RoomBan."""

    def remove_room_ban(room_id, mask):
        """Lift a ban (masks compare case-insensitively)."""

    def add_member(room_id, user_id):
        """Make a user a member of a room."""

    def remove_member(room_id, user_id):
        """End a membership."""

    def add_message(message):
        """Persist a Message: Deferred[int], the id the store gave it (``message.id`` is
        ignored). Ids grow in the order messages are stored."""

    def mark_delivered(message_ids):
        """Flag direct messages as handed to a live session."""

    def room_history(room_id, limit, before_id=None):
        """Deferred[list[Message]]: the newest ``limit`` room messages, oldest first."""

    def direct_history(user_id, other_id, limit, before_id=None):
        """Deferred[list[Message]]: direct messages between two users, oldest first."""

    def inbox(user_id, limit, undelivered_only=False):
        """Deferred[list[Message]]: direct messages received by a user, oldest first."""

    def message_range(bounds, limit, room_id=None, pair=None):
        """Deferred[list[Message]], oldest first: a room's messages, or those between the two
        users of ``pair``, within ``bounds`` (a HistoryBounds): the newest ``limit``, or the
        oldest with ``bounds.oldest``."""

    def last_seen(user_id):
        """Deferred[dict[room_id, message_id]]: what ``set_last_seen`` recorded for the user."""

    def set_last_seen(user_id, room_id, message_id):
        """Record that the user was shown the room's messages up to ``message_id`` (never back)."""

    def new_guest_id():
        """A new guest id (negative), never handed out before, even before a restart; the write
        that keeps it goes before any write that names it."""

    def forget_room_messages(room_id):
        """Delete the messages of a room that was never persisted and has vanished."""

    def add_ban(address):
        """Persist an IP ban."""

    def remove_ban(address):
        """Lift an IP ban."""

    def set_read_mark(user_id, kind, target_id, message_id):
        """The user has read a conversation (``kind`` ``user`` or ``room``) up to ``message_id``;
        a mark never moves back."""

    def conversations(user_id, room_ids, unread_cap):
        """Deferred[list[(kind, target_id, last Message or None, unread)]]: every direct
        conversation of the user (``user``, the other party's id) and each of ``room_ids``
        (``room``). ``unread`` counts others' messages after the read mark, at most
        ``unread_cap``; a room without a mark counts none."""

    def save_token(digest, user_id, created_at, last_used):
        """Create or refresh a login token (kept as the digest of the token)."""

    def remove_token(digest):
        """Forget a login token."""

    # reads for a node of a cluster (``chatserv.nodes``): what another node changed

    def user_by_id(user_id):
        """Deferred[User | None]: one user as stored now."""

    def room_by_id(room_id):
        """Deferred[Room | None]: one persistent room as stored now, with its members."""

    def messages_after(after_id, limit):
        """Deferred[list[Message]]: every message with an id above ``after_id``, oldest first,
        at most ``limit``."""

    def snapshot():
        """Deferred[Snapshot]: the small tables as they are now (what another node changed
        while this one could not hear of it)."""

    def newest_message_id():
        """Deferred[int]: the id of the newest stored message (0 if none)."""
