"""ChatService: the domain. Accounts, sessions and presence, contacts, blocks, rooms, messages.

It knows no wire format. Protocols call it with a logged-in ``Session`` (or a ``User``) and
get Deferreds back; live events go out through one seam, ``self.bus.publish(event, audience)``
(``chatserv.bus``), which hands them to the sinks that subscribed. The small
tables live in memory here and are written through to the store; every change is durable
before the Deferred that reports it fires, and a message is stored before anyone sees it.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import itertools
import re
from collections.abc import Iterable

import attrs
from prometheus_client import Histogram
from twisted.application import service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from zope.interface import Interface

from chatserv import errors, events
from chatserv.bus import Audience, IBus, Subscription, to_room, to_users
from chatserv.bus.local import LocalBus
from chatserv.credentials import Hasher, LoginThrottle, new_salt, password_digest
from chatserv.limits import Limits, RateTable
from chatserv.model import (
    CONTACT_STATUSES,
    LOBBY,
    Conversation,
    HistoryBounds,
    Message,
    Room,
    Session,
    User,
    fold,
)
from chatserv.room_settings import RoomSettings
from chatserv.text import NOT_UNICODE, encodable

log = Logger()

# A name every protocol can carry: IRC nick rules, which the other wires accept too.
_USERNAME = re.compile(r"[A-Za-z_\[\]\\`^{|}][A-Za-z0-9_\-\[\]\\`^{|}]{0,31}\Z")
_ROOM = re.compile(r"[^\s,:#\x00-\x1f\x7f][^\s,\x00-\x1f\x7f]{0,49}\Z")
RESERVED_NAMES = frozenset({"nickserv", "chanserv", "server", "system"})
UNREAD_CAP = 1000  # unread messages counted per conversation ("1000" means "at least")


def keepable(text: str, what: str) -> str:
    """``text`` if the store can keep it (UTF-8 can encode it), else errors.Invalid. Every port
    refuses such text as it decodes it: this is the last line of defence."""
    if not encodable(text):
        raise errors.Invalid(f"{what}: {NOT_UNICODE}")
    return text


class ISink(Interface):
    def deliver(event):
        """Render ``event`` on this session's wire (must not raise)."""


def deferred(method):
    """Run an ``async def`` service method as a Deferred, the currency of Twisted callers."""

    def wrapper(*args, **kwargs):
        return Deferred.fromCoroutine(method(*args, **kwargs))

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


class _Directory:
    """What the bus asks the domain to resolve an audience (``chatserv.bus.IDirectory``)."""

    def __init__(self, service: ChatService):
        self._service = service

    def room_members(self, room_id):
        room = self._service._rooms_by_id.get(room_id)
        return room.members if room is not None else ()

    def rooms_of(self, user_id):
        return [room.id for room in self._service._rooms_of.get(user_id, ())]

    def contact_owners(self, user_id):
        return self._service._contact_of.get(user_id, ())

    def blockers_of(self, user_id):
        return self._service._blocked_by.get(user_id) or ()


