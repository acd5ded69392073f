"""MODE: channel modes as the room settings of ``chatserv.domain.room_settings``, and user modes.

The service knows no letters: this module maps them. Channel modes (``CHANMODES=b,k,l,imnst``):
``b`` ban masks (a list), ``k`` key, ``l`` member limit, ``i`` invite-only, ``m`` moderated,
``n`` no messages from outside, ``s`` secret, ``t`` topic for operators; prefixes ``o`` and
``v`` (``PREFIX=(ov)@+``). User modes: ``i`` invisible (WHO by mask skips you), ``w`` hears
WALLOPS, ``o`` server operator (OPER gives it, ``-o`` gives it up).
"""

from __future__ import annotations

from chatserv import errors
from chatserv.domain.room_settings import BANS_PER_ROOM, KEY_LENGTH, valid_key
from chatserv.model import RoomChange, fold
from chatserv.protocols.irc import numerics as N
from chatserv.protocols.irc.message import MAX_LINE, is_number, serialise

FLAG_MODES = {"i": "invite_only", "m": "moderated", "n": "no_external", "s": "secret", "t": "topic_locked"}
VALUE_MODES = {"k": "key", "l": "limit"}
ROLE_MODES = {"o": "operator", "v": "voice"}
LETTERS = {setting: letter for table in (FLAG_MODES, VALUE_MODES, ROLE_MODES)
           for letter, setting in table.items()} | {"ban": "b"}
USER_MODES = "iow"
CHANNEL_MODES = "biklmnostv"
PARAMETER_MODES = "bklov"
MODES_PER_COMMAND = 6  # changes with a parameter in one MODE command (MODES in 005)
LIMIT_MAX = 1_000_000
ISUPPORT = ["CHANMODES=b,k,l,imnst", "PREFIX=(ov)@+", f"MODES={MODES_PER_COMMAND}",
            f"MAXLIST=b:{BANS_PER_ROOM}", f"KEYLEN={KEY_LENGTH}"]


def ban_mask(text: str) -> str:
    """A ban mask in full ``nick!user@host`` form, as servers store it (``bob`` is ``bob!*@*``)."""
    if "!" not in text and "@" in text:
        text = "*!" + text
    nick, _, rest = text.partition("!")
    user, _, host = rest.partition("@")
    return f"{nick or '*'}!{user or '*'}@{host or '*'}"


def mode_lines(prefix: str, channel: str, changes, nick_of) -> bytes:
    """MODE lines announcing ``changes`` (RoomChanges; a role names ``nick_of(user)``), split to
    fit a line."""
    lines, letters, params, sign = [], "", [], ""
    budget = MAX_LINE - 2 - len(f":{prefix} MODE {channel} ".encode())
    for change in changes:
        letter = LETTERS[change.setting]
        on = bool(change.value)
        if change.setting in ROLE_MODES.values():
            param = nick_of(change.user)
        elif change.setting == "ban":
            param = change.mask
        elif change.setting == "key":
            param = change.value or "*"
        elif change.setting == "limit" and on:
            param = str(change.value)
        else:
            param = None
        extra = len(letter) + 2 + (len(param.encode()) + 1 if param else 0)
        if letters and len(letters.encode()) + sum(len(p.encode()) + 1 for p in params) + extra > budget:
            lines.append(serialise("MODE", channel, letters, *params, prefix=prefix))
            letters, params, sign = "", [], ""
        wanted = "+" if on else "-"
        if wanted != sign:
            letters += wanted
            sign = wanted
        letters += letter
        if param:
            params.append(param)
    if letters:
        lines.append(serialise("MODE", channel, letters, *params, prefix=prefix))
    return b"".join(lines)


