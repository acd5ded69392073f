"""Logins under attack (issue 13): fake salts that survive a restart."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock

from chatserv.service import ChatService
from chatserv.store.memory import MemoryStore
from tests.support import Daemon
from tests.test_salted import salted


class HeldHasher:
    """Checks passwords only when the test releases them (registrations are instant)."""

    def __init__(self):
        self.checks: list[tuple[defer.Deferred, bool]] = []

    def make_verifier(self, digest):
        return defer.succeed("v:" + digest)

    def check(self, verifier, digest):
        self.checks.append((defer.Deferred(), verifier == "v:" + digest))
        return self.checks[-1][0]

    def release(self):
        for waiting, ok in self.checks:
            if not waiting.called:
                waiting.callback(ok)



# item 11: fake salts derive from a secret kept in the store


@pytest_twisted.ensureDeferred
async def test_the_fake_salt_of_an_unknown_name_survives_a_restart(tmp_path):
    daemon = await Daemon(str(tmp_path / "chat.sqlite3")).start()
    try:
        before = (await (await salted(daemon)).request(user="ghost", type="salt"))["salt"]
        await daemon.restart()
        after = (await (await salted(daemon)).request(user="ghost", type="salt"))["salt"]
        assert after == before and len(after) == 32 and after.isdigit()
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_the_memory_store_keeps_its_salt_secret_for_a_restarted_service():
    store = MemoryStore()
    salts = []
    for _ in range(2):
        chat = ChatService(store, HeldHasher(), MemoryReactorClock())
        chat.startService()
        await chat.when_ready()
        salts.append(chat.salt_for("ghost"))
        await chat.stopService()
    assert salts[0] == salts[1]
    other = ChatService(MemoryStore(), HeldHasher(), MemoryReactorClock())
    other.startService()
    await other.when_ready()
    assert other.salt_for("ghost") != salts[0]  # a secret, not a constant
