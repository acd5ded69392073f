"""Twisted's own IRC server (``twisted.words``), the baseline peer of the fan-out benchmark.

Any nick may log in with any password (the benchmark sends ``PASS x``); users and channels
are created on first use. Listens on 127.0.0.1 only.

    python bench/peers/twisted_words_server.py PORT
"""

from __future__ import annotations

import sys

from twisted.cred import checkers, credentials, portal
from twisted.internet import defer, reactor
from twisted.words import service
from zope.interface import implementer


@implementer(checkers.ICredentialsChecker)
class AnyPassword:
    """Accepts every username/password pair: the benchmark measures fan-out, not logins."""

    credentialInterfaces = (credentials.IUsernamePassword,)

    def requestAvatarId(self, creds):
        return defer.succeed(creds.username)


def main(port: int) -> None:
    realm = service.InMemoryWordsRealm("twisted-words-bench")
    realm.createUserOnRequest = True
    realm.createGroupOnRequest = True
    factory = service.IRCFactory(realm, portal.Portal(realm, [AnyPassword()]))
    reactor.listenTCP(port, factory, interface="127.0.0.1", backlog=1024)
    reactor.run()


if __name__ == "__main__":
    main(int(sys.argv[1]))
