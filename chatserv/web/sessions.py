"""REST session IDs: unguessable tokens that expire unused and die at logout.

A session ID is what ``/login`` hands out and what every later REST call and every
Socket.IO connection names. It proves who the caller is; it does not by itself make the
user online. Seed 004 ties presence to the socket: connect says "online" to the user's
contacts and disconnect says "offline", so each Socket.IO connection is the service session
(one per connection, DESIGN.md). Were the ID a service session too, a user who closed the
page would look online on every port until the ID expired, and no contact would ever hear
the connect or disconnect. An ID expires ``ttl`` seconds after its last use, but never
while a socket opened with it is connected; logging out disconnects those sockets.
"""

from __future__ import annotations

import secrets

from chatserv import errors, events
from chatserv.limits import Limits, TokenBucket
from chatserv.model import User


class InvalidSession(errors.NotLoggedIn):
    """The session ID is missing, forged, expired or logged out."""


class WebSession:
    def __init__(self, sessions: WebSessions, token: str, user: User):
        self.sessions = sessions
        self.token = token
        self.user = user
        self.sockets: set = set()  # Socket.IO connections opened with this session ID
        self.rate = TokenBucket(sessions.clock, sessions.limits.messages_per_second,
                                sessions.limits.message_burst)  # for messages sent over REST
        self._expiry = None

    def touch(self):
        if self._expiry is not None and self._expiry.active():
            self._expiry.reset(self.sessions.ttl)
        else:
            self._expiry = self.sessions.clock.callLater(self.sessions.ttl, self._expired)

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
    """The live session IDs of one web port."""

    def __init__(self, clock, ttl: float, limits: Limits):
        self.clock = clock
        self.ttl = ttl
        self.limits = limits
        self._by_token: dict[str, WebSession] = {}

    def __len__(self):
        return len(self._by_token)

    def start(self, user: User) -> WebSession:
        session = WebSession(self, secrets.token_urlsafe(32), user)
        self._by_token[session.token] = session
        session.touch()
        return session

    def get(self, token) -> WebSession:
        """The live session of that ID (its expiry pushed back), else InvalidSession."""
        session = self._by_token.get(token) if isinstance(token, str) else None
        if session is None:
            raise InvalidSession("Invalid session")
        session.touch()
        return session

    def end(self, session: WebSession):
        """Log the session out: its sockets are disconnected and its ID dies."""
        if self._by_token.get(session.token) is not session:
            return
        del self._by_token[session.token]
        session.cancel_expiry()
        for socket in list(session.sockets):
            socket.deliver(events.Kicked("logged out"))

    def end_all(self):
        for session in list(self._by_token.values()):
            self.end(session)
