"""Stored messages on IRC: replay on JOIN and at login, the inbox at login, and CHATHISTORY.

Clients that negotiated ``server-time`` get each line's time as a tag; the others get it
written in front of the text, so replayed lines never pass for new ones. ``batch`` wraps a
replay when negotiated. Message ids are the ``msgid`` tags and CHATHISTORY's references.

Replay rules: a client that fetches history itself (``draft/chathistory``,
``znc.in/playback``) gets no automatic replay. Otherwise a JOIN replays the newest
``--history`` messages, and for an account only those after the newest one it was shown in
that room (``ChatService.note_seen``, written when its connection ends). A replay is framed
by two NOTICEs naming its period, since many clients (irssi) hide server-time. Live lines
for the room that arrive while a replay is fetched wait for it, and are not replayed twice.
"""

from __future__ import annotations

import datetime
import math
import time

from chatserv import errors
from chatserv.model import HistoryBounds, Message, Room, fold
from chatserv.protocols.irc import numerics as N
from chatserv.protocols.irc.message import (
    MAX_LINE,
    fit,
    is_number,
    mask,
    serialise,
    server_time,
    split_text,
)

HISTORY_SUBCOMMANDS = ("LATEST", "BEFORE", "AFTER", "AROUND", "BETWEEN")
MAX_ID = 2**63  # message ids are SQLite integers


def message_lines(message: Message, target: str, variant: tuple[bool, bool], *, prefix: str = "",
                  batch: str = "", stamped: bool = False, client_tags: dict | None = None) -> bytes:
    """A message as one PRIVMSG (or NOTICE, or CTCP ACTION) line, its text cut to fit 512 bytes.

    A body longer than any IRC line could carry, or with line breaks (it came from another
    port), becomes several lines instead, split at the breaks and between words; the first
    carries the ``msgid``. ``prefix`` defaults to the name the message was sent under.
    """
    command = "NOTICE" if message.kind == "notice" else "PRIVMSG"
    action = message.kind == "action"
    prefix = prefix or mask(message.sender_name)
    body = message.body
    if stamped:
        body = time.strftime("[%Y-%m-%d %H:%M:%S] ", time.gmtime(message.sent_at)) + body
    with_time, with_tags = variant
    overhead = len(f"{command} {target} :".encode())
    budget = MAX_LINE - 2 - len(f":{prefix} ".encode()) - overhead - (9 if action else 0)
    encoded = body.encode("utf-8")
    if "\n" in body or "\r" in body or len(encoded) > MAX_LINE - 2 - overhead:
        chunks = split_text(body, budget)
    else:
        chunks = [fit(encoded, budget).decode("utf-8")]
    lines = []
    for index, chunk in enumerate(chunks):
        tags = {}
        if batch:
            tags["batch"] = batch
        if with_time:
            tags["time"] = server_time(message.sent_at)
        if with_tags and index == 0:
            tags["msgid"] = str(message.id)
            if client_tags:
                tags.update(client_tags)
        text = f"\x01ACTION {chunk}\x01" if action else chunk
        lines.append(serialise(command, target, text, prefix=prefix, tags=tags))
    return b"".join(lines)


