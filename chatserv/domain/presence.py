"""Presence: the sessions on this node, who is online, the names accounts go by while online
(an IRC nick), and a guest's session becoming an account's. A mixin of ``ChatService``."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from chatserv import errors, events
from chatserv.bus import Audience, Subscription, to_room, to_users
from chatserv.domain.common import deferred
from chatserv.model import Room, Session, User, fold


class Presence:
    def _init_presence(self):
        self._aliases: dict[str, User] = {}  # fold(name) -> the account going by it while online
        self._alias_of: dict[int, str] = {}
        self._last_address: dict[int, str] = {}  # where a room's creator is counted (no wire shows it)
        self._session_ids = itertools.count(1)

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
                self.bus.unwatch(session.user.id)

    def _forget_guest(self, user):
        """A guest has gone, for good (its id is never reused): nothing kept by its id stays."""
        self._guests.pop(fold(user.username), None)
        self._release_name(user.username, user)
        self._last_address.pop(user.id, None)
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

    def protocols_of(self, user: User) -> list[str]:
        """The protocols the user is connected with, on any node."""
        here = {session.protocol for session in self.bus.sessions_of(user.id)}
        return sorted(here.union(self.bus.protocols_elsewhere(user.id)))

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

    @deferred
    async def rename(self, user: User, name, *, origin: Session | None = None) -> str:
        """``user`` goes by ``name`` from now on (until their last session ends, for an account).

        A guest's name is its username, so the guest is renamed; an account keeps its username
        and goes by ``name`` as an alias (its own username again drops the alias). The name must
        be free: nobody else's account, guest or alias, on any node (UsernameTaken; the bus
        claims it where every node looks). Room-mates and the user's other sessions hear of it
        (events.Renamed).
        """
        self.validate_username(name)
        old = self.name_of(user)
        if name == old:
            return old
        if user.guest:
            self._check_free(name, user)
        else:
            owner = self._user_keys.get(fold(name))
            holder = self._guests.get(fold(name)) or self._aliases.get(fold(name))
            if ((owner is not None and owner is not user) or (holder is not None and holder is not user)
                    or self._taken_elsewhere(name, user)):
                raise errors.UsernameTaken()
        if fold(name) != fold(old) and (user.guest or fold(name) != fold(user.username)):
            await self._claim_name(name, user)
        if user.guest:
            del self._guests[fold(user.username)]
            self._release_name(user.username, user, keep=name)
            user.username = name
            self._guests[fold(name)] = user
        else:
            self._drop_alias(user, keep=name)
            if name != user.username:
                self._aliases[fold(name)] = user
                self._alias_of[user.id] = name
            self.bus.notify("alias", [user.id, name])
        self._publish(events.Renamed(user, old), self._room_mates(user) | {user.id}, origin)
        return name

    async def _claim_name(self, name, user: User) -> None:
        """UsernameTaken unless ``name`` is now ``user``'s on every node (the bus claims it);
        NotLoggedIn, the claim given back, if the user left while the bus answered."""
        if not await self.bus.claim_name(fold(name), user.id):
            raise errors.UsernameTaken()
        if self._guests.get(fold(user.username)) is not user and not self.bus.sessions_of(user.id):
            self.bus.release_name(fold(name), user.id)
            raise errors.NotLoggedIn("the session has ended")

    def _release_name(self, name, user: User, keep: str | None = None) -> None:
        """``user`` no longer goes by ``name`` (unless it goes by ``keep``, the same name)."""
        if keep is None or fold(keep) != fold(name):
            self.bus.release_name(fold(name), user.id)

    def _drop_alias(self, user: User, keep: str | None = None) -> None:
        alias = self._alias_of.pop(user.id, None)
        if alias is not None:
            self._aliases.pop(fold(alias), None)
            self._release_name(alias, user, keep)

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
                self._check_attached(session)
                if account.id not in room.members:
                    await self._add_member(room, account, origin=session)
                await self._take_roles(room, guest, account)
            self._check_attached(session)
            self.detach(session, reason=f"Logged in as {account.username}")
            self._attach_session(session, account)
            return
        for room in rooms:
            self._check_attached(session)
            if account.id not in room.members:
                await self._enroll(room, account)
            await self._take_roles(room, guest, account)
        self._check_attached(session)
        self._publish(events.Renamed(account, guest.username, before=guest), self._room_mates(guest), session)
        self.bus.unsubscribe(session)
        self._attach_session(session, account, renamed_from=guest)
        self._forget_guest(guest)  # gone without a word where the rename was shown
        self._presence(guest, False, session.protocol, origin=session,
                       reason=f"Logged in as {account.username}")
        self.bus.unwatch(guest.id)

    def _check_attached(self, session: Session) -> None:
        """NotLoggedIn once ``session`` has ended (its client left while ``become`` waited on
        the store): it must not be attached again, as a session nobody would ever detach."""
        if session not in self.bus.sessions_of(session.user.id):
            raise errors.NotLoggedIn("the session has ended")

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

    # delivery

    def _publish(self, event, user_ids: Iterable[int], origin: Session | None = None) -> int:
        """Publish ``event`` to these users' sessions but ``origin``."""
        return self.bus.publish(event, to_users(*user_ids, skip_session=origin.id if origin else None))

    def _publish_to_room(self, event, room: Room, origin: Session | None = None) -> int:
        return self.bus.publish(event, to_room(room.id, skip_session=origin.id if origin else None))
