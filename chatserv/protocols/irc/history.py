"""Stored messages on IRC: replay on JOIN, the inbox at login, and CHATHISTORY.

Clients that negotiated ``server-time`` get each line's time as a tag; the others get it
written in front of the text, so replayed lines never pass for new ones. ``batch`` wraps a
replay when negotiated. Message ids are the ``msgid`` tags and CHATHISTORY's references.
"""

from __future__ import annotations

import time

from chatserv import errors
from chatserv.model import Message
from chatserv.protocols.irc import numerics as N
from chatserv.protocols.irc.message import MAX_LINE, SERVER, mask, serialise, server_time, split_text

AFTER_PAGES = 10  # pages walked back to find what came after a msgid: AFTER reaches that far


def message_lines(message: Message, target: str, variant: tuple[bool, bool], *, batch: str = "",
                  stamped: bool = False) -> bytes:
    """A message as PRIVMSG (or NOTICE) lines, split to fit 512 bytes and at line breaks."""
    command = "NOTICE" if message.kind == "notice" else "PRIVMSG"
    prefix = mask(message.sender_name)
    body = message.body
    if stamped:
        body = time.strftime("[%Y-%m-%d %H:%M:%S] ", time.gmtime(message.sent_at)) + body
    with_time, with_msgid = variant
    budget = MAX_LINE - 2 - len(f":{prefix} {command} {target} :".encode())
    lines = []
    for index, chunk in enumerate(split_text(body, budget)):
        tags = {}
        if batch:
            tags["batch"] = batch
        if with_time:
            tags["time"] = server_time(message.sent_at)
        if with_msgid and index == 0:
            tags["msgid"] = str(message.id)
        lines.append(serialise(command, target, chunk, prefix=prefix, tags=tags))
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
        after = None
        if reference == "*" and subcommand == "LATEST":
            pass
        elif reference.startswith("msgid=") and reference[6:].isdigit():
            after = int(reference[6:])
        else:
            raise N.Fail("CHATHISTORY", "INVALID_MSGREFTYPE", subcommand, reference)
        try:
            fetch, target_of = self._history_source(target)
            if subcommand == "BEFORE":
                messages = await fetch(limit, after)
            elif after is None:
                messages = await fetch(limit, None)
            else:
                messages = await self._after(fetch, after, limit, newest=subcommand == "LATEST")
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

    @staticmethod
    async def _after(fetch, after_id: int, limit: int, newest: bool):
        """Messages after ``after_id``: the oldest ``limit`` of them, or the newest with ``newest``."""
        page = max(limit, 100)
        found: list = []
        before = None
        for _ in range(AFTER_PAGES):
            messages = await fetch(page, before)
            newer = [m for m in messages if m.id > after_id]
            found = newer + found
            if len(newer) < len(messages) or len(messages) < page:
                break
            before = messages[0].id
        return found[-limit:] if newest else found[:limit]
