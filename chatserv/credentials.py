"""One credential scheme for every port (DESIGN.md, "Credentials").

Each user has a 32-digit decimal salt. The stored verifier is argon2id over
``sha256_hex(salt + password)``: ports that receive a plain password compute that digest
first; the salted port (seed 002) receives the digest from the client. Argon2 runs in a
thread so the reactor never waits on it.
"""

from __future__ import annotations

import hashlib
import secrets

import argon2
import attrs
from twisted.internet.threads import deferToThreadPool


def new_salt() -> str:
    """A random 32-digit integer as a string, as seed 002 specifies."""
    return str(10**31 + secrets.randbelow(9 * 10**31))


def password_digest(salt: str, password: str) -> str:
    """What the salted client sends and what the verifier hashes: sha256(salt + password)."""
    return hashlib.sha256((salt + password).encode("utf-8")).hexdigest()


@attrs.define
class HashCost:
    """argon2id cost parameters; tests lower them, production keeps the library defaults."""

    time_cost: int = argon2.DEFAULT_TIME_COST
    memory_cost: int = argon2.DEFAULT_MEMORY_COST
    parallelism: int = argon2.DEFAULT_PARALLELISM


class Hasher:
    """Makes and checks verifiers off the reactor thread."""

    def __init__(self, reactor, threadpool, cost: HashCost = HashCost()):
        self._reactor = reactor
        self._pool = threadpool
        self._hasher = argon2.PasswordHasher(
            time_cost=cost.time_cost,
            memory_cost=cost.memory_cost,
            parallelism=cost.parallelism,
        )
        # Verifying against this keeps an unknown user as slow as a wrong password.
        self._decoy = self._hasher.hash("decoy")

    def make_verifier(self, digest: str):
        return deferToThreadPool(self._reactor, self._pool, self._hasher.hash, digest)

    def check(self, verifier: str | None, digest: str):
        """Deferred firing True when ``digest`` matches ``verifier`` (None: unknown user)."""
        return deferToThreadPool(self._reactor, self._pool, self._check, verifier, digest)

    def _check(self, verifier: str | None, digest: str) -> bool:
        try:
            self._hasher.verify(verifier or self._decoy, digest)
        except argon2.exceptions.VerificationError:
            return False
        except argon2.exceptions.InvalidHashError:
            return False
        return verifier is not None
