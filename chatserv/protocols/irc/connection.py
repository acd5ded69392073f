"""The IRC connection: registration state machine, the command table, users and messages.

Channel commands live in ``channels.py``, MODE in ``modes.py``, accounts (CAP, SASL,
REGISTER, NickServ) in ``accounts.py``, nicks and USER in ``nicks.py``, history in
``history.py``, bouncer playback in ``playback.py``, labeled responses in ``labels.py``, OPER,
KILL and WALLOPS in ``operators.py``, WHO, WHOWAS and the server queries in ``queries.py``;
each is a mixin of ``IRCConnection``. A nick is the name a user goes by
(``ChatService.name_of``): a guest's name, an account's name or a nick the account took.
"""

from __future__ import annotations

import hmac
import itertools
import time
from typing import ClassVar

import attrs
from twisted.internet import defer, task

from chatserv import errors, events
from chatserv.bus import Subscription
from chatserv.domain.login import GuestName, Password, Vouched
from chatserv.limits import TokenBucket
from chatserv.model import fold
from chatserv.options import option
from chatserv.protocols.base import ChatConnection, ChatFactory
from chatserv.protocols.irc import numerics as N
from chatserv.protocols.irc.accounts import AccountsMixin
from chatserv.protocols.irc.channels import ChannelsMixin
from chatserv.protocols.irc.history import HistoryMixin, message_lines
from chatserv.protocols.irc.labels import LabelsMixin
from chatserv.protocols.irc.message import (
    HOST,
    IRCFramer,
    LineTooLong,
    parse,
    raw_line,
    serialise,
)
from chatserv.protocols.irc.modes import CHANNEL_MODES, PARAMETER_MODES, USER_MODES, ModesMixin
from chatserv.protocols.irc.modes import ISUPPORT as MODE_TOKENS
from chatserv.protocols.irc.nicks import USERLEN, NicksMixin
from chatserv.protocols.irc.operators import OperatorBook, OperatorsMixin, oper_entry
from chatserv.protocols.irc.playback import PLAYBACK, PlaybackMixin
from chatserv.protocols.irc.queries import Census, QueriesMixin
from chatserv.wire import ErrorTable

VERSION = "chatserv-0.1"
NO_CAPS = frozenset()  # what most clients have: shared, so it costs an idle connection nothing
INVISIBLE = frozenset("i")  # every client's user modes at registration
NICKSERV = "NickServ"
MOTD = (
    "Welcome to chatserv: one server, many chat protocols, one set of accounts and rooms.",
    "Log in with SASL PLAIN or PASS, or /msg NickServ IDENTIFY <account> <password>.",
    "Create an account with /msg NickServ REGISTER <password> (or REGISTER, IRCv3).",
)


# Domain failures that reach a command's reply (handlers check the usual cases first, to
# answer with the precise numeric); each numeric is filled with the command's first parameter.
ERRORS = ErrorTable({
    errors.RoomNotFound: N.ERR_NOSUCHCHANNEL,
    errors.NotFound: N.ERR_NOSUCHNICK,
    errors.AlreadyExists: N.ERR_NICKNAMEINUSE,
    errors.Blocked: N.ERR_CANTSENDTOUSER,
    errors.NotOperator: N.ERR_CHANOPRIVSNEEDED,
    errors.Denied: N.ERR_NOTONCHANNEL,
    errors.Banned: N.ERR_BANNEDFROMCHAN,
    errors.InviteOnly: N.ERR_INVITEONLYCHAN,
    errors.WrongKey: N.ERR_BADCHANNELKEY,
    errors.RoomFull: N.ERR_CHANNELISFULL,
    errors.CannotSend: N.ERR_CANNOTSENDTOCHAN,
    errors.NotOperator: N.ERR_CHANOPRIVSNEEDED,
    errors.InvalidKey: N.ERR_INVALIDKEY,
    errors.ListFull: N.ERR_BANLISTFULL,
    errors.BadCredentials: N.ERR_PASSWDMISMATCH,
    errors.NotLoggedIn: N.ERR_NOTREGISTERED,
    errors.TooManyRooms: N.ERR_TOOMANYCHANNELS,
    errors.Busy: N.RPL_TRYAGAIN,
    errors.ChatError: N.ERR_UNKNOWNERROR,
})


