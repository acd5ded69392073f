"""REST session IDs: unguessable tokens that expire unused and die at logout.

A session ID is what ``/login`` hands out and what every later REST call and every
Socket.IO connection names. It proves who the caller is; it does not by itself make the
user online. Seed 004 ties presence to the socket: connect says "online" to the user's
contacts and disconnect says "offline", so each Socket.IO connection is the service session
(one per connection, DESIGN.md). Were the ID a service session too, a user who closed the
page would look online on every port until the ID expired, and no contact would ever hear
the connect or disconnect. An ID expires ``ttl`` seconds after its last use, but never
while a socket opened with it is connected; logging out disconnects those sockets.

IDs are kept in the store (as SHA-256 digests: a copy of the database logs nobody in), so
a restarted daemon still knows them and web users stay logged in. A user has at most
``per_user`` of them: a login beyond that ends the oldest.
"""

from __future__ import annotations

import collections
import hashlib
import secrets

from twisted.internet import defer
from twisted.logger import Logger

from chatserv import errors, events
from chatserv.limits import Limits, TokenBucket
from chatserv.model import User

log = Logger()

PERSIST_FRACTION = 10  # a use is written to the store when the stored one is ttl / 10 old


class InvalidSession(errors.NotLoggedIn):
    """The session ID is missing, forged, expired or logged out."""


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class WebSession:
    def __init__(self, sessions: WebSessions, digest: str, user: User, created_at: float,
                 last_used: float, token: str | None = None):
        self.sessions = sessions
        self.digest = digest
        self.token = token  # known only to the process that made it: the store keeps the digest
        self.user = user
        self.created_at = created_at
        self.last_used = self._stored_use = last_used
        self.sockets: set = set()  # Socket.IO connections opened with this session ID
        self.rate = TokenBucket(sessions.clock, sessions.limits.messages_per_second,
                                sessions.limits.message_burst)  # for messages sent over REST
        self._expiry = None

    def touch(self):
        """A use: the expiry starts again, and the store hears of it now and then."""
        sessions = self.sessions
        self.last_used = sessions.clock.seconds()
        self._expire_in(sessions.ttl)
        if self.last_used - self._stored_use >= sessions.ttl / PERSIST_FRACTION:
            self._stored_use = self.last_used
            sessions.save(self).addErrback(_not_kept, "a use of a session ID")

    def _expire_in(self, seconds: float):
        if self._expiry is not None and self._expiry.active():
            self._expiry.reset(seconds)
        else:
            self._expiry = self.sessions.clock.callLater(seconds, self._expired)

    def _expired(self):
        self._expiry = None
        if self.sockets:
            self.touch()
        else:
            self.sessions.end(self)

    def cancel_expiry(self):
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None


class WebSessions:
    """The live session IDs of one web port.

    ``service`` keeps them (``saved_tokens``, ``save_token``, ``drop_token``).
    """

    def __init__(self, service, clock, ttl: float, limits: Limits, per_user: int = 10):
        self.service = service
        self.clock = clock
        self.ttl = ttl
        self.limits = limits
        self.per_user = per_user
        self._by_digest: dict[str, WebSession] = {}
        self._by_user: dict[int, list[WebSession]] = collections.defaultdict(list)
        watchers = getattr(service, "token_watchers", None)
        if watchers is not None:  # other nodes' session IDs work here too (chatserv.nodes)
            watchers.append(self)

    def __len__(self):
        return len(self._by_digest)

    def load(self):
        """Take up the IDs the store kept; those that expired while the daemon was down go."""
        now = self.clock.seconds()
        for digest, user, created_at, last_used in self.service.saved_tokens():
            if digest in self._by_digest:
                continue
            left = last_used + self.ttl - now
            if left <= 0:
                self._forget(digest)
                continue
            session = WebSession(self, digest, user, created_at, last_used)
            self._add(session)
            session._expire_in(left)

    def adopt(self, digest: str, user: User, created_at: float, last_used: float):
        """Another node made (or used) this session ID: it works here too, as long."""
        session = self._by_digest.get(digest)
        if session is None:
            session = WebSession(self, digest, user, created_at, last_used)
            self._add(session)
        session.last_used = session._stored_use = max(session.last_used, last_used)
        session._expire_in(max(0.0, session.last_used + self.ttl - self.clock.seconds()))

    def dropped(self, digest: str):
        """Another node ended this session ID."""
        session = self._by_digest.get(digest)
        if session is not None:
            self.end(session, stored=False)

    def start(self, user: User) -> defer.Deferred:
        """A new session ID for ``user`` (ending their oldest beyond ``per_user``):
        Deferred[WebSession], fired once the store has it."""
        mine = self._by_user.get(user.id, [])
        while self.per_user and len(mine) >= self.per_user:
            # the least recently used, sparing those a socket uses while others remain
            self.end(min(mine, key=lambda s: (bool(s.sockets), s.last_used)))
        token = secrets.token_urlsafe(32)
        now = self.clock.seconds()
        session = WebSession(self, token_digest(token), user, now, now, token)
        self._add(session)
        session.touch()
        return self.save(session).addCallback(lambda _: session)

    def _add(self, session: WebSession):
        self._by_digest[session.digest] = session
        self._by_user[session.user.id].append(session)

    def save(self, session: WebSession) -> defer.Deferred:
        return defer.maybeDeferred(self.service.save_token, session.digest, session.user,
                                   session.created_at, session.last_used)

    def _forget(self, digest: str):
        defer.maybeDeferred(self.service.drop_token, digest).addErrback(_not_kept, "the end of a session ID")

    def get(self, token) -> WebSession:
        """The live session of that ID (its expiry pushed back), else InvalidSession."""
        session = self._by_digest.get(token_digest(token)) if isinstance(token, str) else None
        if session is None:
            raise InvalidSession("Invalid session")
        session.touch()
        return session

    def of_user(self, user: User) -> list[WebSession]:
        return list(self._by_user.get(user.id, ()))

    def end(self, session: WebSession, *, stored: bool = True):
        """Log the session out: its sockets are disconnected and its ID dies (``stored``: in
        the store too, unless another node did that)."""
        if self._by_digest.get(session.digest) is not session:
            return
        del self._by_digest[session.digest]
        mine = self._by_user[session.user.id]
        mine.remove(session)
        if not mine:
            del self._by_user[session.user.id]
        session.cancel_expiry()
        if stored:
            self._forget(session.digest)
        for socket in list(session.sockets):
            socket.deliver(events.Kicked("logged out"))

    def close(self):
        """The port stops: timers go, the IDs stay in the store for the next start."""
        for session in self._by_digest.values():
            session.cancel_expiry()


def _not_kept(failure, what):
    """A write the store refused (it is closing, say): the session lives on in memory."""
    log.warn("the store did not keep {what}: {why}", what=what, why=failure.getErrorMessage())
