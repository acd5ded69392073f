"""``twistd chatserv``: options, and the service tree they build.

Every port is a Twisted endpoint string (``tcp:5001``, ``ssl:6697:privateKey=key.pem``) or
``none``. Every other option is declared once, in a typed config class (``chatserv.options``
says how to add one): the daemon's own here, each protocol's next to its factory, the limits
and the hashing cost beside the code that applies them. The tree stops in reverse order:
ports stop listening, every connection says goodbye on its own wire, then the service
closes the store after its last write.
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
from typing import ClassVar

import attrs
from twisted.application import service
from twisted.internet import endpoints
from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.reflect import namedAny

from chatserv.bans import BanFile
from chatserv.bus.redis import RedisBus, check_bus
from chatserv.credentials import HashCost, Hasher, HashingThreads
from chatserv.limits import Limits
from chatserv.nodes import Replica, default_node_name, nodes_check
from chatserv.options import from_options, option, options_of
from chatserv.service import ChatService
from chatserv.store import check_db, open_store
from chatserv.wire import ConnectionTracker
from chatserv.workers import ParentWatch, Workers, check_shareable, shared

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


@attrs.frozen
class DaemonConfig:
    """The daemon's own options: the store, the shutdown grace, the IP ban file."""

    option_prefix: ClassVar[str] = ""

    db: str = option("chatserv.sqlite3", "SQLite file path, 'memory' for an in-memory store, or "
                     "postgresql://user@host:port/dbname", coerce=check_db)
    shutdown_grace: float = option(2.0, "seconds connections get to close at shutdown")
    ban_file: str | None = option(None, "IP ban list, one address a line, applied while running")
    ban_file_interval: float = option(2.0, "seconds between looks at --ban-file")
    bus: str = option("local", "how events reach sessions: 'local' (one process) or redis://host:port/db "
                      "(several nodes sharing a --db postgresql:// store)", coerce=check_bus)
    node_name: str = option("", "this node's name in logs and metrics (default: hostname-pid)")
    presence_ttl: float = option(30.0, "seconds after which a node not heard on the bus is dead and "
                                 "its users offline everywhere")
    workers: int = option(1, "processes sharing the listening ports (needs --db postgresql:// and "
                          "--bus redis://)")
    worker: int = option(0, "this process's number among --workers (worker 0 starts the others)")


def config_classes() -> list[type]:
    """Every config class, in ``--help`` order: the daemon's, hashing, each port's, the limits."""
    ports = [namedAny(p.factory).config_class for p in PORTS]
    return [DaemonConfig, HashCost, *[c for c in ports if c is not None], Limits]


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = "chatserv: one daemon serving several chat protocols over one service and one store."

    optParameters = (
        [[p.option, None, p.default, f"{p.description}: endpoint, or 'none'"] for p in PORTS]
        + [o.parameter() for config_class in config_classes() for o in options_of(config_class)
           if not o.repeat]
    )

    def __init__(self):
        super().__init__()
        for repeated in _repeated_options():
            self[repeated.name] = repeated.default

    def config(self, config_class):
        """The parsed options of one config class, typed."""
        return from_options(config_class, self)

    def limits(self) -> Limits:
        return self.config(Limits)

    def postOptions(self):
        daemon = self.config(DaemonConfig)
        try:
            nodes_check(daemon.db, daemon.bus, daemon.workers)
            if daemon.workers > 1:
                for spec in PORTS:
                    if self[spec.option] != "none":
                        check_shareable(spec.option, self[spec.option])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None


def _repeated_options():
    return [o for config_class in config_classes() for o in options_of(config_class) if o.repeat]


def _collector(repeated):
    """The handler of an option that may be given many times: each value is kept, in order."""

    def collect(self, value):
        try:
            self[repeated.name] = (*self[repeated.name], repeated.coerce(value))
        except ValueError as exc:
            raise usage.UsageError(f"--{repeated.name}: {exc}") from None

    collect.__doc__ = f"{repeated.help} (repeatable)"
    return collect


for _repeated in _repeated_options():
    setattr(Options, "opt_" + _repeated.name.replace("-", "_"), _collector(_repeated))


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
        # A store that cannot open stops the daemon once (``build``), not once per port.
        self.listening.addCallbacks(self._listen, lambda _: None)

    def _listen(self, _):
        listening = self.endpoint.listen(self.factory)
        listening.addCallbacks(self._listening, self._failed)
        return listening

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

    ``on_failure``: called if the store cannot open, a port cannot listen or the store can no
    longer write (the daemon then stops).
    """
    root = service.MultiService()
    daemon, limits = options.config(DaemonConfig), options.limits()
    store = open_store(daemon.db, reactor)
    store.when_broken().addCallback(_store_broke, reactor, on_failure)
    hashing = HashingThreads(limits.hash_threads)
    hashing.setServiceParent(root)  # its own threads, not the reactor's shared pool
    hasher = Hasher(reactor, hashing.pool, options.config(HashCost), limit=hashing.size + limits.hash_queue)
    chat = ChatService(store, hasher, reactor, limits)
    chat.node_name = daemon.node_name or default_node_name()
    if daemon.workers > 1 and daemon.worker == 0:
        Workers(reactor, daemon.workers, chat.node_name).setServiceParent(root)
        chat.node_name += "-0"
    elif daemon.workers > 1:
        ParentWatch(reactor).setServiceParent(root)
    if daemon.bus != "local":
        chat.bus = RedisBus(chat.bus, daemon.bus, chat.node_name, reactor, daemon.presence_ttl)
        chat.bus.observer = Replica(chat, chat.bus)
        chat.bus.setServiceParent(root)
        # Nothing stored before this node started is caught up after an outage.
        started = chat.when_ready().addCallback(lambda _: store.newest_message_id())
        started.addCallbacks(chat.bus.start_from, lambda _: None)  # a failed open stops the daemon
    log.info("chatserv node {node}: bus {bus}", node=chat.node_name, bus=daemon.bus)
    chat.setServiceParent(root)
    # The service logs why the store did not open (one line when the database is unreachable).
    chat.when_ready().addErrback(lambda _: stop_failed(reactor, on_failure))
    tracker = ConnectionTracker(reactor, daemon.shutdown_grace)
    tracker.setServiceParent(root)
    if daemon.ban_file:
        BanFile(chat, daemon.ban_file, reactor, daemon.ban_file_interval).setServiceParent(root)
    ports = {}
    for spec in PORTS:
        if options[spec.option] == "none":
            continue
        factory = namedAny(spec.factory)(chat, tracker, limits, reactor, options)
        factory.noisy = False
        # The listening port logs "<prefix> starting on <port>": make that the one line per port.
        factory.logPrefix = lambda spec=spec: f"chatserv {spec.option} ({spec.description})"
        ports[spec.option] = PortService(chat, spec, options[spec.option], factory, reactor, on_failure)
        if daemon.workers > 1:
            ports[spec.option].endpoint = shared(ports[spec.option].endpoint, reactor)
        ports[spec.option].setServiceParent(root)
    return root, chat, ports


def makeService(options: Options) -> service.MultiService:
    from twisted.internet import reactor

    root = build(options, reactor, on_failure=exit_status_failed)[0]
    # What exists once the daemon runs (modules, classes, functions: ~80,000 objects) lives as
    # long as the process: frozen, it is left out of the collector's full passes, which took
    # about 60 ms each, every few seconds under load, and stalled every connection meanwhile.
    reactor.callWhenRunning(gc.freeze)
    return root
