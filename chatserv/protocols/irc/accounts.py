"""Accounts on IRC: capability negotiation, SASL PLAIN, IRCv3 REGISTER, and NickServ.

An account is a chatserv user. Until a client logs in its nick is a guest's; a registered
account's name is not usable without its password (433 at registration, see README). A
guest that logs in later (NickServ IDENTIFY, SASL, REGISTER) becomes the account: its nick
changes to the account's name, it keeps its channels, and the others there see a NICK line.
"""

from __future__ import annotations

import base64
import binascii

from chatserv import errors
from chatserv.domain.login import Password, Vouched
from chatserv.model import fold
from chatserv.protocols.irc import numerics as N
from chatserv.protocols.irc.message import is_number, mask, serialise

CAPABILITIES = {
    "batch": "",
    "draft/account-registration": "before-connect,custom-account-name",
    "draft/chathistory": "",
    "echo-message": "",
    "labeled-response": "",
    "message-tags": "",
    "multi-prefix": "",
    "sasl": "PLAIN",
    "server-time": "",
    "userhost-in-names": "",
    "znc.in/playback": "",
}
SASL_CHUNK = 400  # bytes of base64 per AUTHENTICATE line (IRCv3 SASL)
SASL_MAX = 4 * SASL_CHUNK  # a PLAIN payload never needs more
NICKSERV_MASK = "NickServ!NickServ@services"
NICKSERV_HELP = (
    "NickServ keeps chatserv accounts (the same accounts as on every other chatserv port).",
    "IDENTIFY [account] <password>  -- log in; your nick becomes the account name",
    "REGISTER <password>            -- make your current nick an account, and log in",
)


