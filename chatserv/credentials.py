"""One credential scheme for every port (DESIGN.md, "Credentials").

Each user has a 32-digit decimal salt. The stored verifier is argon2id over
``sha256_hex(salt + password)``: ports that receive a plain password compute that digest
first; the salted port (seed 002) receives the digest from the client. Argon2 runs on
threads of its own, a bounded number at once, so the reactor never waits on it and a flood
of logins cannot take all memory; ``LoginThrottle`` decides which checks may start.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
from collections import Counter
from collections.abc import Callable
from typing import ClassVar

import argon2
import attrs
from twisted.application import service
from twisted.internet.defer import fail
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from chatserv import errors
from chatserv.limits import QuietLog
from chatserv.options import option

log = Logger()
quiet = QuietLog(log)  # a hash failing under a flood: one line a minute at most, never a traceback

MAX_HASHING_THREADS = 4  # argon2's default cost is 64 MiB a hash: 4 at once is 256 MiB
BUSY = "server busy, try again"
MAX_LOCKOUT = 300.0  # seconds: the doubling lockout stops growing here
MAX_TALLIES = 100_000  # throttle entries kept; the least recently failed go first


def new_salt() -> str:
    """A random 32-digit integer as a string, as seed 002 specifies."""
    return str(10**31 + secrets.randbelow(9 * 10**31))


def password_digest(salt: str, password: str) -> str:
    """What the salted client sends and what the verifier hashes: sha256(salt + password)."""
    return hashlib.sha256((salt + password).encode("utf-8")).hexdigest()


@attrs.define
class HashCost:
    """argon2id cost parameters (``--argon2-*``); tests lower them, production keeps the
    library defaults."""

    option_prefix: ClassVar[str] = "argon2-"

    time_cost: int = option(argon2.DEFAULT_TIME_COST, "argon2id passes")
    memory_cost: int = option(argon2.DEFAULT_MEMORY_COST, "argon2id memory (KiB)")
    parallelism: int = option(argon2.DEFAULT_PARALLELISM, "argon2id lanes")


def hashing_threads(requested: int = 0) -> int:
    """How many hashes run at once: ``requested``, or one per CPU we may use, at most 4."""
    return requested if requested > 0 else max(1, min(len(os.sched_getaffinity(0)), MAX_HASHING_THREADS))


class _HashingPool(ThreadPool):
    """Daemon threads: a hash still running never keeps a stopping process alive."""

    def threadFactory(self, *args, **kwargs):
        return threading.Thread(*args, daemon=True, **kwargs)


class HashingThreads(service.Service):
    """The hashing threads' own pool, started and stopped with the daemon.

    Not the reactor's shared pool: logins never wait behind other work there (or hold it
    up), and at most ``size`` argon2 hashes hold their memory at once.
    """

    def __init__(self, size: int = 0):
        self.size = hashing_threads(size)
        self.pool = _HashingPool(minthreads=0, maxthreads=self.size, name="chatserv-hash")

    def startService(self):
        super().startService()
        self.pool.start()

    def stopService(self):
        super().stopService()
        self.pool.stop()


class Hasher:
    """Makes and checks verifiers off the reactor thread, at most ``limit`` at a time.

    ``limit`` counts hashes running and waiting for a thread; beyond it a request fails at
    once with ``errors.Busy`` rather than queue without bound (None: no limit). A hash that
    fails inside argon2 (out of memory, a verifier it cannot read) is ``errors.Busy`` too,
    never a wrong password: nothing was checked.
    """

    def __init__(self, reactor, threadpool, cost: HashCost = HashCost(), *, limit: int | None = None):
        self._reactor = reactor
        self._pool = threadpool
        self._limit = limit
        self._pending = 0  # hashes running or waiting for a thread
        self._hasher = argon2.PasswordHasher(
            time_cost=cost.time_cost,
            memory_cost=cost.memory_cost,
            parallelism=cost.parallelism,
        )
        # Verifying against this keeps an unknown user as slow as a wrong password.
        self._decoy = self._hasher.hash("decoy")

    def make_verifier(self, digest: str):
        return self._run(self._hasher.hash, digest)

    def check(self, verifier: str | None, digest: str):
        """Deferred firing True when ``digest`` matches ``verifier`` (None: unknown user)."""
        return self._run(self._check, verifier, digest)

    def _run(self, function, *args):
        if self._limit is not None and self._pending >= self._limit:
            return fail(errors.Busy(BUSY))
        self._pending += 1
        d = deferToThreadPool(self._reactor, self._pool, function, *args)
        d.addBoth(self._finished)
        return d

    def _finished(self, result):
        self._pending -= 1
        if not isinstance(result, Failure):
            return result
        quiet.warn("password hashing failed ({error}); the login was told to try again",
                   error=f"{result.type.__name__}: {result.getErrorMessage()}")
        raise errors.Busy(BUSY)

    def _check(self, verifier: str | None, digest: str) -> bool:
        try:
            self._hasher.verify(verifier or self._decoy, digest)
        except argon2.exceptions.VerifyMismatchError:
            return False
        return verifier is not None


@attrs.define(eq=False)
class _Tally:
    failures: int = 0
    locked_until: float = 0.0
    checking: int = 0  # attempts started and not finished


class LoginThrottle:
    """Who may have a password checked now. One throttle for every port (and every
    registration's hash), so one address gets the same answer wherever it knocks.

    - **Lockout**, per (folded name, address), and per (None, address) for names that are no
      account, so guessing random names locks that address out as guessing one name locks
      the pair, while the account stays open to every other address. An attempt counts from
      the moment it starts: with F failures made, at most ``login_attempts`` - F may be in
      flight, so parallel guesses cannot outrun the count. The ``login_attempts``-th failure
      locks the key for 1 s, each further one doubles that (at most 5 minutes), and after a
      lockout one attempt at a time is let through. A success clears its pair and its
      address's unknown-name tally. An attempt that could not be checked counts for nothing.
    - **In flight**, per address: at most ``logins_per_ip`` logins and registrations hashing
      at once (0: no limit); the rest get ``errors.Busy``. An empty address (an in-process
      caller) is not limited.
    """

    def __init__(self, now: Callable[[], float], limits):
        self._now = now
        self._limits = limits  # read at each attempt: login_attempts, logins_per_ip
        self._tallies: dict[tuple[str | None, str], _Tally] = {}
        self._hashing: Counter[str] = Counter()
        # Called with (name key, address, account, succeeded) once a check is answered: nodes of a
        # cluster tell each other (``counted_elsewhere``), so that one address is throttled alike
        # wherever it knocks.
        self.on_outcome: Callable | None = None

    def attempt(self, name_key: str, address: str, *, account: bool) -> LoginAttempt:
        """Admit a password check for ``name_key`` from ``address``, or raise RateLimited or Busy."""
        pair, unknown = (name_key, address), (None, address)
        now = self._now()
        for key in (pair, unknown):
            tally = self._tallies.get(key)
            if tally is not None and tally.locked_until > now:
                raise errors.LoginThrottled()
        key = pair if account else unknown
        counted = self._tallies.get(key) or _Tally()
        if counted.checking >= max(self._limits.login_attempts - counted.failures, 1):
            raise errors.LoginThrottled()
        attempt = self.hashing(address)
        self._tallies[key] = counted
        counted.checking += 1
        attempt.tally, attempt.keys, attempt.account = counted, (pair, unknown), account
        return attempt

    def hashing(self, address: str) -> LoginAttempt:
        """A slot for one hash from ``address`` (a registration's), or Busy."""
        limit = self._limits.logins_per_ip
        if address and limit and self._hashing[address] >= limit:
            raise errors.Busy(BUSY)
        self._hashing[address] += 1
        return LoginAttempt(self, address)

    def _finish(self, attempt: LoginAttempt):
        self._hashing[attempt.address] -= 1
        if not self._hashing[attempt.address]:
            del self._hashing[attempt.address]
        tally = attempt.tally
        if tally is None:
            return
        tally.checking -= 1
        self._count(tally, attempt.keys, attempt.succeeded)
        if self.on_outcome is not None and attempt.succeeded is not None:
            (name_key, address), _ = attempt.keys
            self.on_outcome(name_key, address, attempt.account, attempt.succeeded)

    def counted_elsewhere(self, name_key: str, address: str, account: bool, succeeded: bool) -> None:
        """Another node checked a password for ``name_key`` from ``address``: count it here too."""
        pair, unknown = (name_key, address), (None, address)
        key = pair if account else unknown
        tally = self._tallies[key] = self._tallies.get(key) or _Tally()
        self._count(tally, (pair, unknown), succeeded)

    def _count(self, tally: _Tally, keys: tuple, succeeded: bool | None):
        if succeeded:
            for key in keys:
                found = self._tallies.get(key)
                if found is not None:
                    found.failures, found.locked_until = 0, 0.0
        elif succeeded is False:
            tally.failures += 1
            excess = tally.failures - self._limits.login_attempts
            if excess >= 0:
                tally.locked_until = self._now() + min(2.0**excess, MAX_LOCKOUT)
        for key in keys:
            self._tidy(key)

    def _tidy(self, key):
        """Forget a tally with nothing in it; keep the one just changed last in line to go."""
        tally = self._tallies.pop(key, None)
        if tally is not None and (tally.failures or tally.checking):
            self._tallies[key] = tally
        while len(self._tallies) > MAX_TALLIES:
            del self._tallies[next(iter(self._tallies))]


class LoginAttempt:
    """One admitted password check (or registration hash); use it as a context manager and
    say ``checked(ok)`` once the answer is known. Leaving it otherwise (an exception, Busy,
    a hashing failure) counts for nothing."""

    def __init__(self, throttle: LoginThrottle, address: str):
        self._throttle = throttle
        self.address = address
        self.tally: _Tally | None = None
        self.keys: tuple = ()  # the throttle keys it is counted under or clears
        self.account = False  # whether the name is an account's
        self.succeeded: bool | None = None

    def checked(self, ok: bool):
        self.succeeded = bool(ok)

    def __enter__(self) -> LoginAttempt:
        return self

    def __exit__(self, *exc_info):
        self._throttle._finish(self)