class HistoryMixin:
    _last_seen: dict | None = None  # the account's record at login: room id -> message id

    def history_lines(self, messages, target_of, batch_target: str, kind: str = "chathistory") -> bytes:
        """Stored messages for this client, in a batch when it has batches."""
        if not messages:
            return b""
        reference, opening, closing = self.open_batch(kind, batch_target)
        stamped = not self.tag_variant[0]
        body = b"".join(message_lines(m, target_of(m), self.tag_variant, batch=reference, stamped=stamped)
                        for m in messages)
        return opening + body + closing

    def open_batch(self, kind: str, *params: str) -> tuple[str, bytes, bytes]:
        """(reference, opening line, closing line) of a new batch, or empty ones without ``batch``."""
        if "batch" not in self.caps:
            return "", b"", b""
        self._batches += 1
        reference = str(self._batches)
        return (reference, serialise("BATCH", "+" + reference, kind, *params, prefix=self.server),
                serialise("BATCH", "-" + reference, prefix=self.server))

    def fetches_history(self) -> bool:
        return "draft/chathistory" in self.caps or "znc.in/playback" in self.caps

    async def replay(self, room: Room):
        """What this client missed in the room, right after its JOIN (see the module's rules)."""
        if self.fetches_history():
            return
        self.held[room.id] = []
        try:
            if self._last_seen is None:
                self._last_seen = await self.service.last_seen(self.user)
            bounds = HistoryBounds(after_id=self._last_seen.get(room.id))
            messages = await self.service.history_range(self.user, room, bounds, self.limits.history)
        except errors.ChatError:
            messages = []  # left (or was kicked) meanwhile
        finally:
            held = self.held.pop(room.id, [])
        live = {message_id for message_id, _ in held}
        messages = [m for m in messages if m.id not in live]
        if messages:
            self.seen[room.id] = max(self.seen.get(room.id, 0), messages[-1].id)
        self.send(self.replay_lines(room, messages) + b"".join(data for _, data in held))

    def replay_lines(self, room: Room, messages: list) -> bytes:
        if not messages:
            return b""
        channel = "#" + room.name
        first, last = _clock(messages[0].sent_at), _clock(messages[-1].sent_at)
        if first == last:
            period = f"at {first} UTC"
        else:
            period = f"from {first} to {last[11:] if last[:10] == first[:10] else last} UTC"
        count = f"{len(messages)} message" + ("s" if len(messages) > 1 else "")
        return (serialise("NOTICE", channel, f"Replay: {count} sent {period}", prefix=self.server)
                + self.history_lines(messages, lambda m: channel, channel)
                + serialise("NOTICE", channel, "End of replay: live messages follow", prefix=self.server))

    def remember_seen(self):
        """Record, for the account, the newest message of each room this connection was shown:
        what was replayed, and whatever its rooms were handed live since."""
        if self.session is None:
            return
        seen = dict(self.seen)
        for room in self.channels.values():
            newest = self.service.newest_message_id(room)
            if newest is not None and newest > seen.get(room.id, 0):
                seen[room.id] = newest
        if seen:
            self.service.note_seen(self.session.user, seen)

    async def logged_in(self, user, waiting: list[Message]):
        """An account came online here: its rooms are joined and the direct messages that
        waited for it (read as it logged in) delivered."""
        self._last_seen = None
        for room in self.service.rooms_of(user):
            if fold(room.name) not in self.channels:
                self.show_join(room)
                await self.replay(room)
        if self.session is None:
            return  # the client left meanwhile: its messages wait for its next login
        stamped = not self.tag_variant[0]
        self.send(b"".join(message_lines(m, self.nick, self.tag_variant, stamped=stamped) for m in waiting))
        await self.service.mark_delivered(user, waiting)

    # CHATHISTORY (IRCv3 draft/chathistory)

    async def irc_CHATHISTORY(self, line):
        subcommand = line.params[0].upper()
        if subcommand == "TARGETS":
            return await self._history_targets(line)
        if subcommand not in HISTORY_SUBCOMMANDS:
            raise N.Fail("CHATHISTORY", "INVALID_PARAMS", subcommand)
        needed = 5 if subcommand == "BETWEEN" else 4
        if len(line.params) < needed:
            raise N.Fail("CHATHISTORY", "NEED_MORE_PARAMS", subcommand)
        target, *references, count = line.params[1:needed]
        limit = self._history_limit(subcommand, count)
        try:
            source, target_of = self._history_source(target)
        except (errors.ChatError, N.IRCError):
            raise N.Fail("CHATHISTORY", "INVALID_TARGET", subcommand, target) from None
        points = [_reference(subcommand, r) for r in references if not (subcommand == "LATEST" and r == "*")]

        def fetch(bounds):  # one store read, whatever the subcommand
            return self.service.history_range(self.user, source, bounds, limit)

        try:
            messages = await _query(subcommand, points, fetch)
        except errors.ChatError:
            raise N.Fail("CHATHISTORY", "INVALID_TARGET", subcommand, target) from None
        lines = self.history_lines(messages, target_of, target)
        if not lines:
            reference, opening, closing = self.open_batch("chathistory", target)
            lines = opening + closing
        self.send(lines)

    def _history_limit(self, subcommand: str, count: str) -> int:
        if not is_number(count) or not 0 < int(count) <= self.limits.history:
            raise N.Fail("CHATHISTORY", "INVALID_PARAMS", subcommand)
        return int(count)

    def _history_source(self, target: str):
        """The room or user whose history a target names, and the target each line names."""
        me = self.user
        if target.startswith("#"):
            room = self.service_room(target)
            if not self.service.is_member(me, room):
                raise errors.NotMember()
            channel = "#" + room.name
            return room, lambda m: channel
        other = self.online_or_registered(target)
        return other, lambda m: self.nick_of(other) if m.recipient_id == other.id else self.nick

    async def active_conversations(self, since: float, until: float) -> list:
        """(room or user, time of its newest message in [since, until)) for this user's rooms
        and direct conversations with messages then, the least recently active first."""
        found = []
        window = HistoryBounds(since=since if math.isfinite(since) else None,
                               until=until if math.isfinite(until) else None)
        for conversation in await self.service.conversations(self.user):
            if conversation.last is None or conversation.last.sent_at < since:
                continue
            target = conversation.room or conversation.peer
            newest = await self.service.history_range(self.user, target, window, 1)
            if newest:
                found.append((target, newest[-1].sent_at))
        return sorted(found, key=lambda pair: pair[1])

    async def _history_targets(self, line):
        """``CHATHISTORY TARGETS <timestamp> <timestamp> <limit>``: conversations active between."""
        if len(line.params) < 4:
            raise N.Fail("CHATHISTORY", "NEED_MORE_PARAMS", "TARGETS")
        limit = self._history_limit("TARGETS", line.params[3])
        moments = []
        for reference in line.params[1:3]:
            if not reference.startswith("timestamp="):
                raise N.Fail("CHATHISTORY", "INVALID_PARAMS", "TARGETS")
            moments.append(_reference("TARGETS", reference)[1])
        earliest, latest = sorted(moments)
        found = (await self.active_conversations(earliest / 1000, latest / 1000))[:limit]
        reference, opening, closing = self.open_batch("draft/chathistory-targets")
        tags = {"batch": reference} if reference else None
        body = b"".join(serialise("CHATHISTORY", "TARGETS",
                                  "#" + target.name if isinstance(target, Room) else self.nick_of(target),
                                  server_time(when), prefix=self.server, tags=tags)
                        for target, when in found)
        self.send(opening + body + closing)


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def _reference(subcommand: str, reference: str) -> tuple[str, int]:
    """A ``msgid=<id>`` or ``timestamp=<ISO 8601>`` reference: its kind and value (an id, or a
    time in whole milliseconds, the precision of the ``time`` tag)."""
    kind, _, value = reference.partition("=")
    if kind == "msgid" and is_number(value) and int(value) < MAX_ID:
        return kind, int(value)
    if kind == "timestamp":
        try:
            moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:  # a time with no zone is UTC, as every time on IRC is (never the server's local time)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=datetime.UTC)
            # Whole milliseconds by exact timedelta arithmetic: no overflow at year 1 or 9999.
            return kind, (moment - _EPOCH) // datetime.timedelta(milliseconds=1)
    raise N.Fail("CHATHISTORY", "INVALID_MSGREFTYPE", subcommand, reference)