class ChatService(RoomSettings, service.Service):
    node_name = ""  # which node of a cluster this is (--node-name), for logs and metrics

    def __init__(self, store, hasher: Hasher, clock, limits: Limits | None = None, bus: IBus | None = None):
        self.store = store
        self.bus = bus if bus is not None else LocalBus(_Directory(self))
        self.hasher = hasher
        self.clock = clock
        self.limits = limits or Limits()
        self.stats = collections.Counter()
        # Unregistered: the web port's /metrics registry adds it.
        self.delivery_latency = Histogram(
            "chatserv_delivery_latency_seconds",
            "Seconds from a message's arrival to its hand-over to the recipients' live sessions "
            "(storing it included)", registry=None)
        self._salt_secret: bytes | None = None  # the store's, so fake salts outlive restarts
        self._ready: Deferred | None = None
        self._waiting: list[Deferred] = []
        self._users: dict[int, User] = {}
        self._user_keys: dict[str, User] = {}
        self._guests: dict[str, User] = {}
        self._aliases: dict[str, User] = {}  # fold(name) -> the account going by it while online
        self._alias_of: dict[int, str] = {}
        self._rooms: dict[str, Room] = {}
        self._rooms_by_id: dict[int, Room] = {}
        # Indexes, so that nothing done for one user costs time in proportion to all rooms.
        self._rooms_of: dict[int, set[Room]] = collections.defaultdict(set)  # by member id
        self._created_by: dict[int, set[Room]] = collections.defaultdict(set)  # by creator id
        self._created_from: dict[str, set[Room]] = collections.defaultdict(set)  # by creator address
        self._creation: dict[Room, tuple[int, str]] = {}  # room -> (creator id, address)
        lim = self.limits
        self._user_room_rate = RateTable(clock, lim.room_rate_per_user, lim.room_burst_per_user)
        self._address_room_rate = RateTable(clock, lim.room_rate_per_address, lim.room_burst_per_address)
        self._contacts: dict[int, dict[int, str]] = collections.defaultdict(dict)
        self._contact_of: dict[int, set[int]] = collections.defaultdict(set)
        self._blocked_by: dict[int, set[int]] = collections.defaultdict(set)
        self._before_block: dict[tuple[int, int], str] = {}  # (owner, contact): status a block replaced
        self._tokens: list[tuple[str, int, float, float]] = []
        self.token_watchers: list = []  # the web ports' session IDs: other nodes' reach them
        self._last_address: dict[int, str] = {}  # where a room's creator is counted (no wire shows it)
        self._invites: dict[int, set[int]] = {}  # user id -> rooms it was invited to, until it joins
        self._newest: dict[int, int] = {}  # room id -> id of its newest message handed out since start
        # what accounts were shown in rooms the store does not keep: room id -> user id -> message id
        self._seen_unstored: dict[int, dict[int, int]] = collections.defaultdict(dict)
        self.throttle = LoginThrottle(lambda: self.clock.seconds(), self.limits)
        self.bans: set[str] = set()
        self._session_ids = itertools.count(1)
        # Names being registered, and rooms being created, while the store writes them.
        self._registering: set[str] = set()
        self._creating: dict[str, Deferred] = {}

    # life cycle

    def startService(self):
        super().startService()
        opening = self._ready = self.store.open()
        opening.addCallback(self._load)
        opening.addErrback(self._failed_open)

    def _load(self, snapshot):
        for user in snapshot.users:
            self._users[user.id] = user
            self._user_keys[fold(user.username)] = user
        for room in snapshot.rooms:
            self._rooms[fold(room.name)] = self._rooms_by_id[room.id] = room
            for uid in room.members:
                self._rooms_of[uid].add(room)
            if room.created_by is not None:
                self._created_by[room.created_by].add(room)
        for owner, contact, status, before_block in snapshot.contacts:
            self._index_contact(owner, contact, status, before_block)
        self.bans = set(snapshot.bans)
        self._tokens = list(snapshot.tokens)
        self._salt_secret = snapshot.salt_secret
        d = succeed(None)
        if fold(LOBBY) not in self._rooms:
            d = Deferred.fromCoroutine(self._new_room(LOBBY, None))
        d.addCallback(self._release_waiters, None)
        return d

    def _failed_open(self, failure):
        if failure.check(errors.StoreUnavailable):  # not a bug: one line says where and why
            log.critical("cannot open the store: {why}", why=failure.getErrorMessage())
        else:
            log.failure("cannot open the store", failure)
        self._release_waiters(None, failure)

    def _release_waiters(self, _, failure):
        self._ready = failure or True
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(failure) if failure else d.callback(self)

    def when_ready(self) -> Deferred:
        """A Deferred firing with the service once the store is loaded."""
        if self._ready is True:
            return succeed(self)
        d = Deferred()
        if self._ready is None or isinstance(self._ready, Deferred):
            self._waiting.append(d)
        else:
            d.errback(self._ready)
        return d

    def stopService(self):
        super().stopService()
        return self.store.close()

    # accounts

    def validate_username(self, name) -> str:
        if not isinstance(name, str) or not _USERNAME.match(name):
            raise errors.InvalidUsername()
        if fold(name) in RESERVED_NAMES:
            raise errors.ReservedUsername()
        return name

    def _check_free(self, name, guest: User | None = None):
        holder = self._guests.get(fold(name)) or self._aliases.get(fold(name))
        if (fold(name) in self._user_keys or fold(name) in self._registering
                or (holder is not None and holder is not guest) or self._taken_elsewhere(name, guest)):
            raise errors.UsernameTaken()

    def _taken_elsewhere(self, name, user: User | None) -> bool:
        """Whether someone online on another node goes by ``name``."""
        key = fold(name)
        return any(fold(ref.username) == key and (user is None or ref.id != user.id)
                   for ref in self.bus.names_elsewhere())

    def user(self, name) -> User:
        """The registered user of that name (case-insensitive), else NotFound."""
        user = self._user_keys.get(fold(name)) if isinstance(name, str) else None
        if user is None:
            raise errors.UserNotFound()
        return user

    def user_or_guest(self, name) -> User:
        """A registered user, an online guest, or whoever goes by that name now; else NotFound."""
        if isinstance(name, str):
            found = self._guests.get(fold(name)) or self._aliases.get(fold(name))
            if found is not None:
                return found
            for ref in self.bus.names_elsewhere():  # a guest on another node
                if ref.guest and fold(ref.username) == fold(name):
                    return self._guest_by_id(ref.id)
        return self.user(name)

    def user_by_id(self, user_id) -> User:
        user = self._users.get(user_id)
        if user is None:
            raise errors.UserNotFound()
        return user

    def users(self) -> list[User]:
        return sorted(self._users.values(), key=lambda u: fold(u.username))

    def is_registered(self, name) -> bool:
        return isinstance(name, str) and fold(name) in self._user_keys

    def salt_for(self, name: str) -> str:
        """A user's salt; an unknown name gets a stable fake one, so salts reveal no accounts."""
        user = self._user_keys.get(fold(name))
        if user is not None:
            return user.salt
        mac = hmac.new(self._salt_secret, fold(name).encode(), hashlib.sha256).digest()
        return str(10**31 + int.from_bytes(mac, "big") % (9 * 10**31))

    @deferred
    async def register(self, username, password, *, guest: User | None = None, address: str = "") -> User:
        """Create an account from a plain password.

        ``guest``: the caller's own guest user, whose name may become the account's (the guest
        keeps its sessions until the caller moves them to the account). ``address``: the
        caller's, whose hashes in flight are limited as its logins are.
        """
        self.validate_username(username)
        if not isinstance(password, str) or not password:
            raise errors.EmptyPassword()
        keepable(password, "password")
        self._check_free(username, guest)
        salt = new_salt()
        return await self.register_digest(username, salt, password_digest(salt, password), guest=guest,
                                          address=address)

    @deferred
    async def register_digest(self, username, salt, digest, *, guest: User | None = None,
                              address: str = "") -> User:
        """Create an account from ``sha256_hex(salt + password)`` (the salted port's form)."""
        self.validate_username(username)
        if not isinstance(digest, str) or not digest:
            raise errors.EmptyPassword()
        keepable(digest, "password")
        self._check_free(username, guest)
        with self.throttle.hashing(address):
            verifier = await self.hasher.make_verifier(digest)
        self._check_free(username, guest)  # another registration may have won while we hashed
        user = User(0, username, salt, verifier, self.clock.seconds())
        self._registering.add(fold(username))
        try:
            user.id = await self.store.add_user(user)  # stored first, then cached
        finally:
            self._registering.discard(fold(username))
        self._users[user.id] = user
        self._user_keys[fold(username)] = user
        self.bus.notify("user", user.id)
        self.stats["registrations"] += 1
        return user

    @deferred
    async def authenticate(self, username, password, address: str = "") -> User:
        """The user, if the plain password is theirs; else BadCredentials."""
        if not isinstance(username, str) or not isinstance(password, str):
            raise errors.BadCredentials("bad credentials")
        keepable(username, "username")
        keepable(password, "password")
        user = self._user_keys.get(fold(username))
        salt = user.salt if user else self.salt_for(username)
        return await self.authenticate_digest(username, password_digest(salt, password), address)

    @deferred
    async def authenticate_digest(self, username, digest, address: str = "") -> User:
        """The user, if ``digest`` is their ``sha256_hex(salt + password)``; else BadCredentials.

        ``self.throttle`` admits the check (RateLimited: this name or address is locked out;
        Busy: this address has its logins in flight), and the hasher may answer Busy; neither
        counts as a failure.
        """
        if not isinstance(username, str) or not isinstance(digest, str):
            raise errors.BadCredentials("bad credentials")
        keepable(username, "username")
        keepable(digest, "password")
        user = self._user_keys.get(fold(username))
        with self.throttle.attempt(fold(username), address, account=user is not None) as attempt:
            ok = await self.hasher.check(user.verifier if user else None, digest)
            attempt.checked(ok)
        if not ok:
            self.stats["login_failures"] += 1
            raise errors.BadCredentials("bad credentials")
        self.stats["logins"] += 1
        return user

    @deferred
    async def set_public_key(self, user: User, key: str | None) -> None:
        key = key if key is None else keepable(key, "public key")
        await self.store.update_user(attrs.evolve(user, public_key=key))
        user.public_key = key
        self.bus.notify("user", user.id)

    def guest(self, name) -> User:
        """A temporary user for this name; it lives while it has sessions and is never stored.

        Its id is never reused, even after a restart (the store keeps the lowest one handed out,
        and that write goes before any message naming the id), so no later guest reads its
        conversations.
        """
        self.validate_username(name)
        self._check_free(name)
        user = User(self.store.new_guest_id(), name, "", None, self.clock.seconds())
        self._guests[fold(name)] = user
        return user

    # sessions and presence

    def attach(self, user: User, sink, protocol: str, address: str = "", *,
               subscribes: Subscription | None = None) -> Session:
        """Register a live session; the first one of a user brings them online.

        ``subscribes``: what the sink renders, by default its ``subscribes`` attribute (else
        direct messages, besides what every sink hears).
        """
        if subscribes is None:
            subscribes = getattr(sink, "subscribes", Subscription.DIRECT)
        session = Session(next(self._session_ids), user, protocol, address, sink, subscribes)
        first = not self.bus.sessions_of(user.id)
        self.bus.subscribe(session)
        if address:
            self._last_address[user.id] = address
        self.stats["sessions"] += 1
        if first:
            self._presence(user, True, protocol, origin=session)
        return session

    def detach(self, session: Session, reason: str = "") -> None:
        """Unregister a session; the last one of a user takes them offline (``reason``: why)."""
        if session not in self.bus.sessions_of(session.user.id):
            return
        self.bus.unsubscribe(session)
        if not self.bus.sessions_of(session.user.id):
            # Watchers hear of it while a leaving guest's rooms still name it (IRC's QUIT needs them).
            self._presence(session.user, False, session.protocol, origin=session, reason=reason)
            self._drop_alias(session.user)
            if session.user.guest:
                self._forget_guest(session.user)

    def _forget_guest(self, user):
        self._guests.pop(fold(user.username), None)
        self._user_room_rate.forget(user.id)
        self._forget_roles(user)
        for room in list(self._rooms_of.get(user.id, ())):
            self._drop_member(room, user.id)

    def _presence(self, user, online, protocol, origin, reason="", renamed_from=None):
        self.bus.publish(events.PresenceChanged(user, online, protocol, reason, renamed_from),
                         Audience(presence_of=user.id, skip_session=origin.id))

    def watch_presence_of(self, session: Session, users: Iterable[User]) -> None:
        """``session`` also hears when ``users`` come and go: people it has a conversation with
        who are not its user's contacts (a contact's presence reaches it anyway)."""
        self.bus.watch_presence(session, [user.id for user in users])

    def sessions_of(self, user: User) -> list[Session]:
        return list(self.bus.sessions_of(user.id))

    def is_online(self, user: User) -> bool:
        """Online on any node."""
        return self.bus.is_online(user.id)

    def online_count(self) -> int:
        return len(self.bus.users_online())

    def online_users(self) -> list[User]:
        found = (self._users.get(uid) or self._guest_by_id(uid) for uid in list(self.bus.users_online()))
        return sorted((u for u in found if u is not None), key=lambda u: fold(u.username))

    # names: while online, an account may go by another name than its username (an IRC nick)

    def name_of(self, user: User) -> str:
        """The name ``user`` goes by now: an alias taken while online, else the username."""
        return self._alias_of.get(user.id, user.username)

    def rename(self, user: User, name, *, origin: Session | None = None) -> str:
        """``user`` goes by ``name`` from now on (until their last session ends, for an account).

        A guest's name is its username, so the guest is renamed; an account keeps its username
        and goes by ``name`` as an alias (its own username again drops the alias). The name must
        be free: nobody else's account, guest or alias (AlreadyExists). Room-mates and the
        user's other sessions hear of it (events.Renamed).
        """
        self.validate_username(name)
        old = self.name_of(user)
        if name == old:
            return old
        if user.guest:
            self._check_free(name, user)
            del self._guests[fold(user.username)]
            user.username = name
            self._guests[fold(name)] = user
        else:
            owner = self._user_keys.get(fold(name))
            holder = self._guests.get(fold(name)) or self._aliases.get(fold(name))
            if ((owner is not None and owner is not user) or (holder is not None and holder is not user)
                    or self._taken_elsewhere(name, user)):
                raise errors.UsernameTaken()
            self._drop_alias(user)
            if name != user.username:
                self._aliases[fold(name)] = user
                self._alias_of[user.id] = name
            self.bus.notify("alias", [user.id, name])
        self._publish(events.Renamed(user, old), self._room_mates(user) | {user.id}, origin)
        return name

    def _drop_alias(self, user: User) -> None:
        alias = self._alias_of.pop(user.id, None)
        if alias is not None:
            self._aliases.pop(fold(alias), None)

    def _room_mates(self, user: User) -> set[int]:
        mates: set[int] = set()
        for room in self._rooms_of.get(user.id, ()):
            mates |= room.members
        return mates

    @deferred
    async def become(self, session: Session, account: User) -> None:
        """A guest's session logged in to ``account``: it becomes the account's session, and the
        account joins the guest's rooms, past their settings, and takes its roles there.

        When the account was offline, whoever saw the guest sees it renamed (events.Renamed with
        ``before``) rather than leaving, and the account's other room-mates see it arrive; when
        the account is online already, the guest leaves and the account joins as usual.
        """
        guest = session.user
        rooms = self.rooms_of(guest)
        if self.is_online(account):
            for room in rooms:
                if account.id not in room.members:
                    await self._add_member(room, account, origin=session)
                await self._take_roles(room, guest, account)
            self.detach(session, reason=f"Logged in as {account.username}")
            self._attach_session(session, account)
            return
        for room in rooms:
            if account.id not in room.members:
                await self._enroll(room, account)
            await self._take_roles(room, guest, account)
        self._publish(events.Renamed(account, guest.username, before=guest), self._room_mates(guest), session)
        self.bus.unsubscribe(session)
        self._attach_session(session, account, renamed_from=guest)
        self._forget_guest(guest)  # gone without a word where the rename was shown
        self._presence(guest, False, session.protocol, origin=session,
                       reason=f"Logged in as {account.username}")

    def _attach_session(self, session: Session, account: User, renamed_from: User | None = None):
        session.user = account
        first = not self.bus.sessions_of(account.id)
        self.bus.subscribe(session)
        if first:
            self._presence(account, True, session.protocol, origin=session, renamed_from=renamed_from)

    def kick_others(self, session: Session, reason: str) -> None:
        """End the user's other sessions on the same protocol (a second login kicks the first)."""
        others = [other.id for other in self.sessions_of(session.user)
                  if other is not session and other.protocol == session.protocol]
        if others:
            self.bus.publish(events.Kicked(reason), Audience(sessions=frozenset(others)))

    # contacts and blocks

    def _index_contact(self, owner, contact, status, before_block=None):
        self._contacts[owner][contact] = status
        self._contact_of[contact].add(owner)
        if status == "blocked":
            self._blocked_by[contact].add(owner)
        else:
            self._blocked_by[contact].discard(owner)
        if before_block is not None:
            self._before_block[owner, contact] = before_block
        else:
            self._before_block.pop((owner, contact), None)

    def _unindex_contact(self, owner, contact):
        self._contacts[owner].pop(contact, None)
        self._contact_of[contact].discard(owner)
        self._blocked_by[contact].discard(owner)
        self._before_block.pop((owner, contact), None)

    def contacts(self, owner: User) -> list[tuple[User, str]]:
        """The owner's contact list with each status, by name."""
        found = [(self._users[cid], status) for cid, status in self._contacts.get(owner.id, {}).items()]
        return sorted(found, key=lambda pair: fold(pair[0].username))

    def contact_status(self, owner: User, contact: User) -> str | None:
        return self._contacts.get(owner.id, {}).get(contact.id)

    def has_blocked(self, owner: User, other: User) -> bool:
        return owner.id in self._blocked_by.get(other.id, ())

    def _registered_other(self, owner: User, name) -> User:
        if owner.guest:
            raise errors.GuestDenied()
        other = self.user(name)
        if other.id == owner.id:
            raise errors.ContactIsSelf()
        return other

    @deferred
    async def set_contact(self, owner: User, name, status="friend", *, keep_existing=False) -> User:
        """Create or change a contact relation; ``keep_existing`` leaves a present one as it is.

        A block remembers the status it replaces, for ``unblock`` to restore. Lifting a block is
        heard by the owner alone: the other was never told of the block, and is not "added".
        """
        if status not in CONTACT_STATUSES:
            raise errors.UnknownContactStatus()
        other = self._registered_other(owner, name)
        current = self.contact_status(owner, other)
        if current == status or (keep_existing and current is not None):
            return other
        before_block = current if status == "blocked" else None
        await self.store.set_contact(owner.id, other.id, status, before_block)
        self._index_contact(owner.id, other.id, status, before_block)
        event = events.ContactChanged(owner, other, status, current)
        self._publish(event, (owner.id,) if current == "blocked" else (owner.id, other.id))
        return other

    def add_contact(self, owner: User, name, status="friend"):
        return self.set_contact(owner, name, status, keep_existing=True)

    @deferred
    async def remove_contact(self, owner: User, name) -> User:
        other = self._registered_other(owner, name)
        previous = self.contact_status(owner, other)
        if previous is None:
            raise errors.ContactNotFound()
        await self.store.remove_contact(owner.id, other.id)
        self._unindex_contact(owner.id, other.id)
        self._publish(events.ContactChanged(owner, other, None, previous), (owner.id, other.id))
        return other

    def block(self, owner: User, name):
        """Block ``name`` everywhere: the same relation as contact status ``blocked``."""
        return self.set_contact(owner, name, "blocked")

    @deferred
    async def unblock(self, owner: User, name) -> User:
        """Lift a block: the relation goes back to what the block replaced (a seed 000 or web
        contact keeps its status), or away if there was none."""
        other = self._registered_other(owner, name)
        if self.contact_status(owner, other) != "blocked":
            return other
        restored = self._before_block.get((owner.id, other.id))
        if restored is None:
            return await self.remove_contact(owner, name)
        return await self.set_contact(owner, name, restored)

    # rooms

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
        for index, key in ((self._created_by, creator), (self._created_from, address)):
            rooms = index.get(key)
            if rooms is not None:
                rooms.discard(room)
                if not rooms:
                    del index[key]
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

    # messages

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

        ``tags``: client-only tags that travel with the live message and are never stored.
        """
        self._check_body(body, kind)
        recipient = to if isinstance(to, User) else self.user_or_guest(to)
        if self.has_blocked(recipient, sender):
            raise errors.Blocked("blocked")
        live = any(s.subscribes & Subscription.DIRECT for s in self.bus.sessions_of(recipient.id))
        message = self._new_message(sender, body, kind, recipient_id=recipient.id, delivered=live)
        message = attrs.evolve(message, id=await self.store.add_message(message))
        self.stats["messages"] += 1
        event = events.DirectMessage(message, sender, recipient, tags)
        if recipient.id == sender.id:  # to oneself: every session, the origin too
            delivered = self._publish(event, (sender.id,))
        else:  # the recipient's sessions, and the sender's others
            delivered = self._publish(event, (recipient.id, sender.id), origin)
        self._delivered(message, delivered)
        return message

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
        waiting = await self.store.inbox(user.id, limit, undelivered_only=True)
        if waiting:
            await self.store.mark_delivered([m.id for m in waiting])
        return waiting

    def undelivered(self, user: User, limit=1000) -> Deferred:
        """Deferred[list[Message]]: direct messages still waiting for the user, oldest first, left
        waiting: a session that confirms delivery marks each with ``mark_delivered``."""
        return self.store.inbox(user.id, limit, undelivered_only=True)

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

    # login tokens: seed 004's session IDs, kept so that a restart keeps web users logged in

    def saved_tokens(self) -> list[tuple[str, User, float, float]]:
        """The tokens the store had at start: (digest, user, created at, last used)."""
        return [(digest, self._users[uid], created, used) for digest, uid, created, used in self._tokens
                if uid in self._users]

    def save_token(self, digest: str, user: User, created_at: float, last_used: float) -> Deferred:
        self.bus.notify("token", [digest, user.id, created_at, last_used])
        return self.store.save_token(digest, user.id, created_at, last_used)

    def drop_token(self, digest: str) -> Deferred:
        self.bus.notify("token_dropped", digest)
        return self.store.remove_token(digest)

    # IP bans (seed 002's admin-managed list, honoured wherever a protocol checks it)

    def is_banned(self, address: str) -> bool:
        """``address`` as ``bans.ban_key`` writes it."""
        return address in self.bans

    @deferred
    async def ban(self, address: str) -> None:
        """Honoured at once (a ban must not wait for a disk); taken back if it cannot be stored."""
        fresh = address not in self.bans
        self.bans.add(address)
        try:
            await self.store.add_ban(address)
        except BaseException:
            if fresh:
                self.bans.discard(address)
            raise
        self.bus.notify("ban", address)

    @deferred
    async def unban(self, address: str) -> None:
        await self.store.remove_ban(address)
        self.bans.discard(address)
        self.bus.notify("unban", address)

    # delivery

    def _publish(self, event, user_ids: Iterable[int], origin: Session | None = None) -> int:
        """Publish ``event`` to these users' sessions but ``origin``."""
        return self.bus.publish(event, to_users(*user_ids, skip_session=origin.id if origin else None))

    def _publish_to_room(self, event, room: Room, origin: Session | None = None) -> int:
        return self.bus.publish(event, to_room(room.id, skip_session=origin.id if origin else None))