@attrs.frozen
class Command:
    handler: str
    min_params: int = 0
    before_registration: bool = False
    flood: bool = True  # counted against the client's flood bucket


COMMANDS = {
    "CAP": Command("irc_CAP", 1, True, flood=False),
    "AUTHENTICATE": Command("irc_AUTHENTICATE", 1, True, flood=False),
    "REGISTER": Command("irc_REGISTER", 3, True),
    "PASS": Command("irc_PASS", 1, True, flood=False),
    "NICK": Command("irc_NICK", 0, True),  # every room-mate hears a NICK: a storm is slowed down
    "USER": Command("irc_USER", 4, True, flood=False),
    "PING": Command("irc_PING", 1, True, flood=False),
    "PONG": Command("irc_PONG", 0, True, flood=False),
    "QUIT": Command("irc_QUIT", 0, True, flood=False),
    "PRIVMSG": Command("irc_PRIVMSG"),
    "NOTICE": Command("irc_NOTICE"),
    "TAGMSG": Command("irc_TAGMSG", 1),
    "NICKSERV": Command("irc_NICKSERV", 1),
    "NS": Command("irc_NICKSERV", 1),
    "JOIN": Command("irc_JOIN", 1),
    "PART": Command("irc_PART", 1),
    "LIST": Command("irc_LIST"),
    "NAMES": Command("irc_NAMES"),
    "TOPIC": Command("irc_TOPIC", 1),
    "WHO": Command("irc_WHO"),
    "WHOIS": Command("irc_WHOIS", 1),
    "ISON": Command("irc_ISON", 1),
    "USERHOST": Command("irc_USERHOST", 1),
    "AWAY": Command("irc_AWAY"),
    "KICK": Command("irc_KICK", 2),
    "MODE": Command("irc_MODE", 1),
    "MOTD": Command("irc_MOTD"),
    "CHATHISTORY": Command("irc_CHATHISTORY", 3),
    "INVITE": Command("irc_INVITE", 2),
    "OPER": Command("irc_OPER", 2),
    "KILL": Command("irc_KILL", 1),
    "WALLOPS": Command("irc_WALLOPS", 1),
    "WHOWAS": Command("irc_WHOWAS"),
    "LUSERS": Command("irc_LUSERS"),
    "VERSION": Command("irc_VERSION"),
    "TIME": Command("irc_TIME"),
    "INFO": Command("irc_INFO"),
}


MAX_TARGETS = 4  # PRIVMSG and NOTICE targets per command (ISUPPORT TARGMAX)
# Commands whose text is repaired rather than refused when it is not UTF-8: an old client can
# still register and leave.
REPAIRED_UTF8 = frozenset({"USER", "QUIT"})


