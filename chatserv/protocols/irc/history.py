"""Stored messages on IRC: replay on JOIN, the inbox at login, and CHATHISTORY.

Clients that negotiated ``server-time`` get each line's time as a tag; the others get it
written in front of the text, so replayed lines never pass for new ones. ``batch`` wraps a
replay when negotiated. Message ids are the ``msgid`` tags and CHATHISTORY's references.
"""

from __future__ import annotations

import datetime
import time

from chatserv import errors
from chatserv.model import Message
from chatserv.protocols.irc import numerics as N
from chatserv.protocols.irc.message import MAX_LINE, SERVER, mask, serialise, server_time, split_text

AFTER_PAGES = 10  # pages walked back from the newest message to resolve a reference


def message_lines(message: Message, target: str, variant: tuple[bool, bool], *, batch: str = "",
                  stamped: bool = False) -> bytes:
    """A message as PRIVMSG (or NOTICE, or CTCP ACTION) lines, split to fit 512 bytes and at line breaks."""
    command = "NOTICE" if message.kind == "notice" else "PRIVMSG"
    action = message.kind == "action"
    prefix = mask(message.sender_name)
    body = message.body
    if stamped:
        body = time.strftime("[%Y-%m-%d %H:%M:%S] ", time.gmtime(message.sent_at)) + body
    with_time, with_msgid = variant
    budget = MAX_LINE - 2 - len(f":{prefix} {command} {target} :".encode()) - (9 if action else 0)
    lines = []
    for index, chunk in enumerate(split_text(body, budget)):
        tags = {}
        if batch:
            tags["batch"] = batch
        if with_time:
            tags["time"] = server_time(message.sent_at)
        if with_msgid and index == 0:
            tags["msgid"] = str(message.id)
        text = f"\x01ACTION {chunk}\x01" if action else chunk
        lines.append(serialise(command, target, text, prefix=prefix, tags=tags))
    return b"".join(lines)


class HistoryMixin:
    def history_lines(self, messages, target_of, batch_target: str) -> bytes:
        """Stored messages for this client, in a ``chathistory`` batch when it has batches."""
        if not messages:
            return b""
        reference = ""
        opening = closing = b""
        if "batch" in self.caps:
            self._batches += 1
            reference = str(self._batches)
            opening = serialise("BATCH", "+" + reference, "chathistory", batch_target, prefix=SERVER)
            closing = serialise("BATCH", "-" + reference, prefix=SERVER)
        stamped = not self.tag_variant[0]
        body = b"".join(message_lines(m, target_of(m), self.tag_variant, batch=reference, stamped=stamped)
                        for m in messages)
        return opening + body + closing

    async def replay(self, room):
        """The room's recent history, right after this client's JOIN."""
        channel = "#" + room.name
        messages = await self.service.room_history(self.user, room.name)
        self.send(self.history_lines(messages, lambda m: channel, channel))

    async def logged_in(self, user):
        """An account came online here: its rooms are joined and its waiting messages delivered."""
        for room in self.service.rooms_of(user):
            if room.name.casefold() not in self.channels:
                self.show_join(room)
                await self.replay(room)
        waiting = await self.service.take_undelivered(user)
        stamped = not self.tag_variant[0]
        self.send(b"".join(message_lines(m, user.username, self.tag_variant, stamped=stamped)
                           for m in waiting))

    async def irc_CHATHISTORY(self, line):
        subcommand = line.params[0].upper()
        if subcommand not in ("LATEST", "BEFORE", "AFTER"):
            raise N.Fail("CHATHISTORY", "INVALID_PARAMS", subcommand)
        if len(line.params) < 4:
            raise N.Fail("CHATHISTORY", "NEED_MORE_PARAMS", subcommand)
        target, reference, count = line.params[1:4]
        if not count.isdigit() or not 0 < int(count) <= self.limits.history:
            raise N.Fail("CHATHISTORY", "INVALID_PARAMS", subcommand)
        limit = int(count)
        position = None if reference == "*" and subcommand == "LATEST" else _position(subcommand, reference)
        if position is not None:
            key, value = position
        try:
            fetch, target_of = self._history_source(target)
            if position is None:
                messages = await fetch(limit, None)
            elif subcommand == "BEFORE" and reference.startswith("msgid="):
                messages = await fetch(limit, value)
            elif subcommand == "BEFORE":
                messages = await _walk_back(fetch, lambda m: key(m) < value, limit, stop_when_full=True)
            else:
                found = await _walk_back(fetch, lambda m: key(m) > value, limit)
                messages = found[-limit:] if subcommand == "LATEST" else found[:limit]
        except (errors.ChatError, N.IRCError):
            raise N.Fail("CHATHISTORY", "INVALID_TARGET", subcommand, target) from None
        batch_target = target if target.startswith("#") else target_of(None)
        if "batch" in self.caps or messages:
            lines = self.history_lines(messages, target_of, batch_target)
            self.send(lines or self._empty_batch(batch_target))

    def _empty_batch(self, target: str) -> bytes:
        self._batches += 1
        reference = str(self._batches)
        return (serialise("BATCH", "+" + reference, "chathistory", target, prefix=SERVER)
                + serialise("BATCH", "-" + reference, prefix=SERVER))

    def _history_source(self, target: str):
        """How to fetch a target's history, and the target each line names."""
        me = self.user
        if target.startswith("#"):
            room = self.service_room(target)
            channel = "#" + room.name
            return (lambda limit, before: self.service.room_history(me, room.name, limit, before),
                    lambda m: channel)
        other = self.online_or_registered(target)
        return (lambda limit, before: self.service.direct_history(me, other, limit, before),
                lambda m: other.username if m is None or m.recipient_id == other.id else me.username)


def _position(subcommand: str, reference: str):
    """A ``msgid=`` or ``timestamp=`` reference: how to read it off a message, and its value."""
    kind, _, value = reference.partition("=")
    if kind == "msgid" and value.isdigit():
        return (lambda m: m.id), int(value)
    if kind == "timestamp":
        try:
            moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:  # a time with no zone is UTC, as every time on IRC is (never the server's local time)
            moment = moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)
            return (lambda m: m.sent_at), moment.timestamp()
    raise N.Fail("CHATHISTORY", "INVALID_MSGREFTYPE", subcommand, reference)


async def _walk_back(fetch, wanted, limit: int, stop_when_full: bool = False) -> list:
    """The ``wanted`` messages, walking back from the newest a page at a time (AFTER_PAGES at most).

    Wanted messages after a reference end at the first unwanted one; those before it are
    enough once ``limit`` are found (``stop_when_full``), newest ``limit`` kept.
    """
    page = max(limit, 100)
    found: list = []
    before = None
    for _ in range(AFTER_PAGES):
        messages = await fetch(page, before)
        kept = [m for m in messages if wanted(m)]
        found = kept + found
        if len(messages) < page or (stop_when_full and len(found) >= limit):
            break
        if not stop_when_full and len(kept) < len(messages):
            break
        before = messages[0].id
    return found[-limit:] if stop_when_full else found
