"""Logins under attack (issue 13 items 2, 4, 5, 11): a bounded hashing pool and a "busy" reply
on every port, logins in flight per address, one throttle for every port that counts an
attempt when it starts (unknown names too), hashing failures that are never a wrong password,
and fake salts that survive a restart."""

from __future__ import annotations

import collections
import threading

import argon2
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.testing import MemoryReactorClock

from chatserv.credentials import Hasher, password_digest
from chatserv.domain.login import Digest, GuestName, Password, Vouched
from chatserv.limits import Limits
from chatserv.protocols.framing import LengthPrefixFramer
from chatserv.service import ChatService
from chatserv.store.memory import MemoryStore
from tests.support import CHEAP_HASH, INLINE, TIMEOUT, Daemon, HeldHasher, InstantHasher, connect
from tests.test_chatroom import json_client, kv
from tests.test_hostile import connect_from, freeze_service_clock
from tests.test_irc import plain, until
from tests.test_rooms import error, rooms_client
from tests.test_salted import log_in, salted
from tests.web_support import call

OTHER_HOST = "127.0.0.2"
ATTEMPTS = Limits().login_attempts


class HeldPool:
    """A thread pool that runs its jobs only when the test says so."""

    def __init__(self):
        self.jobs = []

    def callInThreadWithCallback(self, on_result, function, *args, **kwargs):
        self.jobs.append(lambda: on_result(True, function(*args, **kwargs)))

    def run_next(self):
        self.jobs.pop(0)()


class Refused(str):
    """The name of the error a Deferred failed with (the failure is handled)."""


def outcome(d: defer.Deferred):
    """What a Deferred came to so far: its result, the name of its error, or "pending"."""
    seen = []

    def note(result):
        seen.append(result)
        return result

    d.addCallbacks(note, lambda failure: note(Refused(failure.type.__name__)))
    return seen[0] if seen else "pending"


async def held_service(**limits) -> tuple[ChatService, HeldHasher, MemoryReactorClock]:
    hasher, clock = HeldHasher(), MemoryReactorClock()
    chat = ChatService(MemoryStore(), hasher, clock, Limits(**limits))
    chat.startService()
    await chat.when_ready()
    await chat.register("alice", "right")
    return chat, hasher, clock


# item 4: an attempt counts when it starts


@pytest_twisted.ensureDeferred
async def test_parallel_guesses_cannot_outrun_the_lockout():
    chat, hasher, clock = await held_service(logins_per_ip=0)  # only the lockout limits them here
    guesses = [chat.authenticate("alice", "wrong", "10.0.0.1") for _ in range(59)]
    guesses.append(chat.authenticate("alice", "right", "10.0.0.1"))
    hasher.release()
    outcomes = [outcome(d) for d in guesses]
    assert len(hasher.checks) == ATTEMPTS  # at most --login-attempts passwords were checked
    assert collections.Counter(outcomes) == {"BadCredentials": ATTEMPTS, "LoginThrottled": 60 - ATTEMPTS}
    assert outcomes[-1] == "LoginThrottled"  # the right password, 60th, was never tried

    clock.advance(1.5)  # the first lockout is over: one attempt at a time now
    after = [chat.authenticate("alice", "right", "10.0.0.1") for _ in range(3)]
    assert [outcome(d) for d in after] == ["pending", "LoginThrottled", "LoginThrottled"]
    hasher.release()
    assert outcome(after[0]).username == "alice"


# item 2: logins in flight per address, unknown names, the hashing pool and its queue


@pytest_twisted.ensureDeferred
async def test_an_address_has_at_most_two_logins_in_flight_and_others_are_not_held_up():
    chat, hasher, _ = await held_service()
    first = [chat.authenticate("alice", "wrong", "10.0.0.1") for _ in range(2)]
    third = chat.authenticate("alice", "right", "10.0.0.1")
    assert outcome(third) == "Busy" and len(hasher.checks) == 2  # refused before any hashing
    elsewhere = chat.authenticate("alice", "right", "10.0.0.2")
    hasher.release()
    assert [outcome(d) for d in first] == ["BadCredentials", "BadCredentials"]
    assert outcome(elsewhere).username == "alice"
    assert outcome(chat.authenticate("alice", "wrong", "10.0.0.1")) == "pending"  # room again
    hasher.release()


@pytest_twisted.ensureDeferred
async def test_guessing_random_names_locks_out_the_address_but_not_the_accounts():
    daemon = await Daemon().start()
    try:
        freeze_service_clock(daemon)
        await daemon.chat.register("alice", "right")
        guesser = await connect(daemon.port("skype"))
        for number in range(ATTEMPTS):
            assert await guesser.request(b"LOGIN nobody%d guess" % number) == b"300 Not OK"
        again = await connect(daemon.port("skype"))
        assert await again.request(b"LOGIN alice right") == b"300 Not OK"  # the address waits
        elsewhere = await connect_from(OTHER_HOST, daemon.port("skype"))
        assert await elsewhere.request(b"LOGIN alice right") == b"200 OK"
    finally:
        await daemon.stop()


