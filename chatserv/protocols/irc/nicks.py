"""Who a user is on IRC: nicks (NICK after registration), USER's username and real name, masks.

A nick is the name a user goes by (``ChatService.name_of``). A guest's nick is its name, so a
guest's NICK renames it; an account keeps its account whatever its nick, and may take any
nick that is free: nobody else's account name, guest or nick. Whoever shares a channel with
the user sees the NICK line, as does each of the account's other IRC connections.
"""

from __future__ import annotations

import re

from chatserv import errors
from chatserv.protocols.irc import numerics as N
from chatserv.protocols.irc.message import mask, serialise

USERLEN = 16  # characters of USER's username kept (ISUPPORT USERLEN)
_NOT_IDENT = re.compile(r"[^A-Za-z0-9_.\-~\[\]\\`^{}|]")


class NicksMixin:
    ident = ""  # USER's username, cleaned to what a mask may carry
    realname = ""

    def nick_of(self, user) -> str:
        return self.service.name_of(user)

    def user_info(self, user) -> tuple[str, str]:
        """(username, real name) from the user's IRC connection, else the account name twice."""
        for session in self.service.sessions_of(user):
            if session.protocol == "irc" and session.sink.ident:
                return session.sink.ident, session.sink.realname
        return user.username, user.username

    def mask_of(self, user) -> str:
        return mask(self.nick_of(user), self.user_info(user)[0])

    def own_mask(self) -> str:
        return mask(self.nick or "*", self.ident)

    def irc_USER(self, line):
        if self.registered:
            raise N.IRCError(N.ERR_ALREADYREGISTERED)
        username, realname = line.params[0], line.params[3]
        if not username or not realname:
            raise N.IRCError(N.ERR_NEEDMOREPARAMS, command="USER")
        self.ident = _NOT_IDENT.sub("", username)[:USERLEN]
        self.realname = realname
        self.user_given = True
        return self.try_registration()

    async def change_nick(self, nick: str):
        """NICK after registration: any free nick, whatever the account."""
        if nick == self.nick:
            return
        try:
            await self.service.rename(self.user, nick, origin=self.session)
        except errors.UsernameTaken:
            owner = self.service.is_registered(nick) and self.service.user(nick) is not self.user
            raise N.IRCError(N.ERR_NICKNAMERESERVED if owner else N.ERR_NICKNAMEINUSE, target=nick) from None
        self.show_own_nick(nick)

    def show_own_nick(self, nick: str):
        """Tell this client its nick is now ``nick``."""
        old, self.nick = self.own_mask(), nick
        self.send(serialise("NICK", nick, prefix=old))

    def render_renamed(self, event):
        """A NICK line for someone this client sees in a channel (or for this user's own nick,
        changed on another of its connections)."""
        if self.session is not None and event.user.id == self.session.user.id and event.before is None:
            if self.nick != self.nick_of(event.user):
                self.show_own_nick(self.nick_of(event.user))
            return None
        shown = event.before or event.user
        if not any(self.service.is_member(shown, room) for room in self.channels.values()):
            return None
        return event.render_once("irc", lambda: serialise(
            "NICK", self.nick_of(event.user), prefix=mask(event.old_name, self.user_info(shown)[0])))
