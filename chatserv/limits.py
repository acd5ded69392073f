"""Limits every port enforces (DESIGN.md, "Limits"), the token bucket behind rates, and the
quiet log that bounds what clients can make the daemon write to its log."""

from __future__ import annotations

import time

import attrs

from chatserv.options import option


@attrs.define
class Limits:
    """What every port enforces; each field is also a ``twistd chatserv`` option (``--max-line``...)."""

    max_line: int = option(8192, "bytes in one line or frame")
    prelogin_timeout: float = option(60.0, "seconds a connection may stay without logging in")
    idle_timeout: float = option(600.0, "seconds without a request before a session is closed")
    login_attempts: int = option(5, "failed logins before the connection is closed")
    messages_per_second: float = option(10.0, "sustained message rate per session (0: unlimited)")
    message_burst: int = option(20, "messages a session may send at once before the rate applies")
    send_queue: int = option(1 << 20, "bytes queued for a slow reader before it is disconnected")
    max_pending_requests: int = option(64, "parsed requests waiting their turn before reading pauses")
    max_body: int = option(4096, "characters in one message body")
    history: int = option(50, "messages replayed or returned by default")
    max_connections: int = option(20000, "open connections on all ports together (0: unlimited)")
    connections_per_ip: int = option(100, "open connections from one address (0: unlimited)")
    logins_per_ip: int = option(2, "logins and registrations from one address hashing at once (0: unlimited)")
    hash_threads: int = option(0, "argon2 hashes at once (0: one per CPU, at most 4)")
    hash_queue: int = option(16, "hashes waiting for a thread before a login is told 'busy, try again'")
    # Room creation (0: unlimited). Rates are rooms a minute once the burst is spent.
    max_rooms: int = option(100_000, "rooms on the server (0: unlimited)")
    max_rooms_per_user: int = option(100, "rooms one user created that still exist (0: unlimited)")
    max_rooms_per_address: int = option(
        1000, "rooms created from one address since the start that still exist (0: unlimited)")
    room_rate_per_user: float = option(10.0, "rooms a user may create a minute after its burst (0: no limit)")
    room_burst_per_user: int = option(20, "rooms a user may create at once")
    room_rate_per_address: float = option(
        60.0, "rooms one address may create a minute after its burst (0: no limit)")
    room_burst_per_address: int = option(100, "rooms one address may create at once")


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