class IRCConnection(AccountsMixin, ChannelsMixin, NicksMixin, HistoryMixin, PlaybackMixin, LabelsMixin,
                    ModesMixin, OperatorsMixin, QueriesMixin, ChatConnection):
    protocol_name = "irc"
    error_table = ERRORS
    # A room-mate's first login and last logout are JOIN and QUIT lines.
    subscribes = Subscription.DIRECT | Subscription.ROOM_PRESENCE

    # like ChatConnection: slots for what every client has, nothing made before it is needed
    __slots__ = ("nick", "user_given", "password", "registered", "caps", "tag_variant", "render_key",
                 "channels", "held", "seen", "_awaiting_pong", "_batches", "_flood", "ping_interval",
                 "ident", "realname", "user_modes")

    def __init__(self):
        super().__init__()
        self.nick: str | None = None
        self.user_given = False
        self.password: str | None = None
        self.registered = False
        self.caps: set[str] | frozenset = NO_CAPS  # a set of its own once the client asks for one
        self.tag_variant = (False, False)  # (server-time, message-tags)
        self.render_key = ("irc", False, False)  # ("irc", *tag_variant): one rendering per variant
        self.channels: dict = {}  # fold(room name) -> Room, as this client was told
        self.held: dict[int, list] = {}  # room id -> (message id, line) held while a replay is fetched
        self.seen: dict[int, int] = {}  # room id -> newest message id shown here
        self.user_modes: frozenset[str] = INVISIBLE  # changed by replacing it, so clients share it
        self._awaiting_pong = False
        self._batches = 0
        self._flood: TokenBucket | None = None
        self.ident = self.realname = ""  # NicksMixin's defaults, which the slots hide

    def make_framer(self):
        return IRCFramer()

    def connectionMade(self):
        super().connectionMade()
        self.ping_interval = self.factory.config.ping_interval

    @property
    def flood(self) -> TokenBucket:
        """The command bucket, made when first asked (a client that sends nothing needs none)."""
        if self._flood is None:
            config = self.factory.config
            self._flood = TokenBucket(self.clock, config.flood_rate, config.flood_burst)
        return self._flood

    @property
    def flood_delay(self) -> float:
        rate = self.factory.config.flood_rate
        return 1.0 / rate if rate else 0.0

    def connectionLost(self, reason=None):
        if self.session is not None:
            self.factory.away.pop(self.session.user.id, None)
        self.quit_reason = self.quit_reason or "Connection closed"
        super().connectionLost(reason)

    quit_reason = ""  # what others see in this client's QUIT

    def logout(self):
        self.remember_seen()
        self.remember_departure()
        if self.session is not None:
            session, self.session = self.session, None
            self.service.detach(session, reason=self.quit_reason)

    @property
    def server(self) -> str:
        return self.factory.server_name

    # writing

    def send(self, data: bytes):
        if not self.capture(data):
            self.write_raw(data)

    def numeric(self, numeric: N.Numeric, **fields) -> bytes:
        return raw_line(f":{self.server} {numeric.code} {self.nick or '*'} {numeric.params(**fields)}")

    def reply(self, numeric: N.Numeric, **fields):
        self.send(self.numeric(numeric, **fields))

    def error_and_close(self, text: str, quit_reason: str = ""):
        """ERROR and close; others see ``quit_reason`` (else ``text``) in the QUIT line."""
        self.quit_reason = quit_reason or text
        self.write_raw(serialise("ERROR", f"Closing Link: {self.server} ({text})"))
        self.logout()
        self.close()

    def too_slow(self):
        return serialise("ERROR", "Closing Link: SendQ exceeded")

    def frame_error(self, error):
        return self.numeric(N.ERR_INPUTTOOLONG).rstrip(b"\r\n")

    def internal_error(self):
        return self.numeric(N.ERR_UNKNOWNERROR, command="*", text="Internal error").rstrip(b"\r\n")

    # reading: one line, one command

    def handle(self, frame: bytes):
        try:
            line = parse(frame)
        except LineTooLong:
            return self.reply(N.ERR_INPUTTOOLONG)
        except ValueError:
            return self.reply(N.ERR_UNKNOWNERROR, command="*", text="Line contains a NUL byte")
        self._awaiting_pong = False
        if not line.command:
            return None
        label = line.tags.get("label") if "labeled-response" in self.caps else None
        if label:
            return defer.ensureDeferred(self.labeled(label, lambda: self._dispatch(line)))
        return self._dispatch(line)

    def _dispatch(self, line):
        if not line.valid_utf8 and line.command not in REPAIRED_UTF8:
            return self.send(serialise("FAIL", line.command, "INVALID_UTF8", N.FAIL_TEXTS["INVALID_UTF8"],
                                       prefix=self.server))
        command = COMMANDS.get(line.command)
        if not self.registered and (command is None or not command.before_registration):
            return self.reply(N.ERR_NOTREGISTERED)
        if command is None:
            return self.reply(N.ERR_UNKNOWNCOMMAND, command=line.command)
        if len(line.params) < command.min_params:
            return self.reply(N.ERR_NEEDMOREPARAMS, command=line.command)
        if command.flood and self.registered:
            return self._when_allowed(command, line)
        return self._run(command, line)

    def _when_allowed(self, command: Command, line):
        """Fake lag, as IRC servers do: a flooder's commands wait for the bucket, none is dropped."""
        if self.flood.allow():
            return self._run(command, line)
        return task.deferLater(self.clock, self.flood_delay, self._when_allowed, command, line)

    def _run(self, command: Command, line) -> defer.Deferred:
        return defer.ensureDeferred(self._answer(command, line))

    async def _answer(self, command: Command, line):
        try:
            result = getattr(self, command.handler)(line)
            if isinstance(result, defer.Deferred) or hasattr(result, "__await__"):
                await result
        except N.IRCError as exc:
            self.reply(exc.numeric, **exc.fields)
        except N.Fail as exc:
            self.send(serialise("FAIL", exc.command, exc.code, *exc.context, exc.text, prefix=self.server))
        except errors.ChatError as exc:
            self.domain_error(exc, line.param(0, "*"), line.command)

    def domain_error(self, exc: errors.ChatError, target: str, command: str):
        self.reply(self.error_table.reply(exc), target=target, command=command, text=exc.message)

    # registration

    def irc_PASS(self, line):
        if self.registered:
            raise N.IRCError(N.ERR_ALREADYREGISTERED)
        self.password = line.params[0]

    async def irc_NICK(self, line):
        nick = line.param(0)
        if not nick:
            raise N.IRCError(N.ERR_NONICKNAMEGIVEN)
        try:
            self.service.validate_username(nick)
        except errors.InvalidUsername:
            raise N.IRCError(N.ERR_ERRONEUSNICKNAME, target=nick) from None
        if self.registered:
            return self.change_nick(nick)
        self.nick = nick
        await self.try_registration()

    async def try_registration(self):
        """Registration completes once NICK and USER came and CAP/SASL negotiation ended.

        With ``--irc-password``, PASS is that password and nothing else (464 and ERROR
        without it); accounts log in with SASL or NickServ. Without it, PASS is the password
        of the account the nick names.
        """
        if self.registered or not self.nick or not self.user_given or self.negotiating:
            return
        user = self.account
        password, self.password = self.password, None  # kept no longer than registration needs it
        required = self.factory.config.password
        if required:
            if password is None or not hmac.compare_digest(password.encode(), required.encode()):
                self.reply(N.ERR_PASSWDREQUIRED if password is None else N.ERR_PASSWDMISMATCH)
                return self.error_and_close("Bad password")
            password = None
        if user is not None:
            credentials = Vouched(user)  # logged in with SASL or REGISTER
        elif password is not None and self.service.is_registered(self.nick):
            credentials = Password(self.nick, password)
        elif self.service.is_registered(self.nick):
            raise N.IRCError(N.ERR_NICKNAMEREGISTERED, target=self.nick)
        else:
            credentials = GuestName(self.nick)
        try:
            result = await self.log_in(credentials, waiting=True)
        except (errors.BadCredentials, errors.RateLimited):
            self.reply(N.ERR_PASSWDMISMATCH)
            return self.error_and_close("Bad password")
        except errors.Busy as exc:  # nothing was checked: say why, and let the client reconnect
            self.domain_error(exc, self.nick, "PASS")
            return self.error_and_close("Server busy, try again")
        except errors.UsernameTaken:
            raise N.IRCError(N.ERR_NICKNAMEINUSE, target=self.nick) from None
        if result.session is None:
            return None  # the client left meanwhile
        user = result.user
        self.registered = True
        self.nick = self._keep_nick(user)
        self.welcome()
        if not user.guest:
            await self.logged_in(user, result.waiting)

    def _keep_nick(self, user) -> str:
        """An account logged in with SASL or REGISTER keeps the nick it asked for when that is
        free (its own name, or nobody's); otherwise it goes by its account name. Connections of
        an account already online take the nick it goes by."""
        if user.guest or len(self.service.sessions_of(user)) > 1:
            return self.nick_of(user)
        if fold(self.nick) == fold(user.username):
            return user.username
        try:
            return self.service.rename(user, self.nick, origin=self.session)
        except errors.UsernameTaken:
            return user.username

    def logged_in_timeout(self) -> float:
        return self.ping_interval

    def welcome(self):
        lines = [
            self.numeric(N.RPL_WELCOME, network=self.factory.network, mask=self.own_mask()),
            self.numeric(N.RPL_YOURHOST, server=self.server, version=VERSION),
            self.numeric(N.RPL_CREATED, created=self.factory.started),
            self.numeric(N.RPL_MYINFO, server=self.server, version=VERSION, user_modes=USER_MODES,
                         channel_modes=CHANNEL_MODES, parameter_modes=PARAMETER_MODES),
        ]
        self.send(b"".join(lines + self.isupport_lines()))
        self.counted()
        self.irc_LUSERS(None)
        self.irc_MOTD(None)

    def isupport_lines(self) -> list[bytes]:
        limits = self.limits
        tokens = [
            "AWAYLEN=200", "CASEMAPPING=ascii", "CHANLIMIT=#:", "CHANNELLEN=51",
            "CHANTYPES=#", f"CHATHISTORY={limits.history}", "MSGREFTYPES=msgid,timestamp",
            f"NETWORK={self.factory.network}",
            "NICKLEN=32", f"TOPICLEN={limits.max_body}", "UTF8ONLY", f"USERLEN={USERLEN}",
            f"TARGMAX=PRIVMSG:{MAX_TARGETS},NOTICE:{MAX_TARGETS},TAGMSG:{MAX_TARGETS},JOIN:,PART:,NAMES:1,WHOIS:1,"
            "KICK:", "WHOX", *MODE_TOKENS,
        ]
        return [self.numeric(N.RPL_ISUPPORT, tokens=" ".join(tokens[start : start + 12]))
                for start in range(0, len(tokens), 12)]

    def irc_MOTD(self, line):
        lines = [self.numeric(N.RPL_MOTDSTART, server=self.server)]
        lines += [self.numeric(N.RPL_MOTD, line=text) for text in MOTD]
        lines.append(self.numeric(N.RPL_ENDOFMOTD))
        self.send(b"".join(lines))

    # liveness: the server pings an idle client, and lets it go if no answer comes

    def timed_out(self):
        if not self.registered:
            return self.error_and_close("Registration timed out")
        if self._awaiting_pong:
            return self.error_and_close("Ping timeout")
        self._awaiting_pong = True
        self.send(serialise("PING", self.server))
        self.deadline.arm(self.ping_interval)

    async def irc_PING(self, line):
        """PONG once the messages sent before the PING have landed, so a client can use PING to
        know its messages are stored and delivered, as with a server that handles them inline."""
        await self.settled()
        self.send(serialise("PONG", self.server, line.params[0], prefix=self.server))

    def irc_PONG(self, line):
        """Any line proves the client alive (see ``handle``)."""

    async def irc_QUIT(self, line):
        """Messages sent before land first (and count as seen), then the goodbye."""
        await self.settled()
        self.error_and_close(f"Quit: {line.param(0)}" if line.param(0) else "Quit")

    # users

    def irc_AWAY(self, line):
        text = line.param(0)[:200]
        if text:
            self.factory.away[self.user.id] = text
            self.reply(N.RPL_NOWAWAY)
        else:
            self.factory.away.pop(self.user.id, None)
            self.reply(N.RPL_UNAWAY)

    def online(self, nick: str):
        """The online user of that nick, else ERR_NOSUCHNICK."""
        try:
            user = self.service.user_or_guest(nick)
        except errors.UserNotFound:
            user = None
        if user is None or not self.service.is_online(user):
            raise N.IRCError(N.ERR_NOSUCHNICK, target=nick)
        return user

    def irc_ISON(self, line):
        nicks = " ".join(line.params).split()
        found = []
        for nick in nicks:
            try:
                found.append(self.nick_of(self.online(nick)))
            except N.IRCError:
                pass
        self.reply(N.RPL_ISON, nicks=" ".join(found))

    def irc_USERHOST(self, line):
        replies = []
        for nick in line.params[:5]:
            try:
                user = self.online(nick)
            except N.IRCError:
                continue
            away = "-" if user.id in self.factory.away else "+"
            replies.append(f"{self.nick_of(user)}={away}{self.user_info(user)[0]}@{HOST}")
        self.reply(N.RPL_USERHOST, replies=" ".join(replies))

    def irc_WHOIS(self, line):
        nick = line.params[-1]
        try:
            user = self.online(nick)
        except N.IRCError:
            self.reply(N.ERR_NOSUCHNICK, target=nick)
            return self.reply(N.RPL_ENDOFWHOIS, target=nick)
        name = self.nick_of(user)
        rooms = " ".join(self.prefixed(user, room) + "#" + room.name for room in self.service.rooms_of(user)
                         if self.sees_inside(room))
        protocols = self.service.protocols_of(user)
        ident, realname = self.user_info(user)
        lines = [self.numeric(N.RPL_WHOISUSER, target=name, ident=ident, host=HOST, realname=realname)]
        if rooms:
            lines.append(self.numeric(N.RPL_WHOISCHANNELS, target=name, channels=rooms))
        lines.append(self.numeric(N.RPL_WHOISSERVER, target=name, server=self.server,
                                  where="connected with " + ", ".join(protocols)))
        if self.service.is_server_operator(user):
            lines.append(self.numeric(N.RPL_WHOISOPERATOR, target=name))
        if not user.guest:
            lines.append(self.numeric(N.RPL_WHOISACCOUNT, target=name, account=user.username))
        if user.id in self.factory.away:
            lines.append(self.numeric(N.RPL_AWAY, target=name, text=self.factory.away[user.id]))
        lines.append(self.numeric(N.RPL_ENDOFWHOIS, target=name))
        self.send(b"".join(lines))

    # messages

    async def irc_PRIVMSG(self, line, kind="text"):
        quiet = kind == "notice"  # RFC: a NOTICE never draws an automatic reply
        if not line.params:
            return None if quiet else self.reply(N.ERR_NORECIPIENT, command=line.command)
        if len(line.params) < 2 or not line.params[1]:
            return None if quiet else self.reply(N.ERR_NOTEXTTOSEND)
        body = line.params[1]
        if body.startswith("\x01"):
            verb, _, text = body.strip("\x01").partition(" ")
            if verb.upper() != "ACTION" or not text:
                return None  # CTCP queries stay off the other ports' inboxes: never stored or relayed
            body, kind = text, "action"
        tags = line.client_tags or None
        targets, dropped = self.recipients(line, quiet)
        for target in targets:
            try:
                await self._send_one(target, body, kind, line.command, quiet, tags)
            except (N.IRCError, errors.ChatError) as exc:
                self.not_sent(exc, target, line.command, quiet)
        if dropped:
            self.reply(N.ERR_TOOMANYTARGETS, target=dropped)

    def recipients(self, line, quiet: bool) -> tuple[list[str], str]:
        """A PRIVMSG's (NOTICE's, TAGMSG's) targets, each once, and the first one past TARGMAX
        (which gets 407 once the others were sent to; a NOTICE's gets nothing)."""
        field = line.params[0]
        targets = [field] if "," not in field else list(
            {fold(t): t for t in reversed(field.split(",")) if t}.values())[::-1]
        if not targets or not targets[0]:
            if not quiet:
                self.reply(N.ERR_NORECIPIENT, command=line.command)
            return [], ""
        dropped = targets[MAX_TARGETS] if len(targets) > MAX_TARGETS and not quiet else ""
        return targets[:MAX_TARGETS], dropped

    def not_sent(self, exc: Exception, target: str, command: str, quiet: bool):
        """One target's error; the others are still sent to. A NOTICE draws none."""
        if quiet:
            return
        if isinstance(exc, N.IRCError):
            self.reply(exc.numeric, **exc.fields)
        else:
            self.domain_error(exc, target, command)

    def irc_NOTICE(self, line):
        return self.irc_PRIVMSG(line, kind="notice")

    def sendable_room(self, target: str):
        """The channel a message to ``target`` goes to, else 403 (none) or 404 (not on it, +n)."""
        room = self.channels.get(fold(target[1:]))
        if room is None:
            room = self.service_room(target)  # 403 when there is no such channel
            if self.service.room_info(room).no_external:
                raise N.IRCError(N.ERR_CANNOTSENDTOCHAN, target=target)
        return room

    async def _send_one(self, target: str, body: str, kind: str, command: str, quiet: bool, tags=None):
        """Send one PRIVMSG/NOTICE; the next command is read while the message is stored."""
        if target.startswith("#"):
            room = self.sendable_room(target)
            sending = self.service.send_room(self.user, room, body, kind, origin=self.session, tags=tags)
            target = "#" + room.name
        elif fold(target) == fold(NICKSERV):
            return await self.nickserv(body)
        elif fold(target) == PLAYBACK:
            return await self.playback(body)
        else:
            recipient = self.online_or_registered(target)
            sending = self.service.send_direct(self.user, recipient, body, kind, origin=self.session,
                                               tags=tags)
            target = self.nick_of(recipient)
            if recipient.id in self.factory.away and kind != "notice":
                self.reply(N.RPL_AWAY, target=target, text=self.factory.away[recipient.id])
        sending.addCallbacks(self._sent, self._not_sent, callbackArgs=(target, tags),
                             errbackArgs=(target, command, quiet))
        waiting = self.in_background(sending)
        if waiting is not None:
            await waiting

    def _sent(self, message, target: str, tags):
        if "echo-message" in self.caps:
            self.send(message_lines(message, target, self.tag_variant, prefix=self.own_mask(),
                                    client_tags=tags))

    def _not_sent(self, failure, target: str, command: str, quiet: bool):
        failure.trap(errors.ChatError)
        if not quiet:
            self.domain_error(failure.value, target, command)

    async def irc_TAGMSG(self, line):
        """Client-only tags on their own, relayed to clients with ``message-tags`` and never
        stored; ``+typing`` also reaches the other ports that show typing."""
        tags = line.client_tags
        if not tags:
            return
        targets, dropped = self.recipients(line, False)
        for target in targets:
            try:
                self._tags_to(target, tags)
            except (N.IRCError, errors.ChatError) as exc:
                self.not_sent(exc, target, line.command, False)
        if dropped:
            self.reply(N.ERR_TOOMANYTARGETS, target=dropped)

    def _tags_to(self, target: str, tags: dict):
        """One TAGMSG target; the relayed tags and the echo share a ``msgid`` of their own."""
        where = {"room": self.sendable_room(target)} if target.startswith("#") else {
            "to": self.online_or_registered(target)}
        tags = {**tags, "msgid": f"t{next(self.factory.tag_ids)}"}  # never a stored message's id
        state = tags.get("+typing")
        if state in ("active", "paused", "done"):
            self.service.typing(self.user, state == "active", origin=self.session, tags=tags, **where)
        else:
            self.service.tag_message(self.user, tags, origin=self.session, **where)
        if "echo-message" in self.caps:
            shown = "#" + where["room"].name if "room" in where else self.nick_of(where["to"])
            self.send(serialise("TAGMSG", shown, prefix=self.own_mask(), tags=tags))

    def online_or_registered(self, nick: str):
        """A direct message goes to an online nick, or waits in a registered user's inbox."""
        try:
            return self.service.user_or_guest(nick)
        except errors.UserNotFound:
            raise N.IRCError(N.ERR_NOSUCHNICK, target=nick) from None

    # events from the service, whichever port they started on

    def render(self, event):
        renderer = RENDERERS.get(type(event))
        return renderer(self, event) if renderer else None

    def _render_room_message(self, event):
        """The fan-out hot path. Lines for a room whose replay is being fetched wait for it
        (history.py)."""
        data = event.render_once(self.render_key, _room_message_lines, self, event)
        if self.held:
            held = self.held.get(event.room.id)
            if held is not None:
                held.append((event.message.id, data))
                return None
        return data

    def _render_direct_message(self, event):
        variant = self.tag_variant
        return event.render_once(self.render_key, lambda: message_lines(
            event.message, self.nick_of(event.recipient), variant, prefix=self.mask_of(event.sender),
            client_tags=event.tags if variant[1] else None))

    def _render_typing(self, event):
        return self._render_tags(event, event.tags or {"+typing": "active" if event.active else "done"})

    def _render_tagged(self, event):
        return self._render_tags(event, event.tags)

    def _render_tags(self, event, tags: dict):
        if "message-tags" not in self.caps:
            return None
        if event.room is not None:
            if fold(event.room.name) not in self.channels:
                return None
            target = "#" + event.room.name
        else:
            target = self.nick_of(event.recipient)
        return event.render_once("irc-tags", lambda: serialise(
            "TAGMSG", target, prefix=self.mask_of(event.user), tags=tags))

    def _render_presence(self, event):
        shared = [room for room in self.channels.values() if self.service.is_member(event.user, room)]
        if event.renamed_from is not None:  # where the guest was, a NICK line said it all
            shared = [room for room in shared if not self.service.is_member(event.renamed_from, room)]
        if not shared:
            return None
        if not event.online:
            return event.render_once("irc-quit", lambda: serialise(
                "QUIT", event.reason or "Quit", prefix=self.mask_of(event.user)))
        return b"".join(event.render_once(("irc-join", room.id), lambda room=room: serialise(
            "JOIN", "#" + room.name, prefix=self.mask_of(event.user)) + self.role_modes(room, event.user))
            for room in shared)

    def _render_goodbye(self, event):
        self.quit_reason = event.reason  # the session ends next: others see why (a KILL's reason)
        return serialise("ERROR", f"Closing Link: {self.server} ({event.reason})")


