"""Seed 003, rooms and a personal inbox, as the real CS494 Python client (gmillia/IRC) speaks it.

The server greets first with ``Welcome to the Server.\\n``. A request is the Python literal of
``[code, body]`` with no delimiter; the code is a number (1-15) or the function's name, and
``[666, None]`` asks whether the server is alive. A reply is one Python literal, which the
client evaluates after ONE ``recv(2048)``: so no reply is longer than 2048 bytes, and nothing
is ever pushed between replies (that would be read as the answer to the next request).

Requests are never evaluated: ``LiteralFramer`` finds where each literal ends and
``ast.literal_eval`` reads it. The user named in a request must be the session's own.
"""

from __future__ import annotations

import ast
import datetime

from chatserv import errors
from chatserv.bus import Subscription
from chatserv.domain.login import Password, Vouched
from chatserv.model import fold
from chatserv.protocols.base import ChatConnection, ChatFactory
from chatserv.protocols.framing import LiteralFramer
from chatserv.text import UnencodableText, check_decoded
from chatserv.wire import BadRequest, ErrorTable

GREETING = b"Welcome to the Server.\n"
REPLY_LIMIT = 2048  # the client reads each reply with one recv(2048)
LIVENESS_PROBE = 666
NOTE_SENDER = "server"  # a reserved name, so a note in a message list is never a user's message
NOTE_ROOM = 160  # bytes kept free in a trimmed list for the note saying what was left out (< 130 bytes)
SHOWN_BODY = 1024  # bytes of one message body's literal shown; longer bodies are clipped
CLIPPED = " [...]"

# Every request, by name, with its body's fields in order; the numeric code is its place here.
# "user" must be the session's user; "rooms" is a list of room names; "current_room" may be None.
REQUESTS = {
    "create_new_user": ("username", "password"),
    "login": ("username", "password"),
    "create_new_room": ("room", "user"),
    "list_all_rooms": ("user", "current_room"),
    "join_new_room": ("room", "user"),
    "leave_room": ("room", "user"),
    "switch_room": ("user", "room"),
    "send_room_message": ("user", "room", "message"),
    "view_room_messages": ("user", "room"),
    "view_room_members": ("user", "room"),
    "send_personal_message": ("user", "recipient", "message"),
    "view_personal_inbox": ("user",),
    "send_all_room_message": ("user", "message"),
    "send_message_to_selected_rooms": ("user", "rooms", "message"),
    "join_selected_rooms": ("user", "rooms"),
}
CODES = {number: name for number, name in enumerate(REQUESTS, start=1)}


def literal(value) -> bytes:
    """A reply as the client evaluates it (it has ``datetime`` imported)."""
    return repr(value).encode()


def error_reply(text: str) -> bytes:
    """The error shape every function of the client prints: ``[{'description': 'ERROR: ...'}]``."""
    return literal([{"description": f"ERROR: {text}"}])


def sentence(text: str) -> str:
    return f"{text[:1].upper()}{text[1:]}."


OK = literal(["OK"])
ERRORS = ErrorTable({
    errors.NotLoggedIn: error_reply("please create account or login."),
    errors.BadCredentials: error_reply("Invalid username or password."),
    errors.Busy: error_reply("Server busy, try again."),
    errors.ChatError: lambda exc: error_reply(sentence(exc.message)),
})


def size(value) -> int:
    return len(literal(value))


def leading_that_fit(items: list, budget: int) -> int:
    """How many leading items fit, as a list literal, in ``budget`` bytes."""
    used = 2
    for count, item in enumerate(items):
        used += size(item) + 2
        if used > budget:
            return count
    return len(items)


def names_that_fit(names: list[str], budget: int, noun: str) -> list[str]:
    """The names, or the first that fit in ``budget`` bytes and a last entry saying how many more."""
    if size(names) <= budget:
        return names
    kept = leading_that_fit(names, budget - NOTE_ROOM)
    return names[:kept] + [f"({len(names) - kept} more {noun} not shown)"]


def clip(text: str, limit: int = SHOWN_BODY) -> str:
    """``text``, or its longest start whose literal fits in ``limit`` bytes, marked as clipped."""
    if size(text) <= limit:
        return text
    low, high = 0, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        if size(text[:middle]) <= limit - len(CLIPPED):
            low = middle
        else:
            high = middle - 1
    return text[:low] + CLIPPED


