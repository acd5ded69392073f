"""Limits every port enforces (DESIGN.md, "Limits"), the token bucket behind rates, and the
quiet log that bounds what clients can make the daemon write to its log."""

from __future__ import annotations

import heapq
import itertools
import time
import weakref

import attrs
from twisted.logger import Logger

log = Logger()


def _limit(default, help_text: str):
    """A limit with its own ``--help`` text (the others get one made from their name)."""
    return attrs.field(default=default, metadata={"help": help_text})


@attrs.define
class Limits:
    max_line: int = 8192  # bytes in one line or frame
    prelogin_timeout: float = 60.0  # seconds a connection may stay without logging in
    idle_timeout: float = 600.0  # seconds without a request before a session is closed
    login_attempts: int = 5  # failed logins before the connection is closed
    messages_per_second: float = 10.0  # sustained message rate per session (0: unlimited)
    message_burst: int = 20  # messages a session may send at once before the rate applies
    send_queue: int = 1 << 20  # bytes queued for a slow reader before it is disconnected
    max_pending_requests: int = 64  # parsed requests waiting their turn before reading pauses
    max_body: int = 4096  # characters in one message body
    history: int = 50  # messages replayed or returned by default
    max_connections: int = 20000  # open connections on all ports together (0: unlimited)
    connections_per_ip: int = 100  # open connections from one address (0: unlimited)
    logins_per_ip: int = 2  # logins and registrations from one address hashing at once (0: unlimited)
    hash_threads: int = 0  # argon2 hashes at once (0: one per CPU, at most 4)
    hash_queue: int = 16  # hashes waiting for a thread before a login is told "busy, try again"
    # Room creation (0: unlimited). Rates are rooms a minute once the burst is spent.
    max_rooms: int = _limit(100_000, "rooms on the server (0: unlimited)")
    max_rooms_per_user: int = _limit(100, "rooms one user created that still exist (0: unlimited)")
    max_rooms_per_address: int = _limit(
        1000, "rooms created from one address since the start that still exist (0: unlimited)")
    room_rate_per_user: float = _limit(10.0, "rooms a user may create a minute after its burst (0: no limit)")
    room_burst_per_user: int = _limit(20, "rooms a user may create at once")
    room_rate_per_address: float = _limit(
        60.0, "rooms one address may create a minute after its burst (0: no limit)")
    room_burst_per_address: int = _limit(100, "rooms one address may create at once")


class TokenBucket:
    """Allows ``burst`` events at once and ``rate`` per second after; rate 0 allows all."""

    def __init__(self, clock, rate: float, burst: int):
        self._clock = clock
        self._rate = rate
        self._burst = float(max(burst, 1))
        self._tokens = self._burst
        self._stamp = clock.seconds()

    def ready(self) -> bool:
        """Whether an event would be allowed now (nothing is taken)."""
        if not self._rate:
            return True
        now = self._clock.seconds()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        return self._tokens >= 1.0

    def allow(self) -> bool:
        if not self.ready():
            return False
        if self._rate:
            self._tokens -= 1.0
        return True


class RateTable:
    """A token bucket per key (a user id, an address), made on first use. Bounded: past
    ``max_keys`` the oldest bucket is forgotten, so its key starts afresh."""

    def __init__(self, clock, per_minute: float, burst: int, max_keys: int = 100_000):
        self._clock = clock
        self._rate = per_minute / 60.0
        self._burst = burst
        self._max_keys = max_keys
        self._buckets: dict = {}

    def bucket(self, key) -> TokenBucket:
        found = self._buckets.get(key)
        if found is None:
            found = self._buckets[key] = TokenBucket(self._clock, self._rate, self._burst)
            while len(self._buckets) > self._max_keys:
                del self._buckets[next(iter(self._buckets))]
        return found

    def forget(self, key):
        self._buckets.pop(key, None)


class Deadline:
    """One pending timeout: armed, pushed back by activity, cancelled; ``expired`` runs once.

    Every deadline of a clock shares that clock's one ``Timeouts`` schedule. Activity only
    moves ``_due`` (a float store, no reactor call); the schedule looks at it when the time it
    queued the deadline for comes.
    """

    __slots__ = ("_timeouts", "_expired", "_seconds", "_due", "_entry")

    def __init__(self, clock, expired):
        self._timeouts = Timeouts.of(clock)
        self._expired = expired
        self._seconds = 0.0
        self._due: float | None = None  # when it expires; None while not armed
        self._entry: list | None = None  # its place in the schedule: [time, order, self]

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


class Timeouts:
    """The deadlines of one clock in one heap under one DelayedCall, not a DelayedCall each.

    An idle connection costs a heap entry. A cancelled deadline's entry holds nothing, and
    such emptied entries are swept out once there is one for every two live ones (each sweep
    paid for by as many drops). An entry is a deadline's time when it was queued; a deadline
    pushed back since is queued again, for its new time, when that entry comes up, so
    activity costs nothing here. Firing is exact: the DelayedCall is due with the earliest
    entry.
    """

    _of: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    @classmethod
    def of(cls, clock) -> Timeouts:
        """The schedule of ``clock`` (the reactor, or a test's fake clock)."""
        timeouts = cls._of.get(clock)
        if timeouts is None:
            timeouts = cls._of[clock] = cls(clock)
        return timeouts

    def __init__(self, clock):
        self._clock = weakref.ref(clock)  # held weakly: this object is the value of a weak mapping
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
                    deadline._expired()
                except Exception:
                    log.failure("a timeout's handler failed")
        finally:
            self._running = False
            if not self._live:
                self._heap.clear()
            self._wake()


class QuietLog:
    """A logger that writes each kind of entry (its format) at most once per ``interval``
    seconds; the next one written says how many were held back. Whatever a client can make the
    daemon log goes through one, so no flood of requests fills the disk with log lines."""

    def __init__(self, logger, interval: float = 60.0, clock=None):
        self._logger = logger
        self.interval = interval
        self._clock = clock
        self._quiet_until: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def _now(self) -> float:
        return self._clock.seconds() if self._clock is not None else time.monotonic()

    def _format(self, format: str) -> str | None:
        """The format to write now (saying what was held back), or None to hold this one back."""
        now = self._now()
        if now < self._quiet_until.get(format, now):
            self._held[format] = self._held.get(format, 0) + 1
            return None
        self._quiet_until[format] = now + self.interval
        held = self._held.pop(format, 0)
        return format + (f" ({held} more like it held back)" if held else "")

    def failure(self, format: str, failure=None, **fields):
        """A failure with its traceback (``failure``: the one being handled if None)."""
        written = self._format(format)
        if written is not None:
            self._logger.failure(written, failure, **fields)

    def warn(self, format: str, **fields):
        written = self._format(format)
        if written is not None:
            self._logger.warn(written, **fields)

    def info(self, format: str, **fields):
        written = self._format(format)
        if written is not None:
            self._logger.info(written, **fields)
