"""Seed 002, the salted JSON chat: one JSON object per line, everyone talks in ``lobby``.

The login ``password`` is ``sha256_hex(salt + password)`` with the salt the server sent
(WIRE.md), so accounts made here work on every port and the reverse. A request's ``user``
must be this connection's user: naming a user logged in here from another address is
refused with ``wrong_ip`` and a close, naming anyone else is an error and never acts as them.
Errors of our own making (the seed defines none) are ``{"type":"error","message":"..."}``.
"""

from __future__ import annotations

import json
import re
from typing import ClassVar

import attrs

from chatserv import errors, events
from chatserv.bans import ban_key
from chatserv.bus import Subscription
from chatserv.credentials import new_salt
from chatserv.domain.login import Digest, GuestName, Vouched
from chatserv.model import LOBBY, fold
from chatserv.options import option
from chatserv.protocols.base import ChatConnection, ChatFactory
from chatserv.protocols.framing import LineFramer
from chatserv.text import UnencodableText
from chatserv.wire import BadRequest, ErrorTable, json_object

PROTOCOL = "salted"
BEFORE_LOGIN = frozenset({"login", "register", "salt", "guest", "disconnect"})
LOGIN_KINDS = frozenset({"login", "register", "guest"})
NOT_BAN_CHECKED = frozenset({"login", "register"})  # the seed checks bans before all else
_VERSION = re.compile(r"v?(\d{1,9}(?:\.\d{1,9}){0,9})\Z")
_DIGEST = re.compile(r"[0-9a-fA-F]{64}\Z")


def encode(payload: dict) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def flag(value: bool) -> str:
    """The seed writes its booleans as the strings ``"true"`` and ``"false"``."""
    return "true" if value else "false"


def error(message: str) -> bytes:
    return encode({"type": "error", "message": message})


def login_status(success: bool) -> bytes:
    return encode({"type": "login", "success": flag(success)})


BANNED = encode({"type": "banned"})
WRONG_IP = encode({"type": "wrong_ip"})
USERNAME_TAKEN = encode({"type": "username_taken"})

ERRORS = ErrorTable({
    BadRequest: lambda exc: error(exc.message),
    errors.NotLoggedIn: error("please log in first"),
    errors.RateLimited: error("slow down"),
    errors.Busy: error("server busy, try again"),
    errors.ChatError: lambda exc: error(exc.message),
})


def parse_version(text) -> tuple[int, ...] | None:
    """``"1.2.0"`` or ``"v1.2"`` as a comparable tuple; None when it is no such version."""
    match = _VERSION.match(text) if isinstance(text, str) else None
    return tuple(int(part) for part in match.group(1).split(".")) if match else None


def check_version(text: str) -> str:
    """Option coercion for ``--salted-min-version`` (empty: no minimum)."""
    if text and parse_version(text) is None:
        raise ValueError(f"not a version like 1.2.0: {text!r}")
    return text


