"""The IRC connection: registration state machine, the command table, users and messages.

Channel commands live in ``channels.py``, accounts (CAP, SASL, REGISTER, NickServ) in
``accounts.py``, history in ``history.py``; each is a mixin of ``IRCConnection``. A nick is
a chatserv username: an account's name once logged in, else a guest's.
"""

from __future__ import annotations

import time

import attrs
from twisted.internet import defer, task

from chatserv import errors, events
from chatserv.limits import TokenBucket
from chatserv.model import fold
from chatserv.protocols.base import ChatConnection, ChatFactory, ErrorTable
from chatserv.protocols.irc import numerics as N
from chatserv.protocols.irc.accounts import AccountsMixin
from chatserv.protocols.irc.channels import ChannelsMixin
from chatserv.protocols.irc.history import HistoryMixin, message_lines
from chatserv.protocols.irc.message import (
    HOST,
    SERVER,
    IRCFramer,
    LineTooLong,
    mask,
    parse,
    raw_line,
    serialise,
)

VERSION = "chatserv-0.1"
NO_CAPS = frozenset()  # what most clients have: shared, so it costs an idle connection nothing
NICKSERV = "NickServ"
MOTD = (
    "Welcome to chatserv: one server, many chat protocols, one set of accounts and rooms.",
    "Log in with SASL PLAIN or PASS, or /msg NickServ IDENTIFY <account> <password>.",
    "Create an account with /msg NickServ REGISTER <password> (or REGISTER, IRCv3).",
)