def _room_message_lines(connection: IRCConnection, event) -> bytes:
    variant, sender = connection.tag_variant, connection.mask_of(event.sender)
    return message_lines(event.message, "#" + event.room.name, variant, prefix=sender,
                         client_tags=event.tags if variant[1] else None)


RENDERERS = {
    events.RoomMessage: IRCConnection._render_room_message,
    events.DirectMessage: IRCConnection._render_direct_message,
    events.PresenceChanged: IRCConnection._render_presence,
    events.Typing: IRCConnection._render_typing,
    events.Tagged: IRCConnection._render_tagged,
    events.Renamed: NicksMixin.render_renamed,
    events.MembershipChanged: ChannelsMixin.render_membership,
    events.TopicChanged: ChannelsMixin.render_topic,
    events.RoomChanged: ModesMixin.render_room_changed,
    events.Invited: ChannelsMixin.render_invited,
    events.Kicked: IRCConnection._render_goodbye,
    events.ServerShutdown: IRCConnection._render_goodbye,
}


def irc_name(text: str) -> str:
    """Option coercion for the server's and the network's names: one word IRC can carry."""
    if not text or any(char.isspace() or char in ":," for char in text):
        raise ValueError(f"not a name IRC can carry in one word: {text!r}")
    return text


@attrs.frozen
class IRCConfig:
    """IRC's options (``--irc-*``): see ``chatserv.options`` to add one."""

    option_prefix: ClassVar[str] = "irc-"

    flood_rate: float = option(5.0, "IRC: commands per second once the burst is spent (0: no limit)")
    flood_burst: int = option(20, "IRC: commands a client may send at once")
    ping_interval: float = option(120.0, "IRC: idle seconds before a PING, and to answer it")
    server_name: str = option("chatserv", "IRC: the server's name in prefixes and replies", coerce=irc_name)
    network: str = option("chatserv", "IRC: the network's name (NETWORK in 005, the welcome)",
                          coerce=irc_name)
    password: str | None = option(None, "IRC: connection password every client must send with PASS "
                                        "(accounts then log in with SASL or NickServ); none by default")
    opers: tuple = option((), "IRC: a server operator, NAME:PASSWORD or NAME:<argon2 hash> (checked "
                              "against argon2 hashes)", name="irc-oper", coerce=oper_entry, repeat=True)


class IRCFactory(ChatFactory):
    protocol = IRCConnection
    config_class = IRCConfig
    version = VERSION

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.away: dict[int, str] = {}  # user id -> away message, while they are online here
        self.tag_ids = itertools.count(1)  # msgids of TAGMSGs, which are never stored
        self.census = Census()
        self.operators = OperatorBook(self.service.hasher, self.service.throttle, self.config.opers)
        self.started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.clock.seconds()))
        self.server_name = self.config.server_name
        self.network = self.config.network
