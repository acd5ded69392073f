"""Seed 000, the Skype-style commands, on two framings: lines, and the real C++ client's
10-digit length prefix (where the server greets first with ``200 OK``).

Identity is the connection, never the IP: two users on one host are two sessions. A user
record shows an address only for a user connected on a seed 000 port, the one place that
needs it: other ports' users (IRC masks them) and offline users show an empty one.
"""

from __future__ import annotations

from chatserv import errors, events
from chatserv.bus import Subscription
from chatserv.domain.login import Password, Vouched
from chatserv.protocols.base import ChatConnection, ChatFactory
from chatserv.protocols.framing import LengthPrefixFramer, LineFramer
from chatserv.wire import BadRequest, ErrorTable

OK = b"200 OK"
NOT_OK = b"300 Not OK"
NOT_FOUND = b"301 Not found"
PLEASE_LOGIN = b"202 Please login"
INTERNAL_ERROR = b"500 Internal server error"
INVALID = b"501 Invalid command"
GOODBYE = b"201 Goodbye"
BUSY = b"503 Busy, try again"

ERRORS = ErrorTable({
    BadRequest: INVALID,
    errors.NotLoggedIn: PLEASE_LOGIN,
    errors.NotFound: NOT_FOUND,
    errors.Busy: BUSY,
    errors.ChatError: NOT_OK,
})

BEFORE_LOGIN = frozenset({"CREATE", "LOGIN", "EXIT", "PING"})
PROTOCOL = "skype"  # both framings


def record(service, user) -> str:
    """A user as seed 000 writes one; the password field is always empty."""
    online = "true" if service.is_online(user) else "false"
    address = next((s.address for s in service.sessions_of(user) if s.protocol == PROTOCOL), "")
    return f"id:{user.id},username:{user.username},password:,online:{online},address:{address}"


class SkypeConnection(ChatConnection):
    protocol_name = PROTOCOL
    error_table = ERRORS
    subscribes = Subscription.NONE  # seed 000 has no messages: direct ones wait in the inbox

    def make_framer(self):
        return LineFramer(self.limits.max_line)

    def frame_error(self, error):
        return INVALID

    def internal_error(self):
        return INTERNAL_ERROR

    def render(self, event):
        if isinstance(event, events.ServerShutdown):
            return self.framer.encode(GOODBYE)
        return None

    def handle(self, frame: bytes):
        try:
            text = frame.decode("utf-8")
        except UnicodeDecodeError:
            return INVALID
        command, _, argument = text.partition(" ")
        command = command.upper()
        handler = getattr(self, f"do_{command}", None) if command.isalpha() else None
        if handler is None:
            return INVALID
        if self.session is None and command not in BEFORE_LOGIN:
            return PLEASE_LOGIN
        return handler(argument)

    @staticmethod
    def _name(argument: str) -> str:
        name = argument.strip()
        if not name or " " in name:
            raise BadRequest()
        return name

    @staticmethod
    def _credentials(argument: str) -> tuple[str, str]:
        username, _, password = argument.partition(" ")
        if not username or not password:
            raise BadRequest()
        return username, password

    async def do_CREATE(self, argument):
        username, password = self._credentials(argument)
        await self.log_in(Vouched(await self.service.register(username, password, address=self.peer_host)))
        return OK

    async def do_LOGIN(self, argument):
        username, password = self._credentials(argument)
        try:
            await self.log_in(Password(username, password))
        except (errors.BadCredentials, errors.RateLimited):
            if self.login_failed():
                self.write(NOT_OK)
                self.close()
                return None
            return NOT_OK
        return OK

    def do_SEARCH(self, argument):
        user = self.service.user(self._name(argument))
        return b"201 " + record(self.service, user).encode()

    async def do_ADD(self, argument):
        await self.service.add_contact(self.user, self._name(argument))
        return OK

    async def do_REMOVE(self, argument):
        await self.service.remove_contact(self.user, self._name(argument))
        return OK

    def do_AVAILABLE(self, argument):
        user = self.service.user(self._name(argument))
        if not self.service.is_online(user):
            return NOT_OK
        return b"201 " + record(self.service, user).encode()

    def do_LIST(self, argument):
        contacts = [u for u, status in self.service.contacts(self.user) if status != "blocked"]
        if not contacts:
            return NOT_FOUND
        return b"201 " + " ".join(record(self.service, u) for u in contacts).encode()

    def do_PING(self, argument):
        return OK

    def do_EXIT(self, argument):
        self.logout()
        self.write(GOODBYE)
        self.close()


class FramedSkypeConnection(SkypeConnection):
    """The real client's framing: ``0000000014LOGIN alice pw``, and a greeting first."""

    def make_framer(self):
        return LengthPrefixFramer(self.limits.max_line)

    def greet(self):
        self.write(OK)


class SkypeFactory(ChatFactory):
    protocol = SkypeConnection


class FramedSkypeFactory(ChatFactory):
    protocol = FramedSkypeConnection