def test_hashes_beyond_the_threads_and_their_queue_are_refused_at_once_as_busy():
    pool = HeldPool()
    hasher = Hasher(INLINE, pool, CHEAP_HASH, limit=3)  # e.g. 2 threads + 1 waiting
    admitted = [hasher.check(None, "digest") for _ in range(3)]
    assert [outcome(d) for d in admitted] == ["pending"] * 3
    assert outcome(hasher.check(None, "digest")) == "Busy"
    assert outcome(hasher.make_verifier("digest")) == "Busy"
    pool.run_next()
    assert outcome(admitted[0]) is False  # done: its place is free again
    queued = hasher.check(None, "digest")
    assert outcome(queued) == "pending"
    while pool.jobs:
        pool.run_next()
    assert [outcome(d) for d in admitted[1:]] + [outcome(queued)] == [False, False, False]


class HeldArgon2:
    """argon2's verify, held in the hashing threads until the test releases it."""

    def __init__(self, monkeypatch):
        self.entered = defer.DeferredQueue()
        self.released = threading.Event()
        self.threads = set()
        verify = argon2.PasswordHasher.verify

        def held(hasher, hashed, password):
            self.threads.add(threading.current_thread().name)
            reactor.callFromThread(self.entered.put, None)
            self.released.wait(TIMEOUT)
            return verify(hasher, hashed, password)

        monkeypatch.setattr(argon2.PasswordHasher, "verify", held)

    async def wait_entered(self, count: int):
        for _ in range(count):
            await self.entered.get().addTimeout(TIMEOUT, reactor)


@pytest_twisted.ensureDeferred
async def test_every_port_says_busy_when_the_address_has_its_logins_in_flight(monkeypatch):
    held = HeldArgon2(monkeypatch)
    daemon = await Daemon(extra=["--hash-threads", "3"]).start()
    try:
        await daemon.chat.register("alice", "pw")
        holders = [await connect(daemon.port("skype")) for _ in range(2)]
        for holder in holders:
            holder.send(b"LOGIN alice pw")
        await held.wait_entered(2)  # two logins from 127.0.0.1 are hashing

        skype = await connect(daemon.port("skype"))
        assert await skype.request(b"LOGIN alice pw") == b"503 Busy, try again"
        assert await skype.request(b"CREATE bob pw") == b"503 Busy, try again"  # registrations hash too
        framed = await connect(daemon.port("skype-framed"), LengthPrefixFramer(100))
        assert await framed.receive() == b"200 OK"
        assert await framed.request(b"LOGIN alice pw") == b"503 Busy, try again"

        client = await salted(daemon)
        salt = (await client.request(user="alice", type="salt"))["salt"]
        assert await client.request(user="alice", type="login", password=password_digest(salt, "pw")) == {
            "type": "error", "message": "server busy, try again"}

        chatroom = await json_client(daemon)
        assert await chatroom.request(type="auth", username="alice", password="pw") == {
            "result": "server busy, try again"}
        assert await kv(daemon, "password:pw:port:5679:type:auth:username:alice") == {
            "result": "server busy, try again"}

        rooms = await rooms_client(daemon)
        assert await rooms.call(2, ["alice", "pw"]) == error("Server busy, try again.")

        sasl = await connect(daemon.port("irc"))
        sasl.send(b"CAP LS 302", b"CAP REQ :sasl", b"NICK alice", b"USER u 0 * :U", b"AUTHENTICATE PLAIN")
        await until(sasl, b"AUTHENTICATE +")
        sasl.send(b"AUTHENTICATE " + plain("alice", "pw"))
        lines = await until(sasl, b" 904 ")  # the exchange ends, so the client goes on (or retries)
        assert lines[-2] == b":chatserv 263 alice AUTHENTICATE :Server busy, try again"
        password = await connect(daemon.port("irc"))
        password.send(b"PASS pw", b"NICK alice", b"USER u 0 * :U")
        lines = await until(password, b"ERROR")  # closed, so the client reconnects
        assert b":chatserv 263 alice PASS :Server busy, try again" in lines

        assert await call(daemon, "/login", "POST", data={"username": "alice", "password": "pw"}) == (
            503, {"error": "Server busy, try again"})

        elsewhere = await connect_from(OTHER_HOST, daemon.port("skype"))
        elsewhere.send(b"LOGIN alice pw")
        await held.wait_entered(1)  # another address is served meanwhile
        held.released.set()
        assert [await holder.receive() for holder in holders] == [b"200 OK", b"200 OK"]
        assert await elsewhere.receive() == b"200 OK"
        assert all(name.startswith("PoolThread-chatserv-hash") for name in held.threads)
    finally:
        held.released.set()
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_a_hash_that_fails_inside_argon2_is_busy_never_a_wrong_password(monkeypatch):
    def out_of_memory(*args):
        raise argon2.exceptions.VerificationError("Memory allocation error")  # argon2-cffi's words

    daemon = await Daemon().start()
    try:
        await daemon.chat.register("alice", "pw")
        monkeypatch.setattr(argon2.PasswordHasher, "verify", out_of_memory)
        monkeypatch.setattr(argon2.PasswordHasher, "hash", out_of_memory)
        skype = await connect(daemon.port("skype"))
        for _ in range(2 * ATTEMPTS):  # neither the lockout nor the connection counts them
            assert await skype.request(b"LOGIN alice pw") == b"503 Busy, try again"
        assert await skype.request(b"CREATE bob pw") == b"503 Busy, try again"
        monkeypatch.undo()
        assert await skype.request(b"LOGIN alice pw") == b"200 OK"
    finally:
        await daemon.stop()


