"""Questions about users and the server: WHO (masks and WHOX), WHOWAS, LUSERS, INFO, VERSION, TIME.

WHO by mask lists the online users (of every port) whose nick, user name, host, server or
real name matches; users with mode +i are left out unless they share a channel with the
asker, or the mask is exactly their nick. WHOWAS remembers the last ``WHOWAS_KEPT`` IRC
users who left.
"""

from __future__ import annotations

import collections
import fnmatch
import platform
import time

import attrs

import twisted
from chatserv.model import fold
from chatserv.protocols.irc import numerics as N
from chatserv.protocols.irc.message import HOST, is_number

WHOWAS_KEPT = 1000
WHOX_FIELDS = "tcuihsnfdlaor"  # the order of WHOX fields in RPL_WHOSPCRPL, whatever order they were asked in
HIDDEN_ADDRESS = "255.255.255.255"  # WHOX's IP field: addresses are never shown


@attrs.frozen
class Departure:
    nick: str
    user: str
    realname: str
    left_at: float


class Census:
    """The IRC port's clients: what LUSERS counts, kept up to date as they come, change modes and
    go (no walk over everyone at each registration), and who left, for WHOWAS."""

    def __init__(self):
        self.connections = 0  # IRC connections, registered or not
        self.clients: set = set()  # registered IRC connections
        self.invisible = 0  # of those, with user mode +i
        self.operators: set = set()  # of those, server operators
        self.most_local = self.most_global = 0
        self.departures: collections.deque[Departure] = collections.deque(maxlen=WHOWAS_KEPT)

    def mode_changed(self, connection, mode: str, on: bool):
        if connection not in self.clients:
            return
        if mode == "i":
            self.invisible += 1 if on else -1
        elif mode == "o":
            (self.operators.add if on else self.operators.discard)(connection)