class AccountsMixin:
    negotiating = False  # between CAP LS/REQ and CAP END, registration waits
    account = None  # the account a client logged in to before registration completed
    _sasl: str | None = None  # base64 received so far, once a mechanism was chosen
    _sasl_overflow = False  # the rest of a refused, too long payload is being skipped

    # CAP

    async def irc_CAP(self, line):
        subcommand = line.params[0].upper()
        who = self.nick or "*"
        if subcommand == "LS":
            self.negotiating = not self.registered
            with_values = is_number(line.param(1)) and int(line.param(1)) >= 302
            offered = " ".join(f"{name}={value}" if with_values and value else name
                               for name, value in CAPABILITIES.items())
            self.send(serialise("CAP", who, "LS", offered, prefix=self.server))
        elif subcommand == "LIST":
            self.send(serialise("CAP", who, "LIST", " ".join(sorted(self.caps)), prefix=self.server))
        elif subcommand == "REQ":
            self.negotiating = not self.registered
            wanted = line.param(1).split()
            if not wanted or any(name.lstrip("-") not in CAPABILITIES for name in wanted):
                return self.send(serialise("CAP", who, "NAK", line.param(1), prefix=self.server))
            self.caps = set(self.caps)
            for name in wanted:
                self.caps.discard(name[1:]) if name.startswith("-") else self.caps.add(name)
            self.tag_variant = ("server-time" in self.caps, "message-tags" in self.caps)
            self.render_key = ("irc", *self.tag_variant)
            self.send(serialise("CAP", who, "ACK", " ".join(wanted), prefix=self.server))
        elif subcommand == "END":
            self.negotiating = False
            await self.try_registration()
        else:
            raise N.IRCError(N.ERR_INVALIDCAPCMD, target=subcommand)

    # SASL PLAIN

    def has_account(self) -> bool:
        return self.account is not None or (self.session is not None and not self.session.user.guest)

    async def irc_AUTHENTICATE(self, line):
        data = line.params[0]
        if "sasl" not in self.caps:
            raise N.IRCError(N.ERR_SASLFAIL)
        if self.has_account():
            raise N.IRCError(N.ERR_SASLALREADY)
        if data == "*":
            self._sasl, self._sasl_overflow = None, False
            raise N.IRCError(N.ERR_SASLABORTED)
        if self._sasl_overflow:
            self._sasl_overflow = len(data) == SASL_CHUNK  # a shorter chunk ends the payload
            return None
        if len(data) > SASL_CHUNK:
            self._sasl = None
            raise N.IRCError(N.ERR_SASLTOOLONG)
        if self._sasl is None:
            if data.upper() != "PLAIN":
                self.reply(N.RPL_SASLMECHS)
                raise N.IRCError(N.ERR_SASLFAIL)
            self._sasl = ""
            return self.send(serialise("AUTHENTICATE", "+"))
        if data != "+":
            self._sasl += data
        if len(self._sasl) > SASL_MAX:
            # No PLAIN payload is that long: refused, and its remaining chunks are skipped
            # rather than read as mechanism names.
            self._sasl = None
            self._sasl_overflow = len(data) == SASL_CHUNK
            raise N.IRCError(N.ERR_SASLFAIL)
        if len(data) == SASL_CHUNK:
            return None  # more is coming
        payload, self._sasl = self._sasl, None
        try:
            authzid, authcid, password = base64.b64decode(payload, validate=True).decode("utf-8").split("\0")
        except (ValueError, binascii.Error):
            raise N.IRCError(N.ERR_SASLFAIL) from None
        if authzid and authcid and fold(authzid) != fold(authcid):
            return self._login_refused(N.ERR_SASLFAIL)  # one may not log in as another
        try:
            result = await self._log_in(Password(authcid or authzid, password))
        except errors.Busy as exc:  # nothing was checked: say why, and end the exchange (clients retry)
            self.domain_error(exc, "*", "AUTHENTICATE")
            raise N.IRCError(N.ERR_SASLFAIL) from None
        if result is None:
            return self._login_refused(N.ERR_SASLFAIL)
        await self.logged_in_as(result)
        self.reply(N.RPL_SASLSUCCESS)

    async def _log_in(self, credentials):
        """The service's one login path: before registration only the check (the account is
        taken at registration); after it, this connection's guest becomes the account, its
        channels and operator grants and all. None: wrong password, or locked out."""
        sink = self if self.registered else None
        guest = self.session.user if self.session is not None else None
        try:
            result = await self.service.log_in(credentials, sink, self.protocol_name, self.peer_host,
                                               guest_session=self.session, waiting=True)
        except (errors.BadCredentials, errors.RateLimited):
            return None
        if guest is not None and guest.id in self.factory.away:  # still away, now as the account
            self.factory.away[result.user.id] = self.factory.away.pop(guest.id)
        return result

    def _login_refused(self, numeric=None, notice: str = ""):
        if numeric is not None:
            self.reply(numeric)
        if notice:
            self.nickserv_says(notice)
        if self.login_failed():
            self.error_and_close("Too many failed logins")

    async def logged_in_as(self, result):
        """Show a login: before registration the account waits for it; after, the guest the
        service turned into the account goes by the account's name."""
        if self._closing:
            return  # the client left while its password was checked
        user = result.user
        if result.session is None:
            self.account = user
            shown = mask(self.nick or user.username, self.ident)
            self.reply(N.RPL_LOGGEDIN, mask=shown, account=user.username)
            return
        if self.nick != self.nick_of(user):
            self.show_own_nick(self.nick_of(user))
        self.reply(N.RPL_LOGGEDIN, mask=self.own_mask(), account=user.username)
        await self.logged_in(user, result.waiting)

    # IRCv3 REGISTER (draft/account-registration)

    async def irc_REGISTER(self, line):
        account, _email, password = line.params[:3]
        if account == "*":
            account = self.nick or ""
        if self.has_account():
            raise N.Fail("REGISTER", "ALREADY_AUTHENTICATED", account)
        if not password or password == "*":
            raise N.Fail("REGISTER", "UNACCEPTABLE_PASSWORD", account)
        user = await self._register(account, password, "REGISTER")
        self.send(serialise("REGISTER", "SUCCESS", user.username, "Account created", prefix=self.server))
        await self.logged_in_as(await self._log_in(Vouched(user)))

    async def _register(self, account: str, password: str, command: str):
        guest = self.session.user if self.session is not None else None
        try:
            self.service.validate_username(account)
            return await self.service.register(account, password, guest=guest, address=self.peer_host)
        except errors.InvalidUsername:
            raise N.Fail(command, "BAD_ACCOUNT_NAME", account) from None
        except errors.UsernameTaken:
            raise N.Fail(command, "ACCOUNT_EXISTS", account) from None

    # NickServ, for clients that know no SASL

    async def irc_NICKSERV(self, line):
        await self.nickserv(" ".join(line.params))

    def nickserv_says(self, text: str):
        self.send(serialise("NOTICE", self.nick, text, prefix=NICKSERV_MASK))

    async def nickserv(self, text: str):
        words = text.split()
        verb = words[0].upper() if words else "HELP"
        if verb in ("IDENTIFY", "REGISTER") and self.has_account():
            return self.nickserv_says(f"You are already logged in as {self.nick}")
        if verb == "IDENTIFY" and len(words) in (2, 3):
            account, password = (self.nick, words[1]) if len(words) == 2 else (words[1], words[2])
            result = await self._log_in(Password(account, password))
            if result is None:
                return self._login_refused(notice="Invalid account name or password")
            self.nickserv_says(f"You are now logged in as {result.user.username}")
            return await self.logged_in_as(result)
        if verb == "REGISTER" and len(words) in (2, 3):
            try:
                user = await self._register(self.nick, words[1], "NICKSERV")
            except N.Fail as failure:
                return self.nickserv_says(f"Cannot register {self.nick}: {failure.text}")
            self.nickserv_says(f"Account {user.username} created; you are logged in")
            return await self.logged_in_as(await self._log_in(Vouched(user)))
        for help_line in NICKSERV_HELP:
            self.nickserv_says(help_line)
