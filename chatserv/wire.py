"""What every wire shares, TCP protocols and the web port alike (DESIGN.md, "Layers").

- ``BadRequest`` and ``ErrorTable``: a request that does not parse, and each port's one
  mapping from failures to its replies.
- ``json_object``: the one JSON reader of every JSON wire.
- ``RequestQueue``: requests answered strictly in order, one at a time.
- ``SendQueue``: what a reader that stopped reading has not taken yet, bounded.
- ``Deadline``: one pending timeout (before login, idle, a ping's answer...); every deadline
  of a clock shares its ``Timeouts``, one DelayedCall in all.
- ``WriteTurns``: what connections are handed during one reactor turn, written once per
  connection when the turn ends.
- ``ConnectionTracker``: every open connection of every port, for the connection limits and
  for saying goodbye at shutdown.

``chatserv.protocols`` and ``chatserv.web`` both build on this module; neither imports the
other's helpers.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import json
import weakref
from collections.abc import Callable

from twisted.application import service
from twisted.internet import defer, tcp
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


def unbound(callback: Callable) -> tuple[Callable, object]:
    """``(function, instance)`` of a bound method, ``(callback, None)`` of anything else.

    Kept apart in two slots, they cost nothing of their own; a bound method is an object (64
    bytes), and every connection holds a few callbacks. ``call_unbound`` calls them.
    """
    owner = getattr(callback, "__self__", None)
    function = getattr(callback, "__func__", None)
    return (callback, None) if owner is None or function is None else (function, owner)


def call_unbound(function: Callable, owner, *args):
    return function(*args) if owner is None else function(owner, *args)


class RequestQueue:
    """Requests answered strictly in order, one at a time.

    ``answer(request)`` returns None when it is done with the request, or a Deferred that
    fires when it is: the next request waits for it. Answers that are done at once are run
    in a loop, not by recursion, however many requests came in one read. ``waiting()`` is
    called each time the queue stops: empty, or waiting for an answer.
    """

    # one per connection: slots, no bound methods, and a deque only while requests wait
    __slots__ = ("_answer", "_answer_owner", "_waiting", "_waiting_owner", "_requests", "_busy",
                 "_running", "stopped")

    def __init__(self, answer: Callable, waiting: Callable[[], None] = lambda: None):
        self._answer, self._answer_owner = unbound(answer)
        self._waiting, self._waiting_owner = unbound(waiting)
        self._requests: collections.deque | tuple = ()
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
        if self.stopped:
            return
        if self._requests:
            self._requests.extend(requests)
        elif requests:
            self._requests = collections.deque(requests)

    def put(self, request):
        """Queue one request, and answer it if it is the only one."""
        self.extend((request,))
        self.run()

    def clear(self):
        self._requests = ()

    def stop(self):
        """Nothing more is queued or answered (an answer under way still finishes)."""
        self.stopped = True
        self._requests = ()

    def run(self):
        if self._running:
            return  # the loop is already running further up the stack
        self._running = True
        try:
            while self._requests and not self._busy and not self.stopped:
                answering = call_unbound(self._answer, self._answer_owner, self._requests.popleft())
                if answering is not None:
                    self._busy = True
                    answering.addBoth(self._answered)
        finally:
            self._running = False
        if not self._requests:
            self._requests = ()  # the deque goes with the burst that needed it
        call_unbound(self._waiting, self._waiting_owner)

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

    __slots__ = ("bound", "size", "_held")  # one per connection, holding nothing most of the time

    def __init__(self, bound: int):
        self.bound = bound
        self.size = 0
        self._held: list | tuple = ()

    def __bool__(self) -> bool:
        return bool(self._held)

    def hold(self, data) -> bool:
        if not self._held:
            self._held = []
        self._held.append(data)
        return self.count(data)

    def count(self, data) -> bool:
        self.size += len(data)
        return self.size <= self.bound

    def take(self) -> list | tuple:
        """What was held, in order; the queue starts empty again."""
        held, self._held, self.size = self._held, (), 0
        return held


class Deadline:
    """One pending timeout: armed, pushed back by activity, cancelled; ``expired`` runs once.

    Every deadline of a clock shares that clock's one ``Timeouts`` schedule. Activity only
    moves ``_due`` (a float store, no reactor call); the schedule looks at it when the time it
    queued the deadline for comes.
    """

    __slots__ = ("_timeouts", "_expired", "_expired_owner", "_seconds", "_due", "_entry")

    def __init__(self, clock, expired: Callable[[], object]):
        self._timeouts = Timeouts.of(clock)
        self._expired, self._expired_owner = unbound(expired)
        self._seconds = 0.0
        self._due: float | None = None  # when it expires; None while not armed
        self._entry: list | None = None  # its place in the schedule: [time, order, self]

    @property
    def active(self) -> bool:
        return self._due is not None

    def arm(self, seconds: float):
        """Start the countdown afresh (a shorter one before login, the idle one after, ...)."""
        self._seconds = seconds
        if not seconds or seconds <= 0:
            self.cancel()
            return
        self._due = self._timeouts.now() + seconds
        if self._entry is None or self._entry[0] > self._due:
            self._timeouts.queue(self)

    def push_back(self):
        """Activity: the countdown starts again from its full length."""
        if self._due is not None:
            self._due = self._timeouts.now() + self._seconds

    def cancel(self):
        self._due = None
        if self._entry is not None:
            self._timeouts.drop(self)


class PerClock:
    """One instance per clock (the reactor, or a test's fake clock), made on first use by ``of``.

    The clock is held weakly, and so is the instance (the value of a weak mapping per subclass),
    so a test's fake clock and what hangs off it go away together.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._of = weakref.WeakKeyDictionary()

    @classmethod
    def of(cls, clock):
        """The instance for ``clock``."""
        found = cls._of.get(clock)
        if found is None:
            found = cls._of[clock] = cls(clock)
        return found

    def __init__(self, clock):
        self._clock = weakref.ref(clock)


class Timeouts(PerClock):
    """The deadlines of one clock in one heap under one DelayedCall, not a DelayedCall each.

    An idle connection costs a heap entry. A cancelled deadline's entry holds nothing, and
    such emptied entries are swept out once there is one for every two live ones (each sweep
    paid for by as many drops). An entry is a deadline's time when it was queued; a deadline
    pushed back since is queued again, for its new time, when that entry comes up, so
    activity costs nothing here. Firing is exact: the DelayedCall is due with the earliest
    entry.
    """

    def __init__(self, clock):
        super().__init__(clock)
        self._heap: list[list] = []
        self._order = itertools.count()  # equal times fire in the order queued
        self._live = 0  # entries that still hold a deadline
        self._call = None
        self._call_time = 0.0
        self._running = False

    def now(self) -> float:
        return self._clock().seconds()

    def queue(self, deadline: Deadline):
        if deadline._entry is not None:
            self.drop(deadline)
        entry = [deadline._due, next(self._order), deadline]
        deadline._entry = entry
        heapq.heappush(self._heap, entry)
        self._live += 1
        if self._heap[0] is entry and not self._running:
            self._wake()

    def drop(self, deadline: Deadline):
        """Forget ``deadline``'s entry (it stays in the heap, empty, until it comes up)."""
        deadline._entry[2] = None
        deadline._entry = None
        self._live -= 1
        if self._running:
            return  # _run wakes (or stops) the DelayedCall when it is done
        if not self._live:
            self._heap.clear()
            self._wake()
        elif len(self._heap) > 64 and 2 * len(self._heap) > 3 * self._live:
            self._heap = [entry for entry in self._heap if entry[2] is not None]
            heapq.heapify(self._heap)

    def _wake(self):
        """Make the one DelayedCall due with the earliest entry (or cancel it: none left)."""
        when = self._heap[0][0] if self._heap else None
        if self._call is not None and self._call.active():
            if self._call_time == when:
                return
            self._call.cancel()
        self._call = None
        if when is not None:
            clock = self._clock()
            self._call_time = when
            self._call = clock.callLater(max(0.0, when - clock.seconds()), self._run)

    def _run(self):
        self._call = None
        now = max(self.now(), self._call_time)  # the call is due when the entry is, rounding aside
        self._running = True
        try:
            while self._heap and self._heap[0][0] <= now:
                entry = heapq.heappop(self._heap)
                deadline = entry[2]
                if deadline is None:
                    continue  # cancelled, or queued again for an earlier time
                deadline._entry = None
                self._live -= 1
                if deadline._due > now:  # pushed back since it was queued
                    self.queue(deadline)
                    continue
                deadline._due = None
                try:
                    call_unbound(deadline._expired, deadline._expired_owner)
                except Exception:
                    log.failure("a timeout's handler failed")
        finally:
            self._running = False
            if not self._live:
                self._heap.clear()
            self._wake()


class WriteTurns(PerClock):
    """Deliveries held until the reactor's turn ends, then written once per connection.

    A store commit lands many room messages in one turn, and each reaches every member: a
    member would get as many small writes, each paying Twisted's whole write path (checks,
    the producer's buffer test, registering the writer). A connection instead keeps what it
    is handed this turn and ``hold``s itself here; one ``callLater(0)``, which the reactor
    runs before it next polls (when those writes would have gone out anyway), has each held
    connection ``flush`` its bytes as one write. A clock that is not a running reactor (a
    unit test's fake clock) has no turns to end: ``running`` is False and connections write
    at once.
    """

    def __init__(self, clock):
        super().__init__(clock)
        self._held: list = []
        self._call = None

    @property
    def running(self) -> bool:
        return bool(getattr(self._clock(), "running", False))

    def hold(self, connection):
        """``connection.flush()`` is called once this turn ends."""
        self._held.append(connection)
        if self._call is None:
            self._call = self._clock().callLater(0, self._end_turn)

    def _end_turn(self):
        self._call = None
        held, self._held = self._held, []
        for connection in held:
            try:
                connection.flush()
            except Exception:
                log.failure("cannot write what a connection was handed")


def write_through(transport, data: bytes) -> None:
    """``transport.write(data)``, but sent at once when nothing is queued before it.

    Twisted's ``write`` only queues: the bytes go out once the reactor finds the socket
    writable, which costs registering the socket with epoll and taking it off again (two more
    system calls and Python around them) beside the send itself. A chat delivery is mostly a
    small write to an idle socket, so that was most of its cost at a steady rate. Only a plain
    TCP transport itself (not a TLS one, nor a wrapper such as the TLS protocol that passes
    attribute reads to the TCP transport under it) with an empty buffer is written to directly;
    what the socket does not take, and any error, goes Twisted's usual way.
    """
    if (isinstance(transport, tcp.Connection) and not transport.TLS and transport.connected
            and not transport.disconnecting and not transport._tempDataLen and not transport.dataBuffer):
        sent = transport.writeSomeData(data)
        if isinstance(sent, int):  # if not, the connection is lost: the queued write finds out
            if sent == len(data):
                return
            data = data[sent:]
    transport.write(data)


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
