"""``znc.in/playback``: the bouncer command bouncer-aware clients (The Lounge, Textual) use
to ask for exactly what they missed.

``PRIVMSG *playback :PLAY <buffers> [<from> [<to>]]`` plays the messages sent after
``from`` (and before ``to``), in seconds since 1970, of each buffer named: a comma list of
channels and nicks, with ``*`` and ``?`` wildcards (``*`` is every channel and every
conversation, ``#*`` every channel). ``LIST`` names the buffers with their newest message.
A client with the capability gets no automatic replay on JOIN (see history.py).
"""

from __future__ import annotations

import math

from chatserv.model import HistoryBounds, Room, fold
from chatserv.protocols.irc.message import glob_match, serialise, server_time

LAST_TIME = 253402300799.0  # 9999-12-31T23:59:59Z: a later <from> could name no message
PLAYBACK = "*playback"
PLAYBACK_MASK = "*playback!znc@znc.in"
PLAYBACK_HELP = (
    "PLAY <buffers> [<from> [<to>]]  -- replay the messages of channels and nicks (comma list, "
    "wildcards) sent after <from> and before <to>, in seconds since 1970",
    "LIST                            -- the buffers, with the time of their newest message",
)


class PlaybackMixin:
    def playback_says(self, text: str):
        self.send(serialise("PRIVMSG", self.nick, text, prefix=PLAYBACK_MASK))

    async def playback(self, text: str):
        words = text.split()
        verb = words[0].upper() if words else "HELP"
        if verb == "PLAY" and 2 <= len(words) <= 4:
            try:
                since = float(words[2]) if len(words) > 2 else 0.0
                until = float(words[3]) if len(words) > 3 else math.inf
            except ValueError:
                since = until = math.nan
            if not abs(since) <= LAST_TIME or math.isnan(until):  # NaN, infinite, or past any time tag
                return self.playback_says("PLAY: times are seconds since 1970")
            return await self._play(words[1], since, until)
        if verb == "LIST" and len(words) == 1:
            for target, latest in await self._buffers("*", 0.0, math.inf):
                self.playback_says(f"{self._buffer_name(target)} {server_time(latest)}")
            return None
        for line in PLAYBACK_HELP:
            self.playback_says(line)
        return None

    async def _play(self, patterns: str, since: float, until: float):
        # Times count in the milliseconds of the time tags: "after" a message's time excludes it.
        bounds = HistoryBounds(since=(math.floor(since * 1000) + 1) / 1000 if since > 0 else None,
                               until=None if math.isinf(until) else until)
        for target, _latest in await self._buffers(patterns, since, until):
            messages = await self.service.history_range(self.user, target, bounds, self.limits.history)
            name = self._buffer_name(target)
            if isinstance(target, Room):
                self.send(self.history_lines(messages, lambda m, name=name: name, name))
            else:
                self.send(self.history_lines(messages, lambda m, name=name, other=target.id: (
                    name if m.recipient_id == other else self.nick), name))

    async def _buffers(self, patterns: str, since: float, until: float) -> list:
        """The channels this client is on and the conversations with messages in the period
        whose names match ``patterns``, each with its newest message time, oldest first."""
        found = await self.active_conversations(since, until)
        wanted = [fold(p) for p in patterns.split(",") if p]
        return [(target, latest) for target, latest in found
                if (not isinstance(target, Room) or fold(target.name) in self.channels)
                and any(glob_match(p, fold(self._buffer_name(target))) for p in wanted)]

    def _buffer_name(self, target) -> str:
        return "#" + target.name if isinstance(target, Room) else self.nick_of(target)