def _after(point) -> dict:
    kind, value = point
    return {"after_id": value} if kind == "msgid" else {"since": (value + 1) / 1000}


def _before(point) -> dict:
    kind, value = point
    return {"before_id": value} if kind == "msgid" else {"until": value / 1000}


async def _query(subcommand: str, points: list, fetch) -> list:
    """The messages a CHATHISTORY subcommand asks for, oldest first (references exclusive,
    but AROUND's, which is the middle of its answer)."""
    if subcommand == "LATEST":
        return await fetch(HistoryBounds(**_after(points[0])) if points else HistoryBounds())
    if subcommand == "BEFORE":
        return await fetch(HistoryBounds(**_before(points[0])))
    if subcommand == "AFTER":
        return await fetch(HistoryBounds(**_after(points[0]), oldest=True))
    if subcommand == "AROUND":
        kind, value = points[0]
        around = {"around_id": value} if kind == "msgid" else {"around": value / 1000}
        return await fetch(HistoryBounds(**around))
    start, end = points  # BETWEEN, either way round
    if start[0] != end[0]:
        raise N.Fail("CHATHISTORY", "INVALID_PARAMS", subcommand)
    if start[1] <= end[1]:
        return await fetch(HistoryBounds(**_after(start), **_before(end), oldest=True))
    return await fetch(HistoryBounds(**_after(end), **_before(start)))


def _clock(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))