def timestamp(seconds: float) -> datetime.datetime:
    """A message's time as the client prints it: naive, whole seconds, UTC."""
    return datetime.datetime.fromtimestamp(int(seconds), datetime.UTC).replace(tzinfo=None)


def entry(message) -> dict:
    return {"At": timestamp(message.sent_at), "From": message.sender_name, "Message": clip(message.body)}


def newest_that_fit(messages: list, limit: int) -> tuple[list[dict], list]:
    """Entries for the newest of ``messages`` (up to ``limit``) whose reply fits, oldest first,
    and the messages they show.

    ``messages`` is one more than ``limit`` when older ones exist. When some are left out, a
    first entry from ``server``, dated like the newest one left out, says how many ("at least",
    when older ones were not even fetched): the client prints it like any message.
    """
    candidates = messages[-limit:]
    entries = [entry(m) for m in candidates]
    if len(messages) <= limit and size(entries) <= REPLY_LIMIT:
        return entries, candidates
    kept = leading_that_fit(entries[::-1], REPLY_LIMIT - NOTE_ROOM)
    left_out = len(messages) - kept
    count = f"at least {left_out}" if len(messages) > limit else str(left_out)
    note = {"At": timestamp(messages[left_out - 1].sent_at), "From": NOTE_SENDER,
            "Message": f"({count} older messages not shown)"}
    first = len(candidates) - kept
    return [note, *entries[first:]], candidates[first:]


