"""Channels are chatserv rooms: ``#lobby`` is room ``lobby``, membership is shared by every port.

NAMES, WHO and LIST show the members who are online on any port. Operators are the room's
creator and whoever an operator gave +o (``ChatService.set_operator``). Topic changes are
for operators unless the channel is set -t; +n always holds (only members may talk).
"""

from __future__ import annotations

from chatserv import errors
from chatserv.model import Room, fold
from chatserv.protocols.irc import numerics as N
from chatserv.protocols.irc.message import HOST, serialise

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
        return "@" if self.service.is_operator(user, room) else ""

    def need_operator(self, room: Room):
        if not self.service.is_operator(self.user, room):
            raise N.IRCError(N.ERR_CHANOPRIVSNEEDED, target="#" + room.name)

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
        await self.each_target(line.params[0], self._join)

    async def _join(self, target: str):
        name = target[1:] if target.startswith("#") else ""
        try:
            self.service.validate_room_name(name)
        except errors.InvalidRoomName:
            raise N.IRCError(N.ERR_NOSUCHCHANNEL, target=target) from None
        if fold(name) in self.channels:
            return
        room = await self.service.join_room(self.user, name, create=True, address=self.peer_host)
        if fold(room.name) not in self.channels:  # a member already: no event told us
            self.show_join(room)
        await self.replay(room)

    def show_join(self, room: Room):
        self.channels[fold(room.name)] = room
        channel = "#" + room.name
        lines = [serialise("JOIN", channel, prefix=self.own_mask())]
        topic = self.service.topic(room)
        if topic:
            lines.append(self.numeric(N.RPL_TOPIC, channel=channel, topic=topic))
        lines += self.names_lines(room)
        self.send(b"".join(lines))

    def names_lines(self, room: Room) -> list[bytes]:
        channel = "#" + room.name
        lines, names, size = [], [], 0
        for user in self.online_members(room):
            name = self.prefixed(user, room) + self.nick_of(user)
            if size + len(name) + 1 > NAMES_BUDGET:
                lines.append(self.numeric(N.RPL_NAMREPLY, channel=channel, names=" ".join(names)))
                names, size = [], 0
            names.append(name)
            size += len(name) + 1
        if names:
            lines.append(self.numeric(N.RPL_NAMREPLY, channel=channel, names=" ".join(names)))
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
        room = self.joined(line.params[0])
        self.need_operator(room)
        reason = line.param(2)

        async def kick(nick):
            try:
                user = self.service.user_or_guest(nick)
            except errors.UserNotFound:
                raise N.IRCError(N.ERR_NOSUCHNICK, target=nick) from None
            if not self.service.is_member(user, room):
                raise N.IRCError(N.ERR_USERNOTINCHANNEL, target=nick, channel="#" + room.name)
            await self.service.leave_room(user, room.name, by=self.user, reason=reason or user.username)

        await self.each_target(line.params[1], kick)

    # looking around

    def irc_LIST(self, line):
        rooms = self.service.rooms()
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

    def irc_WHO(self, line):
        target = line.param(0, "*")
        lines = []
        if target.startswith("#"):
            try:
                room = self.service_room(target)
            except N.IRCError:
                room = None
            if room is not None:
                lines = [self.who_line(u, room) for u in self.online_members(room)]
        elif target != "*":
            try:
                lines = [self.who_line(self.online(target), None)]
            except N.IRCError:
                pass
        lines.append(self.numeric(N.RPL_ENDOFWHO, target=target))
        self.send(b"".join(lines))

    def who_line(self, user, room: Room | None) -> bytes:
        flags = ("G" if user.id in self.factory.away else "H") + (self.prefixed(user, room) if room else "")
        ident, realname = self.user_info(user)
        return self.numeric(N.RPL_WHOREPLY, channel="#" + room.name if room else "*", ident=ident, host=HOST,
                            server=self.server, target=self.nick_of(user), flags=flags, realname=realname)

    # topic and modes

    async def irc_TOPIC(self, line):
        target = line.params[0]
        if len(line.params) == 1:
            room = self.service_room(target)
            topic = self.service.topic(room)
            if topic:
                return self.reply(N.RPL_TOPIC, channel=target, topic=topic)
            return self.reply(N.RPL_NOTOPIC, channel=target)
        room = self.joined(target)
        if room.id not in self.factory.topic_open:
            self.need_operator(room)
        await self.service.set_topic(self.user, room.name, line.params[1])

    def irc_MODE(self, line):
        if not line.params[0].startswith("#"):
            return self.user_mode(line)
        room = self.service_room(line.params[0])
        channel = "#" + room.name
        if len(line.params) == 1:
            modes = "+n" if room.id in self.factory.topic_open else "+nt"
            created = int(room.created_at)
            return self.send(self.numeric(N.RPL_CHANNELMODEIS, channel=channel, modes=modes)
                             + self.numeric(N.RPL_CREATIONTIME, channel=channel, created=created))
        arguments = list(line.params[2:])
        sign = "+"
        for char in line.params[1]:
            if char in "+-":
                sign = char
            elif char == "b":
                self.reply(N.RPL_ENDOFBANLIST, channel=channel)
            elif char == "o":
                if not arguments:
                    raise N.IRCError(N.ERR_NEEDMOREPARAMS, command="MODE")
                self.joined(channel)
                self.need_operator(room)
                nick = arguments.pop(0)
                try:
                    user = self.service.user_or_guest(nick)
                except errors.UserNotFound:
                    raise N.IRCError(N.ERR_NOSUCHNICK, target=nick) from None
                if not self.service.is_member(user, room):
                    raise N.IRCError(N.ERR_USERNOTINCHANNEL, target=nick, channel=channel)
                self.service.set_operator(self.user, room.name, user, sign == "+")
            elif char in "nt":
                self.joined(channel)
                self.need_operator(room)
                if char == "t":
                    (self.factory.topic_open.discard if sign == "+" else self.factory.topic_open.add)(room.id)
                    self.send(serialise("MODE", channel, sign + "t", prefix=self.own_mask()))
            else:
                raise N.IRCError(N.ERR_UNKNOWNMODE, target=char)

    # events

    def render_membership(self, event):
        room = event.room
        key = fold(room.name)
        if self.session is not None and event.user.id == self.session.user.id:
            if event.joined:
                if key in self.channels:
                    return None
                self.show_join(room)
                return None
            if self.channels.pop(key, None) is None:
                return None
        elif key not in self.channels:
            return None
        return event.render_once("irc", lambda: _membership_line(event, self.mask_of, self.nick_of))

    def render_topic(self, event):
        if fold(event.room.name) not in self.channels:
            return None
        topic = self.service.topic(event.room)
        return event.render_once("irc", lambda: serialise("TOPIC", "#" + event.room.name, topic,
                                                          prefix=self.mask_of(event.by)))

    def render_operator(self, event):
        if fold(event.room.name) not in self.channels:
            return None
        sign = "+o" if event.granted else "-o"
        return event.render_once("irc", lambda: serialise(
            "MODE", "#" + event.room.name, sign, self.nick_of(event.user), prefix=self.mask_of(event.by)))


def _membership_line(event, mask_of, nick_of) -> bytes:
    channel = "#" + event.room.name
    if event.joined:
        return serialise("JOIN", channel, prefix=mask_of(event.user))
    if event.by is not None:
        return serialise("KICK", channel, nick_of(event.user), event.reason or nick_of(event.user),
                         prefix=mask_of(event.by))
    if event.reason:
        return serialise("PART", channel, event.reason, prefix=mask_of(event.user))
    return serialise("PART", channel, prefix=mask_of(event.user))