def truth(request: dict, field: str, default: bool | None = None) -> bool:
    """A seed boolean: ``true``/``"true"`` and ``false``/``"false"`` (any case) alike."""
    value = request.get(field, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise BadRequest(f"'{field}' must be true or false")


def text(request: dict, field: str) -> str:
    value = request.get(field)
    if not isinstance(value, str):
        raise BadRequest(f"'{field}' must be a string")
    return value


def parse(frame: bytes) -> dict:
    """One request object with a string ``type``; anything else is a BadRequest."""
    try:
        request = json_object(frame.decode("utf-8"))
    except UnencodableText as exc:
        raise BadRequest(str(exc)) from None
    except ValueError:  # bad UTF-8, not JSON, or not an object
        raise BadRequest("not a JSON object") from None
    if not isinstance(request.get("type"), str):
        raise BadRequest("'type' must be a string")
    if "user" in request and not isinstance(request["user"], str):
        raise BadRequest("'user' must be a string")
    return request


@attrs.frozen
class PendingRegistration:
    """A name and fresh salt between ``register`` and the ``login`` that creates the account."""

    username: str
    salt: str


class SaltedConnection(ChatConnection):
    protocol_name = PROTOCOL
    error_table = ERRORS
    # No direct messages (they wait in the inbox); every join and leave is a user_notification.
    subscribes = Subscription.PRESENCE

    def __init__(self):
        super().__init__()
        self.pending: PendingRegistration | None = None

    def connectionMade(self):
        self.ban_key = ban_key(getattr(self.transport.getPeer(), "host", ""))
        super().connectionMade()

    def make_framer(self):
        return LineFramer(self.limits.max_line)

    def frame_error(self, failure):
        return error(failure.reason)

    def internal_error(self):
        return error("internal server error")

    def timed_out(self):
        self.write(error("timed out"))
        self.close()

    def goodbye(self, payload: bytes) -> None:
        """Send a last message (banned, wrong_ip, outdated_client), then end the connection."""
        self.write(payload)
        self.logout()
        self.close()

    # requests

    def handle(self, frame: bytes):
        if not frame.strip():
            return None
        request = parse(frame)
        kind = request["type"]
        refusal = self._refusal(request, kind)
        if refusal is not None:
            return self.goodbye(refusal)
        handler = getattr(self, f"do_{kind}", None) if kind.isidentifier() else None
        if handler is None:
            raise BadRequest(f"unknown type {kind!r}")
        if self.session is None and kind not in BEFORE_LOGIN:
            raise errors.NotLoggedIn()
        if self.session is not None and kind in LOGIN_KINDS:
            raise errors.Denied("already logged in")
        if self.session is not None and fold(request.get("user", self.user.username)) != fold(
                self.user.username):
            raise errors.Denied("'user' is not the user logged in on this connection")
        return handler(request)

    def _refusal(self, request: dict, kind: str) -> bytes | None:
        """The seed's checks before a request is handled: version, IP ban, IP of the user."""
        minimum = self.factory.min_version
        if "version" in request and minimum:
            stated = parse_version(request["version"])
            if stated is None or stated < parse_version(minimum):
                return encode({"type": "outdated_client", "version": minimum})
        if kind not in NOT_BAN_CHECKED and self.banned():
            return BANNED
        if kind != "register" and "user" in request and self.held_elsewhere(request["user"]):
            return WRONG_IP
        return None

    def banned(self) -> bool:
        return self.service.is_banned(self.ban_key)

    def held_elsewhere(self, name: str) -> bool:
        """Is ``name`` logged in on this port from another address (the seed's association)?"""
        try:
            owner = self.service.user_or_guest(name)
        except errors.UserNotFound:
            return False
        return any(s.protocol == PROTOCOL and s.address != self.peer_host
                   for s in self.service.sessions_of(owner))

    def do_salt(self, request):
        pending = self.pending
        name = request.get("user", pending.username if pending else None)
        if name is None:
            raise BadRequest("'user' must be a string")
        if pending is not None and fold(name) == fold(pending.username):
            return encode({"type": "salt", "salt": pending.salt})
        return encode({"type": "salt", "salt": self.service.salt_for(name)})

    def do_register(self, request):
        name = text(request, "user")
        self.pending = None
        try:
            self.service.validate_username(name)
        except errors.InvalidUsername as exc:
            return register_status(False, exc.message)
        try:
            self.service.user_or_guest(name)
        except errors.UserNotFound:
            self.pending = PendingRegistration(name, new_salt())
            return encode({"type": "username_register_status", "taken": "false"})
        return encode({"type": "username_register_status", "taken": "true"})

    async def do_login(self, request):
        name, digest = text(request, "user"), text(request, "password")
        pending, self.pending = self.pending, None
        if pending is not None and fold(name) == fold(pending.username):
            return await self._register(pending, digest)
        try:
            entered = await self._enter(Digest(name, digest.lower()))
        except errors.BadCredentials:
            if self.login_failed():
                self.goodbye(login_status(False))
                return None
            return login_status(False)
        return login_status(True) if entered else None

    async def _register(self, pending: PendingRegistration, digest: str):
        if not _DIGEST.match(digest):
            return register_status(False, "password must be sha256(salt + password) in hex")
        try:
            user = await self.service.register_digest(pending.username, pending.salt, digest.lower(),
                                                      address=self.peer_host)
        except errors.UsernameTaken:
            return register_status(False, "username taken")
        if not await self._enter(Vouched(user)):
            return None
        self.write(register_status(True))
        return login_status(True)

    async def do_guest(self, request):
        try:
            entered = await self._enter(GuestName(text(request, "user")))
        except errors.UsernameTaken:
            self.write(login_status(False))
            return USERNAME_TAKEN
        except errors.InvalidUsername as exc:
            self.write(login_status(False))
            return error(exc.message)
        return login_status(True) if entered else None

    async def _enter(self, credentials) -> bool:
        """Log in and attach a session in the lobby, unless ``admit`` refused it."""
        result = await self.log_in(credentials)
        if result.session is None:
            return False
        await self.service.join_room(result.user, LOBBY, origin=result.session)
        return True

    def admit(self, user) -> bool:
        """Checked once the credentials passed, because hashing took time: a ban or a login
        from elsewhere may have come meanwhile (the client is told, and the connection ends)."""
        if self._closing:
            return False
        if self.banned():
            self.goodbye(BANNED)
            return False
        if self.held_elsewhere(user.username):
            self.goodbye(WRONG_IP)
            return False
        return super().admit(user)

    def do_userlist(self, request):
        online = truth(request, "onlinetype", True)
        if online:
            users = self.service.online_users()
        else:
            users = [u for u in self.service.users() if not self.service.is_online(u)]
        return encode({"type": "userlist", "users": [u.username for u in users], "onlinetype": flag(online)})

    async def do_message(self, request):
        body = text(request, "message")
        self.check_rate()
        await self.service.send_room(self.user, LOBBY, body, origin=self.session)
        return encode({"type": "message", "from": self.user.username, "message": body})

    def do_typing(self, request):
        active = truth(request, "status")
        self.check_rate()
        self.service.typing(self.user, active, room=LOBBY, origin=self.session)

    def do_disconnect(self, request):
        self.logout()
        self.close()

    # events

    def deliver(self, event):
        if self.session is not None and self.banned():
            self.goodbye(BANNED)  # banned while connected: told at the next event
            return
        super().deliver(event)

    def render(self, event):
        payload = event_payload(event)
        if payload is None:
            return None
        return event.render_once(PROTOCOL, lambda: self.framer.encode(encode(payload)))


def register_status(success: bool, info: str = "") -> bytes:
    return encode({"type": "register_status", "status": flag(success), "additional_info": info})


def event_payload(event) -> dict | None:
    """What a live event looks like on this wire; the seed shows only lobby traffic."""
    if isinstance(event, events.RoomMessage) and fold(event.room.name) == LOBBY:
        return {"type": "message", "from": event.sender.username, "message": event.message.body}
    if isinstance(event, events.Typing) and event.room is not None and fold(event.room.name) == LOBBY:
        return {"type": "typing", "user": event.user.username, "status": flag(event.active)}
    if isinstance(event, events.PresenceChanged):
        return {"type": "user_notification", "user": event.user.username, "status": flag(event.online)}
    if isinstance(event, events.ServerShutdown):
        return {"type": "shutdown"}
    if isinstance(event, events.Kicked):
        return {"type": "error", "message": event.reason}
    return None


@attrs.frozen
class SaltedConfig:
    """Seed 002's options (``--salted-*``): see ``chatserv.options``."""

    option_prefix: ClassVar[str] = "salted-"

    min_version: str = option("", "seed 002: lowest client version served (empty: any)", coerce=check_version)
    login_attempts: int = option(3, "seed 002: failed logins before close")


class SaltedFactory(ChatFactory):
    protocol = SaltedConnection
    config_class = SaltedConfig

    def __init__(self, service, tracker, limits, clock, options=None):
        super().__init__(service, tracker, limits, clock, options)
        self.limits = attrs.evolve(limits, login_attempts=self.config.login_attempts)
        self.min_version = check_version(self.config.min_version)
