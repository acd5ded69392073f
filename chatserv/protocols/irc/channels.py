"""Channels are chatserv rooms: ``#lobby`` is room ``lobby``, membership is shared by every port.

NAMES, WHO and LIST show the members who are online on any port. Who may do what (the
founder, operators, voice, bans, keys...) is the room's settings, kept by the service
(``chatserv.domain.room_settings``); ``modes.py`` shows them as channel modes.
"""

from __future__ import annotations

from chatserv import errors
from chatserv.model import Room, fold
from chatserv.protocols.irc import numerics as N
from chatserv.protocols.irc.message import serialise

NAMES_BUDGET = 400  # bytes of names in one RPL_NAMREPLY, well inside 512


class ChannelsMixin:
    # looking channels up

    def service_room(self, target: str) -> Room:
        """The room a ``#channel`` names, else ERR_NOSUCHCHANNEL."""
        if target.startswith("#") and len(target) > 1:
            try:
                return self.service.room(target[1:])
            except errors.RoomNotFound:
                pass
        raise N.IRCError(N.ERR_NOSUCHCHANNEL, target=target)

    def joined(self, target: str) -> Room:
        """A channel this client is on, else ERR_NOSUCHCHANNEL or ERR_NOTONCHANNEL."""
        room = self.channels.get(fold(target[1:])) if target.startswith("#") else None
        if room is None:
            self.service_room(target)
            raise N.IRCError(N.ERR_NOTONCHANNEL, target=target)
        return room

    def prefixed(self, user, room: Room) -> str:
        """``@`` for an operator, ``+`` for voice; both with ``multi-prefix``."""
        prefixes = (("@" if self.service.is_operator(user, room) else "")
                    + ("+" if self.service.is_voiced(user, room) else ""))
        return prefixes if "multi-prefix" in self.caps else prefixes[:1]

    def need_operator(self, room: Room):
        if not self.service.can_manage(self.user, room):
            raise N.IRCError(N.ERR_CHANOPRIVSNEEDED, target="#" + room.name)

    def sees_inside(self, room: Room) -> bool:
        """Whether this client may see a room's members: always, unless it is secret (+s)."""
        return not self.service.room_info(room).secret or self.service.is_member(self.user, room)

    def online_members(self, room: Room):
        return [u for u in self.service.members(room) if self.service.is_online(u)]

    async def each_target(self, targets: str, action):
        """Run ``action`` per comma-separated target; one target's error does not stop the rest."""
        for target in targets.split(","):
            try:
                await action(target)
            except N.IRCError as exc:
                self.reply(exc.numeric, **exc.fields)
            except errors.ChatError as exc:
                self.domain_error(exc, target, "*")

    # JOIN and PART

    async def irc_JOIN(self, line):
        if line.params[0] == "0":
            for room in list(self.channels.values()):
                await self.each_target("#" + room.name, self._part)
            return
        keys = line.param(1).split(",")
        for index, target in enumerate(line.params[0].split(",")):
            key = keys[index] if index < len(keys) else ""
            await self.each_target(target, lambda target, key=key: self._join(target, key))

    async def _join(self, target: str, key: str = ""):
        name = target[1:] if target.startswith("#") else ""
        try:
            self.service.validate_room_name(name)
        except errors.InvalidRoomName:
            raise N.IRCError(N.ERR_NOSUCHCHANNEL, target=target) from None
        if fold(name) in self.channels:
            return
        room = await self.service.join_room(self.user, name, create=True, key=key, address=self.peer_host)
        if fold(room.name) not in self.channels:  # a member already: no event told us
            self.show_join(room)
        await self.replay(room)

    def show_join(self, room: Room):
        self.channels[fold(room.name)] = room
        channel = "#" + room.name
        lines = [serialise("JOIN", channel, prefix=self.own_mask())]
        lines += self.topic_lines(room)
        lines += self.names_lines(room)
        self.send(b"".join(lines))

    def topic_lines(self, room: Room) -> list[bytes]:
        """RPL_TOPIC and RPL_TOPICWHOTIME, or nothing without a topic."""
        topic = self.service.topic(room)
        if not topic:
            return []
        channel, info = "#" + room.name, self.service.room_info(room)
        return [self.numeric(N.RPL_TOPIC, channel=channel, topic=topic),
                self.numeric(N.RPL_TOPICWHOTIME, channel=channel, by=info.topic_by or "*",
                             at=int(info.topic_at))]

    def names_lines(self, room: Room) -> list[bytes]:
        """RPL_NAMREPLY lines (none for a secret room seen from outside), then RPL_ENDOFNAMES."""
        channel = "#" + room.name
        lines, names, size = [], [], 0
        kind = "@" if self.service.room_info(room).secret else "="
        full = "userhost-in-names" in self.caps
        for user in self.online_members(room) if self.sees_inside(room) else ():
            name = self.prefixed(user, room) + (self.mask_of(user) if full else self.nick_of(user))
            if size + len(name) + 1 > NAMES_BUDGET:
                lines.append(self.numeric(N.RPL_NAMREPLY, kind=kind, channel=channel, names=" ".join(names)))
                names, size = [], 0
            names.append(name)
            size += len(name) + 1
        if names:
            lines.append(self.numeric(N.RPL_NAMREPLY, kind=kind, channel=channel, names=" ".join(names)))
        lines.append(self.numeric(N.RPL_ENDOFNAMES, channel=channel))
        return lines

    async def irc_PART(self, line):
        reason = line.param(1)
        await self.each_target(line.params[0], lambda target: self._part(target, reason))

    async def _part(self, target: str, reason: str = ""):
        room = self.joined(target)
        try:
            await self.service.leave_room(self.user, room.name, reason=reason)
        except errors.NotMember:
            self.channels.pop(fold(room.name), None)
            raise

    async def irc_KICK(self, line):
        """``KICK #a nick1,nick2``, ``KICK #a,#b nick`` or ``KICK #a,#b nick1,nick2`` (in pairs);
        each kick is answered on its own. The default reason is the kicker's nick."""
        channels, nicks = line.params[0].split(","), line.params[1].split(",")
        if len(channels) == 1:
            pairs = [(channels[0], nick) for nick in nicks]
        elif len(nicks) == 1:
            pairs = [(channel, nicks[0]) for channel in channels]
        elif len(nicks) == len(channels):
            pairs = list(zip(channels, nicks, strict=True))
        else:
            raise N.IRCError(N.ERR_NEEDMOREPARAMS, command="KICK")
        reason = line.param(2) or self.nick
        for channel, nick in pairs:
            await self.each_target(channel, lambda channel, nick=nick: self._kick(channel, nick, reason))

    async def _kick(self, channel: str, nick: str, reason: str):
        room = self.joined(channel)
        self.need_operator(room)
        try:
            user = self.service.user_or_guest(nick)
        except errors.NotFound:
            raise N.IRCError(N.ERR_NOSUCHNICK, target=nick) from None
        if not self.service.is_member(user, room):
            raise N.IRCError(N.ERR_USERNOTINCHANNEL, target=nick, channel="#" + room.name)
        await self.service.leave_room(user, room.name, by=self.user, reason=reason)

    async def irc_INVITE(self, line):
        """INVITE <nick> <#channel>: lets the nick in once, past +i, the key and the limit."""
        nick, channel = line.params[:2]
        user = self.online(nick)
        room = self.joined(channel)
        if self.service.room_info(room).invite_only:
            self.need_operator(room)
        if self.service.is_member(user, room):
            raise N.IRCError(N.ERR_USERONCHANNEL, target=self.nick_of(user), channel="#" + room.name)
        self.service.invite(self.user, room.name, user)
        self.reply(N.RPL_INVITING, target=self.nick_of(user), channel="#" + room.name)

    # looking around

    def irc_LIST(self, line):
        rooms = self.service.listed_rooms(self.user)
        if line.param(0):
            wanted = {fold(t[1:]) for t in line.params[0].split(",") if t.startswith("#")}
            rooms = [r for r in rooms if fold(r.name) in wanted]
        lines = [self.numeric(N.RPL_LISTSTART)]
        lines += [self.numeric(N.RPL_LIST, channel="#" + r.name, count=len(self.online_members(r)),
                               topic=self.service.topic(r)) for r in rooms]
        lines.append(self.numeric(N.RPL_LISTEND))
        self.send(b"".join(lines))

    def irc_NAMES(self, line):
        if not line.param(0):
            return self.reply(N.RPL_ENDOFNAMES, channel="*")
        for target in line.params[0].split(","):
            try:
                self.send(b"".join(self.names_lines(self.service_room(target))))
            except N.IRCError:
                self.reply(N.RPL_ENDOFNAMES, channel=target)

    # topic

    async def irc_TOPIC(self, line):
        target = line.params[0]
        if len(line.params) == 1:
            room = self.service_room(target)
            if not self.sees_inside(room):
                raise N.IRCError(N.ERR_NOTONCHANNEL, target=target)
            if self.service.topic(room):
                return self.send(b"".join(self.topic_lines(room)))
            return self.reply(N.RPL_NOTOPIC, channel=target)
        room = self.joined(target)
        await self.service.set_topic(self.user, room.name, line.params[1])

    # events

    def render_membership(self, event):
        room = event.room
        key = fold(room.name)
        if self.session is not None and event.user.id == self.session.user.id:
            if event.joined:
                if key in self.channels:
                    return None
                self.show_join(self.service.room_by_id(room.id))
                return None
            if self.channels.pop(key, None) is None:
                return None
        elif key not in self.channels:
            return None
        if event.joined:  # the roles the newcomer holds there (the founder's +o) come with it
            return event.render_once("irc", lambda: _membership_line(event, self.mask_of, self.nick_of)
                                     + self.role_modes(self.channels[key], event.user))
        return event.render_once("irc", lambda: _membership_line(event, self.mask_of, self.nick_of))

    def render_topic(self, event):
        if fold(event.room.name) not in self.channels:
            return None
        return event.render_once("irc", lambda: serialise("TOPIC", "#" + event.room.name, event.text,
                                                          prefix=self.mask_of(event.by)))

    def render_invited(self, event):
        return serialise("INVITE", self.nick_of(event.user), "#" + event.room.name,
                         prefix=self.mask_of(event.by))


def _membership_line(event, mask_of, nick_of) -> bytes:
    channel = "#" + event.room.name
    if event.joined:
        return serialise("JOIN", channel, prefix=mask_of(event.user))
    if event.by is not None:
        return serialise("KICK", channel, nick_of(event.user), event.reason or nick_of(event.by),
                         prefix=mask_of(event.by))
    if event.reason:
        return serialise("PART", channel, event.reason, prefix=mask_of(event.user))
    return serialise("PART", channel, prefix=mask_of(event.user))