class QueriesMixin:
    # who a user is, as IRC shows it

    def is_invisible(self, user) -> bool:
        return any("i" in getattr(session.sink, "user_modes", ())
                   for session in self.service.sessions_of(user))

    def who_flags(self, user, room) -> str:
        return (("G" if user.id in self.factory.away else "H")
                + ("*" if self.service.is_server_operator(user) else "")
                + (self.prefixed(user, room) if room is not None else ""))

    # WHO

    def irc_WHO(self, line):
        target = line.param(0, "*")
        options = line.param(1)
        fields, _, token = options[1:].partition(",") if options.startswith("%") else ("", "", "")
        if target.startswith("#"):
            rows = self._channel_rows(target)
        else:
            rows = [(user, None) for user in self._matching_users(target)]
        if "o" in options and not options.startswith("%"):
            rows = [(user, room) for user, room in rows if self.service.is_server_operator(user)]
        lines = [self.who_line(user, room, fields, token) for user, room in rows]
        lines.append(self.numeric(N.RPL_ENDOFWHO, target=target))
        self.send(b"".join(lines))

    def _channel_rows(self, target: str):
        try:
            room = self.service_room(target)
        except N.IRCError:
            return []
        if not self.sees_inside(room):
            return []
        inside = self.service.is_member(self.user, room) or self.service.is_server_operator(self.user)
        return [(user, room) for user in self.online_members(room) if inside or not self.is_invisible(user)]

    def _matching_users(self, target: str):
        if target in ("*", "0", ""):
            pattern = "*"
        elif not set("*?") & set(target):  # a nick: shown whatever its modes
            try:
                return [self.online(target)]
            except N.IRCError:
                return []
        else:
            pattern = fold(target).replace("[", "[[]")
        mates = {user.id for room in self.service.rooms_of(self.user) for user in self.service.members(room)}
        sees_all = self.service.is_server_operator(self.user)
        found = []
        for user in self.service.online_users():
            if not (sees_all or user.id in mates or user.id == self.user.id) and self.is_invisible(user):
                continue
            ident, realname = self.user_info(user)
            if any(fnmatch.fnmatchcase(fold(text), pattern)
                   for text in (self.nick_of(user), ident, HOST, self.server, realname)):
                found.append(user)
        return found

    def who_line(self, user, room, fields: str = "", token: str = "") -> bytes:
        """RPL_WHOREPLY, or with WHOX ``fields`` RPL_WHOSPCRPL."""
        ident, realname = self.user_info(user)
        nick = self.nick_of(user)
        channel = "#" + room.name if room is not None else "*"
        flags = self.who_flags(user, room)
        if not fields:
            return self.numeric(N.RPL_WHOREPLY, channel=channel, ident=ident, host=HOST, server=self.server,
                                target=nick, flags=flags, realname=realname)
        values = {"t": token if token.isdigit() and len(token) <= 3 else "0", "c": channel, "u": ident,
                  "i": HIDDEN_ADDRESS, "h": HOST, "s": self.server, "n": nick, "f": flags, "d": "0",
                  "l": "0", "a": "0" if user.guest else user.username, "o": "n/a", "r": realname}
        shown = [values[field] for field in WHOX_FIELDS if field in fields]
        if "r" in fields:
            shown[-1] = ":" + shown[-1]
        return self.numeric(N.RPL_WHOSPCRPL, fields=" ".join(shown))

    # WHOWAS

    def remember_departure(self):
        """An IRC user leaves: WHOWAS remembers it."""
        if self.session is not None and self.registered:
            departure = Departure(self.nick, self.ident or self.nick, self.realname or self.nick,
                                  self.clock.seconds())
            self.factory.census.departures.append(departure)

    def irc_WHOWAS(self, line):
        if not line.param(0):
            raise N.IRCError(N.ERR_NONICKNAMEGIVEN)
        count = int(line.param(1)) if is_number(line.param(1).lstrip("-")) else 0
        lines = []
        for nick in line.params[0].split(","):
            found = [d for d in reversed(self.factory.census.departures) if fold(d.nick) == fold(nick)]
            found = found[:count] if count > 0 else found
            for departure in found:
                left = time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(departure.left_at))
                lines.append(self.numeric(N.RPL_WHOWASUSER, target=departure.nick, user=departure.user,
                                          host=HOST, realname=departure.realname))
                lines.append(self.numeric(N.RPL_WHOISSERVER, target=departure.nick, server=self.server,
                                          where=left))
            if not found:
                lines.append(self.numeric(N.ERR_WASNOSUCHNICK, target=nick))
            lines.append(self.numeric(N.RPL_ENDOFWHOWAS, target=nick))
        self.send(b"".join(lines))

    # the server

    def this_server(self, line):
        """Server queries may name a server: this one is the only one."""
        if line is not None and line.param(0) and fold(line.param(0)) not in (fold(self.server), "*"):
            raise N.IRCError(N.ERR_NOSUCHSERVER, target=line.param(0))

    def counted(self):
        """This client joins the census (at registration)."""
        census = self.factory.census
        census.clients.add(self)
        census.invisible += "i" in self.user_modes

    def connectionMade(self):
        super().connectionMade()
        self.factory.census.connections += 1

    def connectionLost(self, reason=None):
        census = self.factory.census
        census.connections -= 1
        if self in census.clients:
            census.clients.discard(self)
            census.operators.discard(self)
            census.invisible -= "i" in self.user_modes
        super().connectionLost(reason)

    def irc_LUSERS(self, line):
        self.this_server(line)
        census = self.factory.census
        local, everyone = len(census.clients), self.service.online_count()
        census.most_local = max(census.most_local, local)
        census.most_global = max(census.most_global, everyone)
        unknown = census.connections - local
        lines = [self.numeric(N.RPL_LUSERCLIENT, users=max(everyone - census.invisible, 0),
                              invisible=census.invisible)]
        if census.operators:
            lines.append(self.numeric(N.RPL_LUSEROP, count=len(census.operators)))
        if unknown > 0:
            lines.append(self.numeric(N.RPL_LUSERUNKNOWN, count=unknown))
        if self.service.room_count():
            lines.append(self.numeric(N.RPL_LUSERCHANNELS, count=self.service.room_count()))
        lines += [self.numeric(N.RPL_LUSERME, clients=local),
                  self.numeric(N.RPL_LOCALUSERS, count=local, most=census.most_local),
                  self.numeric(N.RPL_GLOBALUSERS, count=everyone, most=census.most_global)]
        self.send(b"".join(lines))

    def irc_VERSION(self, line):
        self.this_server(line)
        self.send(self.numeric(N.RPL_VERSION, version=self.factory.version, server=self.server,
                               comments="chatserv: IRC and five other chat protocols over one service")
                  + b"".join(self.isupport_lines()))

    def irc_TIME(self, line):
        self.this_server(line)
        now = self.clock.seconds()
        self.reply(N.RPL_TIME, server=self.server, timestamp=int(now),
                   time=time.strftime("%A %B %d %Y -- %H:%M:%S +00:00", time.gmtime(now)))

    def irc_INFO(self, line):
        self.this_server(line)
        about = [f"{self.factory.version}: one chat service, many protocols, one set of accounts and rooms",
                 "IRC (RFC 1459/2812, Modern IRC, IRCv3) next to five other chat wires",
                 f"Twisted {twisted.__version__} on Python {platform.python_version()}",
                 f"Up since {self.factory.started}"]
        self.send(b"".join([self.numeric(N.RPL_INFO, line=text) for text in about]
                           + [self.numeric(N.RPL_ENDOFINFO)]))
