"""One login path for every port: credentials, sink, protocol and address in; the session and
the direct messages waiting for it out. A mixin of ``ChatService``.

Whatever the credentials (a plain password, a salted digest, a user a REST session ID or an
IRC SASL exchange vouched for, or a guest's name), the check goes through the one
``LoginThrottle`` by (address, name) in ``Accounts``, and a guest's session that logs in to an
account becomes that account's (``Presence.become``).
"""

from __future__ import annotations

import attrs

from chatserv import errors
from chatserv.bus import Subscription
from chatserv.domain.common import deferred
from chatserv.model import Message, Session, User


@attrs.frozen
class Password:
    name: object
    password: object


@attrs.frozen
class Digest:
    """The salted port's ``sha256_hex(salt + password)``."""

    name: object
    digest: object


@attrs.frozen
class Vouched:
    """A user whose credentials were checked already: a REST session ID's, or an IRC client's
    that logged in (SASL) before it registered."""

    user: User


@attrs.frozen
class GuestName:
    name: object


@attrs.frozen
class LoggedIn:
    user: User
    session: Session | None  # None: no sink asked for one, or the sink did not admit the user
    waiting: list[Message] = attrs.field(factory=list)  # unmarked: the caller marks what it showed


class Login:
    @deferred
    async def log_in(self, credentials, sink=None, protocol: str = "", address: str = "", *,
                     subscribes: Subscription | None = None, guest_session: Session | None = None,
                     waiting: bool = False) -> LoggedIn:
        """Check ``credentials`` and attach a session for ``sink``.

        Without a sink, only the check (a REST login, an IRC SASL exchange before registration).
        ``sink.admit(user)`` runs once the check passed and before the session is attached: the
        port's last word (False: the connection left, or its port refuses the user now); then
        ``sink.attached(session)``.
        ``guest_session``: a guest's session on this sink, which becomes the account's.
        ``waiting``: also read the direct messages waiting for the user, left unmarked.
        Fails with BadCredentials, RateLimited, Busy, UsernameTaken or InvalidUsername.
        """
        user = await self._credentials_user(credentials, address)
        if sink is None:
            return LoggedIn(user, None)
        if guest_session is not None and guest_session.user.guest and not user.guest:
            await self.become(guest_session, user)
            session = guest_session
        elif sink.admit(user):
            session = self.attach(user, sink, protocol, address, subscribes=subscribes)
            sink.attached(session)
        else:
            if user.guest:
                self._forget_guest(user)  # made for this login alone: its name is free again
            return LoggedIn(user, None)
        found = await self.undelivered(user) if waiting and not user.guest else []
        return LoggedIn(user, session, found)

    async def _claimed_guest(self, name) -> User:
        """A guest, once its name is its own on every node (UsernameTaken if another node's)."""
        user = self.guest(name)
        try:
            await self._claim_name(name, user)
        except errors.UsernameTaken:
            self._forget_guest(user)
            raise
        return user

    async def _credentials_user(self, credentials, address: str) -> User:
        if isinstance(credentials, Password):
            return await self.authenticate(credentials.name, credentials.password, address)
        if isinstance(credentials, Digest):
            return await self.authenticate_digest(credentials.name, credentials.digest, address)
        if isinstance(credentials, GuestName):
            return await self._claimed_guest(credentials.name)
        if isinstance(credentials, Vouched):
            return credentials.user
        raise TypeError(f"not credentials: {credentials!r}")