def parse_request(frame: bytes) -> tuple[str | int, object]:
    """``(name or LIVENESS_PROBE, body)`` from one literal; BadRequest for anything else."""
    try:
        request = check_decoded(ast.literal_eval(frame.decode("utf-8")))
    except UnencodableText as exc:
        raise BadRequest(f"invalid request: {exc}") from None
    except (UnicodeDecodeError, ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise BadRequest("invalid request: not a Python literal") from None
    if type(request) is not list or len(request) != 2:
        raise BadRequest("invalid request: not a [code, body] list")
    code, body = request
    if code == LIVENESS_PROBE and type(code) is int:
        return LIVENESS_PROBE, body
    name = CODES.get(code) if type(code) is int else code if type(code) is str else None
    if name not in REQUESTS:
        raise BadRequest("unknown request code")
    return name, body


def arguments(name: str, body) -> dict:
    """The body's fields by name, each of the type it must have; BadRequest otherwise."""
    fields = REQUESTS[name]
    if type(body) is not list or len(body) != len(fields):
        raise BadRequest(f"{name} takes [{', '.join(fields)}]")
    for field, value in zip(fields, body, strict=True):
        if field == "rooms":
            valid = type(value) is list and all(type(room) is str for room in value)
        else:
            valid = type(value) is str or (field == "current_room" and value is None)
        if not valid:
            raise BadRequest(f"{name} takes [{', '.join(fields)}]")
    return dict(zip(fields, body, strict=True))


class RoomsConnection(ChatConnection):
    protocol_name = "rooms"
    error_table = ERRORS
    # Nothing is pushed on this wire: a direct message stays undelivered until the inbox shows it.
    subscribes = Subscription.NONE  # direct messages wait in the inbox

    def make_framer(self):
        return LiteralFramer(self.limits.max_line)

    def greet(self):
        self.write_raw(GREETING)

    def frame_error(self, error):
        return error_reply(sentence(f"invalid request: {error.reason}"))

    def internal_error(self):
        return error_reply("internal server error.")

    def handle(self, frame: bytes):
        name, body = parse_request(frame)
        if name == LIVENESS_PROBE:
            return OK
        fields = arguments(name, body)
        if "user" in fields:
            self._check_user(fields.pop("user"))
        return getattr(self, f"do_{name}")(**fields)

    def _check_user(self, name: str):
        """The client names its user in each request: it must be this session's."""
        if fold(self.user.username) != fold(name):
            raise errors.Denied(f"you are logged in as {self.user.username}")

    # the current room: the client's "last room", kept per user while the daemon runs

    @property
    def current_room(self) -> str | None:
        """The user's current room, while it exists and they are still in it."""
        name = self.factory.current_rooms.get(self.user.id)
        try:
            room = self.service.room(name)
        except errors.RoomNotFound:
            return None
        return room.name if self.service.is_member(self.user, room) else None

    def _make_current(self, room):
        self.factory.current_rooms[self.user.id] = room.name

    def _member_room(self, name: str):
        room = self.service.room(name)
        if not self.service.is_member(self.user, room):
            raise errors.NotMember()
        return room

    # requests (the client sends its own user first where a body has one; checked above)

    async def do_create_new_user(self, username, password):
        await self.log_in(Vouched(await self.service.register(username, password, address=self.peer_host)))
        return OK

    async def do_login(self, username, password):
        try:
            await self.log_in(Password(username, password))
        except (errors.BadCredentials, errors.RateLimited) as exc:
            if self.login_failed():
                self.write(ERRORS.reply(exc))
                self.close()
                return None
            raise
        return literal([self.current_room])

    async def do_create_new_room(self, room):
        self._make_current(await self.service.create_room(self.user, room, address=self.peer_host))
        return OK

    def do_list_all_rooms(self, current_room):
        if self.current_room is None and current_room is not None:
            try:
                self._make_current(self._member_room(current_room))
            except errors.ChatError:
                pass  # the client's idea of its room is stale: it adopts ours
        current = self.current_room
        names = [room.name for room in self.service.listed_rooms(self.user)]
        return literal([current, names_that_fit(names, REPLY_LIMIT - size([current, []]), "rooms")])

    async def do_join_new_room(self, room):
        if self.service.is_member(self.user, self.service.room(room)):
            raise errors.AlreadyExists(f"you are in {room} already")
        self._make_current(await self.service.join_room(self.user, room, origin=self.session))
        return OK

    async def do_leave_room(self, room):
        current = self.current_room
        left = await self.service.leave_room(self.user, room, origin=self.session)
        if current == left.name:
            self.factory.current_rooms.pop(self.user.id, None)
        return OK

    def do_switch_room(self, room):
        self._make_current(self._member_room(room))
        return OK

    async def do_send_room_message(self, room, message):
        self.check_rate()
        room = self._member_room(room)
        await self.service.send_room(self.user, room, message, origin=self.session)
        self._make_current(room)
        return OK

    async def do_view_room_messages(self, room):
        limit = self.limits.history
        history = await self.service.room_history(self.user, room, limit + 1)
        return literal(newest_that_fit(history, limit)[0])

    def do_view_room_members(self, room):
        names = [user.username for user in self.service.members(self._member_room(room))]
        return literal(names_that_fit(names, REPLY_LIMIT, "members"))

    async def do_send_personal_message(self, recipient, message):
        self.check_rate()
        await self.service.send_direct(self.user, recipient, message, origin=self.session)
        return OK

    async def do_view_personal_inbox(self):
        limit = self.limits.history
        inbox = await self.service.inbox(self.user, limit + 1)
        entries, shown = newest_that_fit(inbox, limit)
        await self.service.mark_delivered(self.user, shown)
        return literal(entries)

    async def do_send_all_room_message(self, message):
        self.check_rate()
        sent, _ = await self._each_room([room.name for room in self.service.rooms_of(self.user)],
                                        lambda name: self._send_to_room(name, message))
        return literal(names_that_fit(sent, REPLY_LIMIT, "rooms"))

    async def do_send_message_to_selected_rooms(self, rooms, message):
        # The client reads [sent, failed] without looking for an error: a refusal fails every room.
        if not self.rate.allow():
            return self._done_and_failed([], rooms)
        sent, failed = await self._each_room(rooms, lambda name: self._send_to_room(name, message))
        return self._done_and_failed(sent, failed)

    async def do_join_selected_rooms(self, rooms):
        return self._done_and_failed(*await self._each_room(rooms, self.do_join_new_room))

    def _send_to_room(self, name: str, message: str):
        return self.service.send_room(self.user, name, message, origin=self.session)

    @staticmethod
    async def _each_room(rooms: list[str], action) -> tuple[list[str], list[str]]:
        """Run ``action`` for each room name, in order: the names it did, and those it failed for."""
        done, failed = [], []
        for name in rooms:
            try:
                await action(name)
            except errors.ChatError:
                failed.append(name)
            else:
                done.append(name)
        return done, failed

    @staticmethod
    def _done_and_failed(done: list[str], failed: list[str]) -> bytes:
        half = (REPLY_LIMIT - size([[], []])) // 2
        return literal([names_that_fit(done, half, "rooms"), names_that_fit(failed, half, "rooms")])


class RoomsFactory(ChatFactory):
    protocol = RoomsConnection

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.current_rooms: dict[int, str] = {}  # user id -> the room login reports
