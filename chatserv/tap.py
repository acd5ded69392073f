"""``twistd chatserv``: options, and the service tree they build.

Every port is a Twisted endpoint string (``tcp:5001``, ``ssl:6697:privateKey=key.pem``) or
``none``. The tree stops in reverse order: ports stop listening, every connection says
goodbye on its own wire, then the service closes the store after its last write.
"""

from __future__ import annotations

import atexit
import os
import sys

import attrs
from twisted.application import service
from twisted.internet import endpoints
from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.reflect import namedAny

from chatserv.bans import BanFile
from chatserv.credentials import HashCost, Hasher, HashingThreads
from chatserv.limits import Limits
from chatserv.protocols.base import ConnectionTracker
from chatserv.protocols.salted import DEFAULT_LOGIN_ATTEMPTS, check_version
from chatserv.service import ChatService
from chatserv.store import open_store
from chatserv.web.proxy import trusted_proxies

log = Logger()


@attrs.frozen
class Port:
    option: str
    default: str
    factory: str  # dotted name of a callable (service, tracker, limits, clock, options) -> Factory
    description: str


PORTS = [
    Port("skype", "tcp:5001", "chatserv.protocols.skype.SkypeFactory", "seed 000, line form"),
    Port("skype-framed", "tcp:4000", "chatserv.protocols.skype.FramedSkypeFactory",
         "seed 000, 10-digit length-prefixed form (the C++ client)"),
    Port("chatroom", "tcp:6789", "chatserv.protocols.chatroom.ChatroomFactory",
         "seed 001 chat-room, JSON lines and key:value lines"),
    Port("salted", "tcp:5050", "chatserv.protocols.salted.SaltedFactory", "seed 002, salted JSON chat"),
    Port("rooms", "tcp:4444", "chatserv.protocols.rooms.RoomsFactory",
         "seed 003, Python-literal requests (the CS494 client)"),
    Port("irc", "tcp:6667", "chatserv.protocols.irc.IRCFactory",
         "IRC (RFC 1459/2812, IRCv3 basics): seed 003's rooms and inbox for IRC clients"),
    Port("web", "tcp:5000", "chatserv.web.WebSite", "seed 004, REST and Socket.IO"),
]


# Connects the kernel holds until the reactor accepts them. Twisted's default, 50, overflows
# when thousands of clients connect at once: the kernel then drops their SYNs and each one
# waits a second or more to retry. An endpoint string's own ``backlog=`` wins.
LISTEN_BACKLOG = 1024
_TAKES_BACKLOG = ("tcp", "tcp6", "ssl", "unix")


def with_backlog(endpoint_text: str) -> str:
    """The endpoint string, with ``backlog=LISTEN_BACKLOG`` unless it names a backlog itself."""
    kind = endpoint_text.split(":", 1)[0].lower()
    if kind not in _TAKES_BACKLOG or "backlog=" in endpoint_text:
        return endpoint_text
    return f"{endpoint_text}:backlog={LISTEN_BACKLOG}"


def _option_name(field: str) -> str:
    return field.replace("_", "-")


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = "chatserv: one daemon serving several chat protocols over one service and one store."

    optParameters = (
        [[p.option, None, p.default, f"{p.description}: endpoint, or 'none'"] for p in PORTS]
        + [
            ["db", None, "chatserv.sqlite3", "SQLite file path, or 'memory' for an in-memory store"],
            ["argon2-time-cost", None, HashCost().time_cost, "argon2id passes", int],
            ["argon2-memory-cost", None, HashCost().memory_cost, "argon2id memory (KiB)", int],
            ["argon2-parallelism", None, HashCost().parallelism, "argon2id lanes", int],
            ["shutdown-grace", None, 2.0, "seconds connections get to close at shutdown", float],
            ["ban-file", None, None, "IP ban list, one address a line, applied while running"],
            ["ban-file-interval", None, 2.0, "seconds between looks at --ban-file", float],
            ["salted-min-version", None, "", "seed 002: lowest client version served (empty: any)",
             check_version],
            ["salted-login-attempts", None, DEFAULT_LOGIN_ATTEMPTS, "seed 002: failed logins before close",
             int],
            ["web-session-ttl", None, 3600.0, "seed 004: seconds a REST session ID lives unused", float],
            ["web-max-body", None, 65536, "seed 004: bytes in one HTTP body or WebSocket message", int],
            ["web-header-timeout", None, 10.0,
             "seed 004: seconds for a request's headers to arrive, however slowly they trickle", float],
            ["web-request-timeout", None, 30.0, "seed 004: seconds for a whole request (body too) to arrive",
             float],
            ["web-ping-interval", None, 25.0, "seed 004: seconds between Engine.IO pings", float],
            ["web-ping-timeout", None, 20.0, "seed 004: seconds a client has to answer a ping", float],
            ["web-sessions-per-user", None, 10,
             "seed 004: session IDs one user may hold; a login beyond ends the oldest (0: no cap)", int],
            ["web-trusted-proxies", None, "", "seed 004: reverse proxies (addresses or networks, comma-"
             "separated) whose X-Forwarded-For names the client", trusted_proxies],
            ["alive-timeout", None, 60.0, "seed 001: seconds without a request before a login ends", float],
            ["chatroom-push-timeout", None, 5.0, "seed 001: seconds to connect to a client, to answer",
             float],
            ["chatroom-push-limit", None, 32, "seed 001: outbound pushes at once", int],
            ["chatroom-push-backlog", None, 10000, "seed 001: pushes waiting before more are dropped", int],
            ["chatroom-consent-timeout", None, 30.0, "seed 001: seconds a user has to consent to `address`",
             float],
            ["irc-flood-rate", None, 5.0, "IRC: commands per second once the burst is spent (0: no limit)",
             float],
            ["irc-flood-burst", None, 20, "IRC: commands a client may send at once", int],
            ["irc-ping-interval", None, 120.0, "IRC: idle seconds before a PING, and to answer it", float],
            ["irc-server-name", None, "chatserv", "IRC: the server's name in prefixes and replies"],
            ["irc-network", None, "chatserv", "IRC: the network's name (NETWORK in 005, the welcome)"],
            ["irc-password", None, None, "IRC: connection password every client must send with PASS "
             "(accounts then log in with SASL or NickServ); none by default"],
        ]
        + [
            [_option_name(f.name), None, f.default,
             f.metadata.get("help", f"limit: {f.name.replace('_', ' ')}"), type(f.default)]
            for f in attrs.fields(Limits)
        ]
    )

    def limits(self) -> Limits:
        return Limits(**{f.name: self[_option_name(f.name)] for f in attrs.fields(Limits)})

    def hash_cost(self) -> HashCost:
        return HashCost(self["argon2-time-cost"], self["argon2-memory-cost"], self["argon2-parallelism"])


