"""REST session IDs: unguessable tokens, each one a service session, that expire and die at logout.

A session ID is what ``/login`` hands out and what every later REST call and every
Socket.IO connection names. It is a service session in its own right (``accepts_direct``
off: direct messages reach the user's sockets, or wait in the inbox for them), so the user
is online while they hold one. It expires ``ttl`` seconds after its last use, but never
while a socket opened with it is still connected.
"""

from __future__ import annotations

import secrets

from zope.interface import implementer

from chatserv import errors, events
from chatserv.service import ChatService, ISink, Session

PROTOCOL = "web"


class InvalidSession(errors.NotLoggedIn):
    """The session ID is missing, forged, expired or logged out."""


@implementer(ISink)
class WebSession:
    def __init__(self, sessions: WebSessions, token: str, user):
        self.sessions = sessions
        self.token = token
        self.user = user
        self.sockets: set = set()  # Socket.IO connections opened with this session ID
        self.service_session: Session | None = None
        self._expiry = None

    def deliver(self, event):
        """ISink: a REST session has no live wire; only being kicked matters to it."""
        if isinstance(event, events.Kicked):
            self.sessions.end(self)

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

    def __init__(self, service: ChatService, clock, ttl: float):
        self.service = service
        self.clock = clock
        self.ttl = ttl
        self._by_token: dict[str, WebSession] = {}

    def __len__(self):
        return len(self._by_token)

    def start(self, user, address: str) -> WebSession:
        session = WebSession(self, secrets.token_urlsafe(32), user)
        session.service_session = self.service.attach(user, session, PROTOCOL, address, accepts_direct=False)
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
        self.service.detach(session.service_session)

    def end_all(self):
        for session in list(self._by_token.values()):
            self.end(session)