class ModesMixin:
    user_modes: frozenset  # this connection's user modes (set at registration), replaced when changed

    def irc_MODE(self, line):
        if not line.params[0].startswith("#"):
            return self.user_mode(line)
        room = self.service_room(line.params[0])
        if len(line.params) == 1:
            return self.send(self.channel_modes(room))
        return self.change_channel_modes(room, line.params[1], list(line.params[2:]))

    # channel modes

    def channel_modes(self, room) -> bytes:
        """RPL_CHANNELMODEIS and RPL_CREATIONTIME; the key is shown to members only."""
        channel = "#" + room.name
        info = self.service.room_info(room)
        letters = "+" + "".join(letter for letter, setting in sorted(FLAG_MODES.items())
                                if getattr(info, setting))
        params = []
        if info.key:
            letters += "k"
            params.append(info.key if self.service.is_member(self.user, room) else "<key>")
        if info.limit:
            letters += "l"
            params.append(str(info.limit))
        return (self.numeric(N.RPL_CHANNELMODEIS, channel=channel, modes=" ".join([letters, *params]))
                + self.numeric(N.RPL_CREATIONTIME, channel=channel, created=int(room.created_at)))

    async def change_channel_modes(self, room, modestring: str, arguments: list[str]):
        channel = "#" + room.name
        wanted: list[tuple[str, bool, str]] = []  # (letter, on, argument)
        sign, with_param, listed, unknown = "+", 0, False, set()
        for char in modestring:
            if char in "+-":
                sign = char
                continue
            on = sign == "+"
            if char not in FLAG_MODES and char not in VALUE_MODES and char not in ROLE_MODES and char != "b":
                if char not in unknown:
                    unknown.add(char)
                    self.reply(N.ERR_UNKNOWNMODE, target=char)
                continue
            takes_param = char in ROLE_MODES or char in "bk" or (char == "l" and on)
            if takes_param and with_param >= MODES_PER_COMMAND:
                continue  # past MODES: ignored, as servers do
            if char == "b" and not arguments:
                if not listed:
                    listed = True
                    self.send(self.ban_list(room))
                continue
            if takes_param and not arguments and (char, on) != ("k", False):  # -k may come without the key
                raise N.IRCError(N.ERR_NEEDMOREPARAMS, command="MODE")
            argument = arguments.pop(0) if takes_param and arguments else ""
            with_param += takes_param
            wanted.append((char, on, argument))
        if not wanted:
            return
        if fold(room.name) not in self.channels and not self.service.is_server_operator(self.user):
            raise N.IRCError(N.ERR_NOTONCHANNEL, target=channel)
        if not self.service.can_manage(self.user, room):
            raise N.IRCError(N.ERR_CHANOPRIVSNEEDED, target=channel)
        changes = [change for change in (self._mode_change(room, *request) for request in wanted) if change]
        applied = await self.service.change_room(self.user, room, changes) if changes else []
        if applied and not self.service.is_member(self.user, room):  # a server operator outside sees it
            self.send(mode_lines(self.own_mask(), channel, applied, self.nick_of))

    def _mode_change(self, room, char: str, on: bool, argument: str) -> RoomChange | None:
        """The RoomChange one mode letter asks for; None (after a numeric) when it cannot be made."""
        channel = "#" + room.name
        if char in FLAG_MODES:
            return RoomChange(FLAG_MODES[char], on)
        if char == "k":
            if on and not valid_key(argument):
                self.reply(N.ERR_INVALIDKEY, target=channel)
                return None
            return RoomChange("key", argument if on else "")
        if char == "l":
            if not on:
                return RoomChange("limit", 0)
            if not is_number(argument) or not 0 < int(argument) <= LIMIT_MAX:
                self.reply(N.ERR_INVALIDMODEPARAM, target=channel, mode="l", param=argument,
                           text="The limit is a number of members")
                return None
            return RoomChange("limit", int(argument))
        if char in ROLE_MODES:
            try:
                user = self.service.user_or_guest(argument)
            except errors.NotFound:
                self.reply(N.ERR_NOSUCHNICK, target=argument)
                return None
            if not self.service.is_member(user, room):
                self.reply(N.ERR_USERNOTINCHANNEL, target=argument, channel=channel)
                return None
            return RoomChange(ROLE_MODES[char], on, user=user)
        return RoomChange("ban", on, mask=ban_mask(argument))

    def ban_list(self, room) -> bytes:
        channel = "#" + room.name
        lines = [self.numeric(N.RPL_BANLIST, channel=channel, mask=ban.mask, by=ban.set_by,
                              at=int(ban.set_at)) for ban in self.service.room_bans(room)]
        lines.append(self.numeric(N.RPL_ENDOFBANLIST, channel=channel))
        return b"".join(lines)

    def render_room_changed(self, event):
        if fold(event.room.name) not in self.channels:
            return None
        return event.render_once("irc", lambda: mode_lines(self.mask_of(event.by), "#" + event.room.name,
                                                           event.changes, self.nick_of))

    def role_modes(self, room, user) -> bytes:
        """The server's MODE line giving a joining member the roles it holds (the founder's +o)."""
        letters = (("o" if self.service.is_operator(user, room) else "")
                   + ("v" if self.service.is_voiced(user, room) else ""))
        if not letters:
            return b""
        nicks = [self.nick_of(user)] * len(letters)
        return serialise("MODE", "#" + room.name, "+" + letters, *nicks, prefix=self.server)

    # user modes

    def user_mode(self, line):
        target = line.params[0]
        if fold(target) != fold(self.nick):
            self.online(target)  # 401 for nobody
            raise N.IRCError(N.ERR_USERSDONTMATCH)
        if len(line.params) == 1:
            return self.reply(N.RPL_UMODEIS, modes="+" + "".join(sorted(self.user_modes)))
        sign, changed, refused = "+", [], False
        for char in line.params[1]:
            if char in "+-":
                sign = char
            elif char not in USER_MODES:
                refused = True
            elif char == "o" and sign == "+":
                continue  # only OPER makes an operator
            elif (char in self.user_modes) != (sign == "+"):
                self.user_modes = self.user_modes | {char} if sign == "+" else self.user_modes - {char}
                self.factory.census.mode_changed(self, char, sign == "+")
                if char == "o":
                    self.service.make_server_operator(self.session, False)
                changed.append(sign + char)
        if refused:
            self.reply(N.ERR_UMODEUNKNOWNFLAG)
        if changed:
            self.send(serialise("MODE", self.nick, _joined_signs(changed), prefix=self.own_mask()))


def _joined_signs(changes: list[str]) -> str:
    """``["+i", "+w", "-o"]`` as ``+iw-o``."""
    text, sign = "", ""
    for change in changes:
        if change[0] != sign:
            sign = change[0]
            text += sign
        text += change[1]
    return text
