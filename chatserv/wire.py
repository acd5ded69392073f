"""What every wire shares, TCP protocols and the web port alike (DESIGN.md, "Layers").

- ``BadRequest`` and ``ErrorTable``: a request that does not parse, and each port's one
  mapping from failures to its replies.
- ``json_object``: the one JSON reader of every JSON wire.
- ``RequestQueue``: requests answered strictly in order, one at a time.
- ``SendQueue``: what a reader that stopped reading has not taken yet, bounded.
- ``Deadline``: one pending timeout (before login, idle, a ping's answer...).
- ``ConnectionTracker``: every open connection of every port, for the connection limits and
  for saying goodbye at shutdown.

``chatserv.protocols`` and ``chatserv.web`` both build on this module; neither imports the
other's helpers.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Callable

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from chatserv import errors, events
from chatserv.limits import Limits, QuietLog
from chatserv.text import check_decoded

log = Logger()


class BadRequest(errors.ChatError):
    """The request could not be parsed: wrong shape, missing or mistyped fields."""


class ErrorTable:
    """One port's mapping from domain failures to its replies.

    ``reply(exc)`` walks the exception's class hierarchy, so a table can name ``ChatError``
    as the catch-all; an exception the table does not know is a bug and is re-raised.
    """

    def __init__(self, replies: dict):
        self._replies = replies

    def reply(self, exc: BaseException):
        for cls in type(exc).__mro__:
            if cls in self._replies:
                found = self._replies[cls]
                return found(exc) if callable(found) else found
        raise exc


class MalformedJSON(ValueError):
    """Not JSON at all: bad syntax, bad encoding, or nested too deep to read."""


class NotAnObject(ValueError):
    """JSON, but not the object a request must be."""


def json_object(document: str | bytes) -> dict:
    """The JSON object a request line or body carries (MalformedJSON or NotAnObject otherwise;
    UnencodableText when a string in it is a lone surrogate, which JSON's escapes can spell).

    Shared by every JSON wire so deep nesting (RecursionError), arrays and text the store
    cannot keep are refused alike.
    """
    try:
        found = json.loads(document)
    except (ValueError, RecursionError):
        raise MalformedJSON() from None
    if not isinstance(found, dict):
        raise NotAnObject()
    return check_decoded(found)


class RequestQueue:
    """Requests answered strictly in order, one at a time.

    ``answer(request)`` returns None when it is done with the request, or a Deferred that
    fires when it is: the next request waits for it. Answers that are done at once are run
    in a loop, not by recursion, however many requests came in one read. ``waiting()`` is
    called each time the queue stops: empty, or waiting for an answer.
    """

    def __init__(self, answer: Callable, waiting: Callable[[], None] = lambda: None):
        self._answer = answer
        self._waiting = waiting
        self._requests: collections.deque = collections.deque()
        self._busy = False
        self._running = False
        self.stopped = False

    def __len__(self) -> int:
        return len(self._requests)

    @property
    def idle(self) -> bool:
        """Nothing waiting and nothing being answered."""
        return not self._requests and not self._busy

    def extend(self, requests):
        """Queue requests without answering them yet (``run`` does)."""
        if not self.stopped:
            self._requests.extend(requests)

    def put(self, request):
        """Queue one request, and answer it if it is the only one."""
        self.extend((request,))
        self.run()

    def clear(self):
        self._requests.clear()

    def stop(self):
        """Nothing more is queued or answered (an answer under way still finishes)."""
        self.stopped = True
        self._requests.clear()

    def run(self):
        if self._running:
            return  # the loop is already running further up the stack
        self._running = True
        try:
            while self._requests and not self._busy and not self.stopped:
                answering = self._answer(self._requests.popleft())
                if answering is not None:
                    self._busy = True
                    answering.addBoth(self._answered)
        finally:
            self._running = False
        self._waiting()

    def _answered(self, _):
        self._busy = False
        if not self.stopped:
            self.run()


class SendQueue:
    """What a reader has not taken yet while its transport asked us to pause, bounded.

    ``hold(data)`` keeps data to send on ``take()`` (at resume); ``count(data)`` only counts
    data the transport already holds for us. Either says False once more than ``bound`` bytes
    wait: the reader does not read, and is let go.
    """

    def __init__(self, bound: int):
        self.bound = bound
        self.size = 0
        self._held: list = []

    def __bool__(self) -> bool:
        return bool(self._held)

    def hold(self, data) -> bool:
        self._held.append(data)
        return self.count(data)

    def count(self, data) -> bool:
        self.size += len(data)
        return self.size <= self.bound

    def take(self) -> list:
        """What was held, in order; the queue starts empty again."""
        held, self._held, self.size = self._held, [], 0
        return held


class Deadline:
    """One pending timeout: armed, pushed back by activity, cancelled; ``expired`` runs once."""

    def __init__(self, clock, expired: Callable[[], object]):
        self._clock = clock
        self._expired = expired
        self._call = None
        self._seconds = 0.0

    @property
    def active(self) -> bool:
        return self._call is not None and self._call.active()

    def arm(self, seconds: float):
        """Start the countdown afresh (a shorter one before login, the idle one after, ...)."""
        self.cancel()
        self._seconds = seconds
        if seconds and seconds > 0:
            self._call = self._clock.callLater(seconds, self._fire)

    def push_back(self):
        """Activity: the countdown starts again from its full length."""
        if self.active:
            self._call.reset(self._seconds)

    def cancel(self):
        if self.active:
            self._call.cancel()
        self._call = None

    def _fire(self):
        self._call = None
        self._expired()


class ConnectionTracker(service.Service):
    """Knows every open connection, so a stopping daemon can say goodbye on each wire.

    A connection is anything with ``peer_host``, ``protocol_name``, ``deliver(event)`` (it
    gets ``ServerShutdown``) and a ``transport`` to abort when the grace is over.
    """

    def __init__(self, clock, grace: float = 2.0):
        self.clock = clock
        self.grace = grace
        self.connections: set = set()
        self.per_host: collections.Counter = collections.Counter()
        self.refused = 0
        self._quiet = QuietLog(log, clock=clock)  # refusals: one line a minute at most
        self._shared: set = set()
        self._emptied: list[defer.Deferred] = []

    def admits(self, host: str, limits: Limits) -> bool:
        """May one more connection from ``host`` open, within the total and per-address limits?"""
        if limits.max_connections and len(self.connections) >= limits.max_connections:
            self._refuse(host, "--max-connections")
            return False
        if limits.connections_per_ip and self.per_host[host] >= limits.connections_per_ip:
            self._refuse(host, "--connections-per-ip")
            return False
        return True

    def _refuse(self, host: str, limit: str):
        """Count a refusal; the log has a line a minute at most, saying how many were held back."""
        self.refused += 1
        self._quiet.warn("refused a connection from {host}, over {limit}", host=host, limit=limit)

    def add(self, connection):
        self.connections.add(connection)
        self.per_host[connection.peer_host] += 1

    def share(self, connection) -> bool:
        """``connection`` is part of a client counted otherwise (a browser's polling requests
        belong to its Engine.IO session): it stays in the total but leaves its address's
        count. False if it is not tracked or already shared."""
        if connection not in self.connections or connection in self._shared:
            return False
        self._shared.add(connection)
        self._uncount(connection.peer_host)
        return True

    def unshare(self, connection):
        """Count ``connection`` for its address again (the client it was part of is gone)."""
        if connection in self._shared:
            self._shared.discard(connection)
            self.per_host[connection.peer_host] += 1

    def _uncount(self, host):
        self.per_host[host] -= 1
        if not self.per_host[host]:
            del self.per_host[host]

    def discard(self, connection):
        if connection not in self.connections:
            return
        self.connections.discard(connection)
        if connection in self._shared:
            self._shared.discard(connection)
        else:
            self._uncount(connection.peer_host)
        if not self.connections:
            waiting, self._emptied = self._emptied, []
            for d in waiting:
                d.callback(None)

    def count(self, protocol_name: str) -> int:
        return sum(1 for c in self.connections if c.protocol_name == protocol_name)

    def stopService(self):
        super().stopService()
        if not self.connections:
            return None
        emptied = defer.Deferred()
        self._emptied.append(emptied)
        shutdown = events.ServerShutdown()
        for connection in list(self.connections):
            connection.deliver(shutdown)
        timer = self.clock.callLater(self.grace, self._force_close)
        emptied.addBoth(lambda r: timer.cancel() if timer.active() else None)
        return emptied

    def _force_close(self):
        """The grace is over: abort what is left, and stop waiting for it."""
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.abortConnection()
            self.discard(connection)