# item 5: the salted port passes the caller's address to the one throttle


@pytest_twisted.ensureDeferred
async def test_salted_failures_lock_out_only_their_address_and_count_on_every_port():
    daemon = await Daemon().start()
    try:
        freeze_service_clock(daemon)
        await daemon.chat.register("alice", "right")
        for _ in range(ATTEMPTS):
            guesser = await salted(daemon)
            salt = (await guesser.request(user="alice", type="salt"))["salt"]
            wrong = password_digest(salt, "wrong")
            assert await guesser.request(user="alice", type="login", password=wrong) == {
                "type": "login", "success": "false"}
            guesser.close()
        await log_in(daemon, "alice", "right", host=OTHER_HOST)  # the account is open elsewhere
        skype = await connect(daemon.port("skype"))
        assert await skype.request(b"LOGIN alice right") == b"300 Not OK"  # same address, other port
    finally:
        await daemon.stop()


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


# issue 14 item 4: one login path for every port


class Gate:
    """A sink whose port admits a login or not, and records the session it got."""

    def __init__(self, admits: bool):
        self.admits = admits
        self.session = None

    def deliver(self, event):
        pass

    def admit(self, user):
        return self.admits

    def attached(self, session):
        self.session = session


async def ready_service() -> ChatService:
    chat = ChatService(MemoryStore(), InstantHasher(), MemoryReactorClock())
    chat.startService()
    await chat.when_ready()
    return chat


@pytest_twisted.ensureDeferred
async def test_one_login_call_takes_any_credentials_and_hands_over_the_waiting_messages():
    chat = await ready_service()
    alice = await chat.register("alice", "pw")
    await chat.send_direct(await chat.register("bob", "pw"), "alice", "while you were away")
    digest = password_digest(chat.salt_for("alice"), "pw")
    for credentials in (Password("alice", "pw"), Digest("alice", digest), Vouched(alice)):
        sink = Gate(admits=True)
        result = await chat.log_in(credentials, sink, "test", "127.0.0.1", waiting=True)
        assert (result.user, result.session, sink.session) == (alice, sink.session, result.session)
        assert [m.body for m in result.waiting] == ["while you were away"]
        chat.detach(result.session)
    checked_only = await chat.log_in(Password("alice", "pw"), address="127.0.0.1")
    assert (checked_only.user, checked_only.session) == (alice, None)
    assert outcome(chat.log_in(Password("alice", "wrong"), address="127.0.0.1")) == "BadCredentials"


@pytest_twisted.ensureDeferred
async def test_a_guest_whose_port_refuses_the_login_leaves_its_name_free():
    chat = await ready_service()
    refused = await chat.log_in(GuestName("visitor"), Gate(admits=False), "test", "127.0.0.1")
    assert refused.session is None and not chat.is_online(refused.user)
    admitted = await chat.log_in(GuestName("visitor"), Gate(admits=True), "test", "127.0.0.1")
    assert admitted.user.username == "visitor" and chat.is_online(admitted.user)


@pytest_twisted.ensureDeferred
async def test_a_guest_session_logging_in_becomes_the_account_and_keeps_its_rooms():
    chat = await ready_service()
    account = await chat.register("alice", "pw")
    sink = Gate(admits=True)
    guest = await chat.log_in(GuestName("visitor"), sink, "test", "127.0.0.1")
    await chat.join_room(guest.user, "lobby")
    result = await chat.log_in(Password("alice", "pw"), sink, "test", "127.0.0.1",
                               guest_session=guest.session)
    assert result.session is guest.session and result.session.user is account
    assert [room.name for room in chat.rooms_of(account)] == ["lobby"]
    assert not chat.is_online(guest.user)
