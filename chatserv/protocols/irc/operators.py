"""Server operators: OPER against ``--irc-oper``, then KILL, WALLOPS and any room's operator rights.

Operators are declared with ``--irc-oper NAME:PASSWORD`` (repeatable). The password is
hashed with argon2 at start and only the hash is kept; ``NAME:$argon2id$...`` gives the
hash itself, so no password need appear on a command line. An operator is a server
operator for as long as the connection lasts (or until ``MODE nick -o``).
"""

from __future__ import annotations

from twisted.internet.defer import gatherResults

from chatserv.protocols.irc import numerics as N
from chatserv.protocols.irc.message import serialise

HASHED = "$argon2"


def oper_entry(value: str) -> tuple[str, str]:
    """``NAME:PASSWORD`` (or ``NAME:<argon2 hash>``) from the command line."""
    name, colon, secret = value.partition(":")
    if not colon or not name or not secret or " " in name:
        raise ValueError(f"wants NAME:PASSWORD, not {value!r}")
    return name, secret


class OperatorBook:
    """The operators' names and argon2 hashes of their passwords. Checks go through the
    service's login throttle, as account logins do (``oper:<name>`` is no account's name)."""

    def __init__(self, hasher, throttle, entries):
        self._hasher = hasher
        self._throttle = throttle
        self._verifiers: dict[str, str] = {}
        hashing = []
        for name, secret in entries:
            if secret.startswith(HASHED):
                self._verifiers[name] = secret
            else:
                hashing.append(hasher.make_verifier(secret).addCallback(
                    lambda verifier, name=name: self._verifiers.__setitem__(name, verifier)))
        self._ready = gatherResults(hashing).addCallback(lambda _: None)

    async def check(self, name: str, password: str, address: str) -> bool | None:
        """None: no operator of that name; else whether the password is theirs.

        RateLimited or Busy when the throttle refuses the check.
        """
        await self._ready
        verifier = self._verifiers.get(name)
        with self._throttle.attempt(f"oper:{name}", address, account=verifier is not None) as attempt:
            matched = await self._hasher.check(verifier, password)  # as slow for an unknown name
            attempt.checked(matched)
        return None if verifier is None else matched


class OperatorsMixin:
    async def irc_OPER(self, line):
        name, password = line.params[:2]
        matched = await self.factory.operators.check(name, password, self.peer_host)
        if not matched:
            return self._login_refused(N.ERR_NOOPERHOST if matched is None else N.ERR_PASSWDMISMATCH)
        self.service.make_server_operator(self.session)
        self.reply(N.RPL_YOUREOPER)
        if "o" not in self.user_modes:
            self.user_modes = self.user_modes | {"o"}
            self.factory.census.mode_changed(self, "o", True)
            self.send(serialise("MODE", self.nick, "+o", prefix=self.own_mask()))

    def need_server_operator(self):
        if not self.service.is_server_operator(self.user):
            raise N.IRCError(N.ERR_NOPRIVILEGES)

    def irc_KILL(self, line):
        """KILL <nick> <reason>: every session of that user ends, on every port."""
        self.need_server_operator()
        user = self.online(line.params[0])
        self.service.end_sessions(self.user, user, f"Killed ({self.nick} ({line.param(1) or self.nick}))")

    def irc_WALLOPS(self, line):
        """WALLOPS <text>: to every IRC client with user mode +w."""
        self.need_server_operator()
        data = serialise("WALLOPS", line.params[0], prefix=self.own_mask())
        for connection in list(self.factory.tracker.connections):
            if connection.protocol_name == self.protocol_name and "w" in connection.user_modes:
                connection.send(data)