# Domain failures that reach a command's reply (handlers check the usual cases first, to
# answer with the precise numeric); each numeric is filled with the command's first parameter.
ERRORS = ErrorTable({
    errors.NotFound: N.ERR_NOSUCHNICK,
    errors.AlreadyExists: N.ERR_NICKNAMEINUSE,
    errors.Blocked: N.ERR_BLOCKED,
    errors.Denied: N.ERR_NOTONCHANNEL,
    errors.BadCredentials: N.ERR_PASSWDMISMATCH,
    errors.NotLoggedIn: N.ERR_NOTREGISTERED,
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
    "NICK": Command("irc_NICK", 0, True, flood=False),
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
}


class IRCConnection(AccountsMixin, ChannelsMixin, HistoryMixin, ChatConnection):
    protocol_name = "irc"
    error_table = ERRORS
    watches_room_presence = True  # a room-mate's first login and last logout are JOIN and QUIT lines

    # like ChatConnection: slots for what every client has, nothing made before it is needed
    __slots__ = ("nick", "user_given", "password", "registered", "caps", "tag_variant", "render_key",
                 "channels", "_awaiting_pong", "_batches", "_flood", "ping_interval")

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
        self._awaiting_pong = False
        self._batches = 0
        self._flood: TokenBucket | None = None

    def make_framer(self):
        return IRCFramer()

    def connectionMade(self):
        super().connectionMade()
        self.ping_interval = self.factory.options.get("irc-ping-interval", self.limits.idle_timeout)

    @property
    def flood(self) -> TokenBucket:
        """The command bucket, made when first asked (a client that sends nothing needs none)."""
        if self._flood is None:
            options = self.factory.options
            self._flood = TokenBucket(self.clock, options.get("irc-flood-rate", 0),
                                      options.get("irc-flood-burst", 1))
        return self._flood

    @property
    def flood_delay(self) -> float:
        rate = self.factory.options.get("irc-flood-rate", 0)
        return 1.0 / rate if rate else 0.0

    def connectionLost(self, reason=None):
        if self.session is not None:
            self.factory.away.pop(self.session.user.id, None)
        super().connectionLost(reason)

    # writing

    def send(self, data: bytes):
        self.write_raw(data)

    def numeric(self, numeric: N.Numeric, **fields) -> bytes:
        return raw_line(f":{SERVER} {numeric.code} {self.nick or '*'} {numeric.params(**fields)}")

    def reply(self, numeric: N.Numeric, **fields):
        self.send(self.numeric(numeric, **fields))

    def error_and_close(self, text: str):
        self.send(serialise("ERROR", f"Closing Link: {SERVER} ({text})"))
        self.logout()
        self.close()

    def write_raw(self, data: bytes):
        if (self._write_paused and not self._closing
                and self._queued_bytes + len(data) > self.limits.send_queue):
            self.transport.write(serialise("ERROR", "Closing Link: SendQ exceeded"))
        super().write_raw(data)

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
            self.send(serialise("FAIL", exc.command, exc.code, *exc.context, exc.text, prefix=SERVER))
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
        except errors.Invalid:
            raise N.IRCError(N.ERR_ERRONEUSNICKNAME, target=nick) from None
        if not self.registered:
            self.nick = nick
            await self.try_registration()
        elif fold(nick) != fold(self.nick):
            raise N.IRCError(N.ERR_NICKLOCKED)

    async def irc_USER(self, line):
        if self.registered:
            raise N.IRCError(N.ERR_ALREADYREGISTERED)
        self.user_given = True
        await self.try_registration()

    async def try_registration(self):
        """Registration completes once NICK and USER came and CAP/SASL negotiation ended."""
        if self.registered or not self.nick or not self.user_given or self.negotiating:
            return
        user = self.account
        password, self.password = self.password, None  # kept no longer than registration needs it
        if user is None and password is not None and self.service.is_registered(self.nick):
            try:
                user = await self.service.authenticate(self.nick, password, self.peer_host)
            except (errors.BadCredentials, errors.RateLimited):
                self.reply(N.ERR_PASSWDMISMATCH)
                return self.error_and_close("Bad password")
            except errors.Busy as exc:  # nothing was checked: say why, and let the client reconnect
                self.domain_error(exc, self.nick, "PASS")
                return self.error_and_close("Server busy, try again")
        if user is None:
            if self.service.is_registered(self.nick):
                raise N.IRCError(N.ERR_NICKNAMEREGISTERED, target=self.nick)
            try:
                user = self.service.guest(self.nick)
            except errors.AlreadyExists:
                raise N.IRCError(N.ERR_NICKNAMEINUSE, target=self.nick) from None
        self.login(user)
        self.registered = True
        self.nick = user.username
        self.welcome()
        if not user.guest:
            await self.logged_in(user)

    def login(self, user, **options):
        session = super().login(user, **options)
        self.deadline.arm(self.ping_interval)
        return session

    def welcome(self):
        limits = self.limits
        tokens = [
            "AWAYLEN=200", "CASEMAPPING=ascii", "CHANLIMIT=#:", "CHANMODES=,,,nt", "CHANNELLEN=51",
            "CHANTYPES=#", f"CHATHISTORY={limits.history}", "MSGREFTYPES=msgid,timestamp", "NETWORK=chatserv",
            "NICKLEN=32", "PREFIX=(o)@", f"TOPICLEN={limits.max_body}", "UTF8ONLY",
            "TARGMAX=PRIVMSG:4,NOTICE:4,JOIN:,PART:,NAMES:1,WHOIS:1",
        ]
        lines = [
            self.numeric(N.RPL_WELCOME, network="chatserv", nick=mask(self.nick)),
            self.numeric(N.RPL_YOURHOST, server=SERVER, version=VERSION),
            self.numeric(N.RPL_CREATED, created=self.factory.started),
            self.numeric(N.RPL_MYINFO, server=SERVER, version=VERSION),
        ]
        for start in range(0, len(tokens), 12):
            lines.append(self.numeric(N.RPL_ISUPPORT, tokens=" ".join(tokens[start : start + 12])))
        self.send(b"".join(lines))
        self.irc_MOTD(None)

    def irc_MOTD(self, line):
        lines = [self.numeric(N.RPL_MOTDSTART, server=SERVER)]
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
        self.send(serialise("PING", SERVER))
        self.deadline.arm(self.ping_interval)

    async def irc_PING(self, line):
        """PONG once the messages sent before the PING have landed, so a client can use PING to
        know its messages are stored and delivered, as with a server that handles them inline."""
        await self.settled()
        self.send(serialise("PONG", SERVER, line.params[0], prefix=SERVER))

    def irc_PONG(self, line):
        """Any line proves the client alive (see ``handle``)."""

    def irc_QUIT(self, line):
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
        except errors.NotFound:
            user = None
        if user is None or not self.service.is_online(user):
            raise N.IRCError(N.ERR_NOSUCHNICK, target=nick)
        return user

    def irc_ISON(self, line):
        nicks = " ".join(line.params).split()
        found = []
        for nick in nicks:
            try:
                found.append(self.online(nick).username)
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
            replies.append(f"{user.username}={away}{user.username}@{HOST}")
        self.reply(N.RPL_USERHOST, replies=" ".join(replies))

    def irc_WHOIS(self, line):
        nick = line.params[-1]
        try:
            user = self.online(nick)
        except N.IRCError:
            self.reply(N.ERR_NOSUCHNICK, target=nick)
            return self.reply(N.RPL_ENDOFWHOIS, target=nick)
        name = user.username
        rooms = " ".join(self.prefixed(user, room) + "#" + room.name for room in self.service.rooms_of(user))
        protocols = sorted({s.protocol for s in self.service.sessions_of(user)})
        lines = [self.numeric(N.RPL_WHOISUSER, target=name, host=HOST)]
        if rooms:
            lines.append(self.numeric(N.RPL_WHOISCHANNELS, target=name, channels=rooms))
        lines.append(self.numeric(N.RPL_WHOISSERVER, target=name, server=SERVER,
                                  where="connected with " + ", ".join(protocols)))
        if not user.guest:
            lines.append(self.numeric(N.RPL_WHOISACCOUNT, target=name, account=name))
        if user.id in self.factory.away:
            lines.append(self.numeric(N.RPL_AWAY, target=name, text=self.factory.away[user.id]))
        lines.append(self.numeric(N.RPL_ENDOFWHOIS, target=name))
        self.send(b"".join(lines))

    def user_mode(self, line):
        if fold(line.params[0]) != fold(self.nick):
            raise N.IRCError(N.ERR_USERSDONTMATCH)
        if len(line.params) == 1:
            return self.reply(N.RPL_UMODEIS, modes="+i")
        if any(char not in "+-iw" for char in line.params[1]):
            raise N.IRCError(N.ERR_UMODEUNKNOWNFLAG)
        # i and w are how everyone is here already: nothing changes.

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
        for target in line.params[0].split(",")[:4]:
            try:
                await self._send_one(target, body, kind, line.command, quiet)
            except (N.IRCError, errors.ChatError):
                if not quiet:
                    raise

    def irc_NOTICE(self, line):
        return self.irc_PRIVMSG(line, kind="notice")

    async def _send_one(self, target: str, body: str, kind: str, command: str, quiet: bool):
        """Send one PRIVMSG/NOTICE; the next command is read while the message is stored."""
        if target.startswith("#"):
            room = self.channels.get(fold(target[1:]))
            if room is None:
                self.service_room(target)  # 403 when there is no such channel
                raise N.IRCError(N.ERR_CANNOTSENDTOCHAN, target=target)
            sending = self.service.send_room(self.user, room, body, kind, origin=self.session)
            target = "#" + room.name
        elif fold(target) == fold(NICKSERV):
            return await self.nickserv(body)
        else:
            recipient = self.online_or_registered(target)
            sending = self.service.send_direct(self.user, recipient, body, kind, origin=self.session)
            target = recipient.username
            if recipient.id in self.factory.away and kind != "notice":
                self.reply(N.RPL_AWAY, target=target, text=self.factory.away[recipient.id])
        sending.addCallbacks(self._sent, self._not_sent, callbackArgs=(target,),
                             errbackArgs=(target, command, quiet))
        waiting = self.in_background(sending)
        if waiting is not None:
            await waiting

    def _sent(self, message, target: str):
        if "echo-message" in self.caps:
            self.send(message_lines(message, target, self.tag_variant))

    def _not_sent(self, failure, target: str, command: str, quiet: bool):
        failure.trap(errors.ChatError)
        if not quiet:
            self.domain_error(failure.value, target, command)

    def irc_TAGMSG(self, line):
        """IRCv3 typing notifications (``+typing``) go to the room or user; other tags go nowhere."""
        state = line.tags.get("+typing")
        if state not in ("active", "paused", "done"):
            return
        target = line.params[0]
        try:
            if target.startswith("#"):
                self.service.typing(self.user, state == "active", room=target[1:], origin=self.session)
            else:
                self.service.typing(self.user, state == "active", to=target, origin=self.session)
        except errors.ChatError:
            pass  # like a NOTICE, a typing notification draws no error reply

    def online_or_registered(self, nick: str):
        """A direct message goes to an online nick, or waits in a registered user's inbox."""
        try:
            return self.service.user_or_guest(nick)
        except errors.NotFound:
            raise N.IRCError(N.ERR_NOSUCHNICK, target=nick) from None

    # events from the service, whichever port they started on

    def render(self, event):
        renderer = RENDERERS.get(type(event))
        return renderer(self, event) if renderer else None

    def _render_room_message(self, event):
        variant = self.tag_variant
        return event.render_once(self.render_key,
                                 lambda: message_lines(event.message, "#" + event.room.name, variant))

    def _render_direct_message(self, event):
        variant = self.tag_variant
        return event.render_once(self.render_key,
                                 lambda: message_lines(event.message, event.recipient.username, variant))

    def _render_typing(self, event):
        if "message-tags" not in self.caps:
            return None
        target = "#" + event.room.name if event.room is not None else event.recipient.username
        state = "active" if event.active else "done"
        return event.render_once("irc-typing", lambda: serialise(
            "TAGMSG", target, prefix=mask(event.user.username), tags={"+typing": state}))

    def _render_presence(self, event):
        shared = [room for room in self.channels.values() if event.user.id in room.members]
        if not shared:
            return None
        prefix = mask(event.user.username)
        if not event.online:
            return event.render_once("irc-quit", lambda: serialise("QUIT", "Quit", prefix=prefix))
        return b"".join(event.render_once(("irc-join", room.id),
                                          lambda room=room: serialise("JOIN", "#" + room.name, prefix=prefix))
                        for room in shared)

    def _render_goodbye(self, event):
        return serialise("ERROR", f"Closing Link: {SERVER} ({event.reason})")


RENDERERS = {
    events.RoomMessage: IRCConnection._render_room_message,
    events.DirectMessage: IRCConnection._render_direct_message,
    events.PresenceChanged: IRCConnection._render_presence,
    events.Typing: IRCConnection._render_typing,
    events.MembershipChanged: ChannelsMixin.render_membership,
    events.TopicChanged: ChannelsMixin.render_topic,
    events.OperatorChanged: ChannelsMixin.render_operator,
    events.Kicked: IRCConnection._render_goodbye,
    events.ServerShutdown: IRCConnection._render_goodbye,
}


class IRCFactory(ChatFactory):
    protocol = IRCConnection

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.away: dict[int, str] = {}  # user id -> away message, while they are online here
        self.topic_open: set[int] = set()  # rooms set -t: any member may change the topic
        self.started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.clock.seconds()))