def _exit_failed():
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def exit_status_failed():
    """Make the process end with status 1, once twistd has finished its own shutdown (services
    stopped, pidfile removed, log closed), so a supervisor sees the failure. twistd has no way
    to set its exit status (Twisted issue 11335): an exit handler ends the process instead."""
    atexit.unregister(_exit_failed)
    atexit.register(_exit_failed)


def stop_failed(reactor, on_failure=None) -> None:
    """Stop a daemon that cannot go on (goodbyes said, queued writes finished), after
    ``on_failure`` (twistd: exit_status_failed)."""
    if on_failure is not None:
        on_failure()
    if not reactor.running:
        reactor.callWhenRunning(reactor.stop)
        return
    try:
        reactor.stop()
    except ReactorNotRunning:
        pass  # stopping already


class PortService(service.Service):
    """Listens on one endpoint once the chat service has loaded its store."""

    def __init__(self, chat: ChatService, spec: Port, endpoint_text: str, factory, reactor,
                 on_failure=None):
        self.chat = chat
        self.spec = spec
        self.endpoint = endpoints.serverFromString(reactor, with_backlog(endpoint_text))
        self.factory = factory
        self.reactor = reactor
        self.on_failure = on_failure  # called when the port cannot listen, before the daemon stops
        self.port = None
        self.listening = None

    def startService(self):
        super().startService()
        self.listening = self.chat.when_ready()
        self.listening.addCallback(lambda _: self.endpoint.listen(self.factory))
        self.listening.addCallbacks(self._listening, self._failed)

    def _listening(self, port):
        self.port = port
        return port

    def _failed(self, failure):
        log.critical("chatserv {option}: cannot listen: {why}", option=self.spec.option,
                     why=failure.getErrorMessage())
        # A daemon missing one of its ports is not what was asked for: stop it.
        stop_failed(self.reactor, self.on_failure)

    def stopService(self):
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None


def _store_broke(_, reactor, on_failure) -> None:
    log.critical("chatserv: the store can no longer write: stopping, so that a supervisor restarts it")
    stop_failed(reactor, on_failure)


def build(options: Options, reactor, on_failure=None) -> tuple[service.MultiService, ChatService, dict]:
    """The whole daemon as a service tree; also returns the chat service and port services.

    ``on_failure``: called if a port cannot listen or the store can no longer write (the daemon
    then stops).
    """
    root = service.MultiService()
    limits = options.limits()
    store = open_store(options["db"], reactor)
    store.when_broken().addCallback(_store_broke, reactor, on_failure)
    hashing = HashingThreads(limits.hash_threads)
    hashing.setServiceParent(root)  # its own threads, not the reactor's shared pool
    hasher = Hasher(reactor, hashing.pool, options.hash_cost(), limit=hashing.size + limits.hash_queue)
    chat = ChatService(store, hasher, reactor, limits)
    chat.setServiceParent(root)
    tracker = ConnectionTracker(reactor, options["shutdown-grace"])
    tracker.setServiceParent(root)
    if options["ban-file"]:
        BanFile(chat, options["ban-file"], reactor, options["ban-file-interval"]).setServiceParent(root)
    ports = {}
    for spec in PORTS:
        if options[spec.option] == "none":
            continue
        factory = namedAny(spec.factory)(chat, tracker, limits, reactor, options)
        factory.noisy = False
        # The listening port logs "<prefix> starting on <port>": make that the one line per port.
        factory.logPrefix = lambda spec=spec: f"chatserv {spec.option} ({spec.description})"
        ports[spec.option] = PortService(chat, spec, options[spec.option], factory, reactor, on_failure)
        ports[spec.option].setServiceParent(root)
    return root, chat, ports


def makeService(options: Options) -> service.MultiService:
    from twisted.internet import reactor

    return build(options, reactor, on_failure=exit_status_failed)[0]
