"""ChatService over the stores: accounts, presence, contacts, rooms, messages; what must outlive a
restart, on every engine."""

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from chatserv import errors, events
from chatserv.bus import Subscription
from chatserv.credentials import password_digest
from chatserv.domain.login import Vouched
from chatserv.events import UserRef
from chatserv.model import LOBBY, RoomChange
from chatserv.service import ChatService
from chatserv.store import open_store
from chatserv.store.memory import MemoryStore
from tests.support import PostgresOutage, cheap_hasher


class Sink:
    def __init__(self):
        self.events = []

    def deliver(self, event):
        self.events.append(event)

    def of(self, kind):
        return [e for e in self.events if isinstance(e, kind)]


async def start(db):
    hasher = cheap_hasher()
    chat = ChatService(open_store(db, reactor), hasher, reactor)
    chat.startService()
    return await chat.when_ready()


@pytest_twisted.async_yield_fixture
async def chat(db):
    service = await start(db)
    yield service
    await service.stopService()


async def users(chat, *names):
    return [await chat.register(name, f"{name}-pw") for name in names]


@pytest_twisted.ensureDeferred
async def test_register_then_authenticate(chat):
    alice = await chat.register("alice", "secret")
    assert len(alice.salt) == 32 and alice.salt.isdigit()
    assert "secret" not in alice.verifier and alice.verifier.startswith("$argon2id$")
    assert (await chat.authenticate("ALICE", "secret")) is alice
    assert (await chat.authenticate_digest("alice", password_digest(alice.salt, "secret"))) is alice
    for name, password in [("alice", "wrong"), ("nobody", "secret"), (None, "x")]:
        with pytest.raises(errors.BadCredentials):
            await chat.authenticate(name, password)


@pytest_twisted.ensureDeferred
async def test_names_are_unique_case_insensitively_and_must_be_valid(chat):
    await chat.register("alice", "pw")
    with pytest.raises(errors.AlreadyExists):
        await chat.register("Alice", "pw")
    for bad in ["", "1abc", "has space", "x" * 33, "NickServ", 42]:
        with pytest.raises(errors.Invalid):
            await chat.register(bad, "pw")
    with pytest.raises(errors.Invalid):
        await chat.register("bob", "")


@pytest_twisted.ensureDeferred
async def test_salts_reveal_no_accounts(chat):
    alice = await chat.register("alice", "pw")
    assert chat.salt_for("alice") == alice.salt
    fake = chat.salt_for("ghost")
    assert fake == chat.salt_for("GHOST") and len(fake) == 32 and fake.isdigit()


@pytest_twisted.ensureDeferred
async def test_accounts_contacts_and_rooms_survive_a_restart(store_db):
    if store_db == "memory":
        pytest.skip("an in-memory store forgets by design")
    db = store_db
    chat = await start(db)
    alice, bob = await users(chat, "alice", "bob")
    await chat.add_contact(alice, "bob")
    await chat.create_room(alice, "games")
    await chat.send_direct(alice, "bob", "hello")
    await chat.stopService()

    chat = await start(db)
    alice = await chat.authenticate("alice", "alice-pw")
    assert [(u.username, s) for u, s in chat.contacts(alice)] == [("bob", "friend")]
    assert [m.body for m in await chat.direct_history(alice, "bob")] == ["hello"]
    assert chat.rooms_of(alice)[0].name == "games"
    assert [r.name for r in chat.rooms()] == ["games", LOBBY]
    await chat.stopService()


@pytest_twisted.ensureDeferred
async def test_while_postgresql_is_gone_nothing_is_acknowledged_or_delivered(
        postgresql_url, postgresql_admin):
    chat = await start(postgresql_url)
    alice, bob = await users(chat, "alice", "bob")
    await chat.join_room(bob, LOBBY)
    await chat.join_room(alice, LOBBY)
    bob_sink = Sink()
    chat.attach(bob, bob_sink, "test")
    outage = PostgresOutage(postgresql_admin, postgresql_url)
    outage.begin()
    with pytest.raises(errors.StoreUnavailable):
        await chat.send_room(alice, LOBBY, "lost")
    with pytest.raises(errors.StoreUnavailable):
        await chat.send_direct(alice, "bob", "lost too")
    assert bob_sink.of(events.RoomMessage) == bob_sink.of(events.DirectMessage) == []
    outage.end()
    await chat.send_room(alice, LOBBY, "kept")
    assert [e.message.body for e in bob_sink.of(events.RoomMessage)] == ["kept"]
    assert [m.body for m in await chat.room_history(bob, LOBBY)] == ["kept"]
    await chat.stopService()


@pytest_twisted.ensureDeferred
async def test_presence_reaches_contacts_and_watchers_once(chat):
    alice, bob, carol = await users(chat, "alice", "bob", "carol")
    await chat.add_contact(bob, "alice")
    bob_sink, carol_sink, watcher = Sink(), Sink(), Sink()
    chat.attach(bob, bob_sink, "test")
    chat.attach(carol, carol_sink, "test")
    chat.attach(carol, watcher, "test", subscribes=Subscription.DIRECT | Subscription.PRESENCE)
    first = chat.attach(alice, Sink(), "test", "10.1.1.1")
    second = chat.attach(alice, Sink(), "other")
    assert [(e.user.username, e.online) for e in bob_sink.of(events.PresenceChanged)] == [("alice", True)]
    assert carol_sink.of(events.PresenceChanged) == []
    assert [e.user.username for e in watcher.of(events.PresenceChanged)] == ["alice"]
    assert chat.is_online(alice) and [s.address for s in chat.sessions_of(alice)] == ["10.1.1.1", ""]
    chat.detach(first)
    assert chat.is_online(alice)
    chat.detach(second)
    assert not chat.is_online(alice)
    assert [e.online for e in bob_sink.of(events.PresenceChanged)] == [True, False]


@pytest_twisted.ensureDeferred
async def test_contacts_and_blocks(chat):
    alice, bob = await users(chat, "alice", "bob")
    bob_sink = Sink()
    chat.attach(bob, bob_sink, "test")
    await chat.add_contact(alice, "bob")
    await chat.add_contact(alice, "bob")  # idempotent
    assert [e.status for e in bob_sink.of(events.ContactChanged)] == ["friend"]
    with pytest.raises(errors.NotFound):
        await chat.add_contact(alice, "nobody")
    with pytest.raises(errors.Invalid):
        await chat.add_contact(alice, "alice")
    with pytest.raises(errors.Invalid):
        await chat.set_contact(alice, "bob", "enemy")

    await chat.block(bob, "alice")
    assert chat.has_blocked(bob, alice) and not chat.has_blocked(alice, bob)
    with pytest.raises(errors.Blocked):
        await chat.send_direct(alice, "bob", "hi")
    await chat.unblock(bob, "alice")
    await chat.send_direct(alice, "bob", "hi")
    assert [e.message.body for e in bob_sink.of(events.DirectMessage)] == ["hi"]

    await chat.remove_contact(alice, "bob")
    assert chat.contacts(alice) == []
    with pytest.raises(errors.NotFound):
        await chat.remove_contact(alice, "bob")


@pytest_twisted.ensureDeferred
async def test_unblocking_restores_the_contact_the_block_replaced_and_tells_only_the_owner(store_db):
    db = store_db
    chat = await start(db)
    alice, bob, carol = await users(chat, "alice", "bob", "carol")
    await chat.set_contact(alice, "bob", "last_words")
    await chat.block(alice, "bob")
    await chat.block(alice, "carol")  # no contact before: unblocking leaves none
    assert chat.contacts(alice) == [(bob, "blocked"), (carol, "blocked")]
    if db != "memory":  # what the block replaced is kept across a restart
        await chat.stopService()
        chat = await start(db)
        alice, bob = chat.user("alice"), chat.user("bob")
    alice_sink, bob_sink = Sink(), Sink()
    chat.attach(alice, alice_sink, "test")
    chat.attach(bob, bob_sink, "test")

    await chat.unblock(alice, "bob")
    await chat.unblock(alice, "carol")
    await chat.unblock(alice, "carol")  # nothing to lift: nothing changes
    assert [(u.username, s) for u, s in chat.contacts(alice)] == [("bob", "last_words")]
    assert [(e.contact.username, e.status) for e in alice_sink.of(events.ContactChanged)] == [
        ("bob", "last_words"), ("carol", None)]
    # Lifting a block (here or as seed 004's changeContact) never tells the other "you were added".
    await chat.block(alice, "bob")
    await chat.set_contact(alice, "bob", "friend")
    assert [e.status for e in bob_sink.of(events.ContactChanged)] == ["blocked"]
    await chat.stopService()


@pytest_twisted.ensureDeferred
async def test_room_messages_fan_out_to_members_but_not_origin_or_blockers(chat):
    alice, bob, carol, dave = await users(chat, "alice", "bob", "carol", "dave")
    sinks = {name: Sink() for name in ["alice", "alice2", "bob", "carol", "dave"]}
    origin = chat.attach(alice, sinks["alice"], "test")
    chat.attach(alice, sinks["alice2"], "test")
    chat.attach(bob, sinks["bob"], "test")
    chat.attach(carol, sinks["carol"], "test")
    chat.attach(dave, sinks["dave"], "test")
    room = await chat.create_room(alice, "games")
    await chat.join_room(bob, "GAMES")
    await chat.join_room(carol, "games")
    await chat.block(carol, "alice")
    with pytest.raises(errors.AlreadyExists):
        await chat.create_room(bob, "Games")
    with pytest.raises(errors.Denied):
        await chat.send_room(dave, "games", "let me in")

    sent = await chat.send_room(alice, "games", "hello all", origin=origin)
    got = {name: [e.message.body for e in s.of(events.RoomMessage)] for name, s in sinks.items()}
    assert got == {"alice": [], "alice2": ["hello all"], "bob": ["hello all"], "carol": [], "dave": []}
    assert [m.id for m in await chat.room_history(bob, "games")] == [sent.id]
    with pytest.raises(errors.Denied):
        chat.room_history(dave, "games")
    joined = [(e.user.username, e.joined) for e in sinks["alice2"].of(events.MembershipChanged)]
    assert joined == [("alice", True), ("bob", True), ("carol", True)]

    await chat.leave_room(bob, "games")
    assert [u.username for u in chat.members(room)] == ["alice", "carol"]
    with pytest.raises(errors.Denied):
        await chat.leave_room(bob, "games")


@pytest_twisted.ensureDeferred
async def test_deliveries_count_the_sessions_a_message_reached(chat):
    alice, bob, carol = await users(chat, "alice", "bob", "carol")
    origin = chat.attach(alice, Sink(), "test")
    chat.attach(alice, Sink(), "test")
    chat.attach(bob, Sink(), "test")
    await chat.create_room(alice, "games")
    await chat.join_room(bob, "games")
    await chat.join_room(carol, "games")  # offline: nothing is handed to carol
    await chat.send_room(alice, "games", "hi", origin=origin)
    assert chat.stats["deliveries"] == 2  # alice's other session and bob
    await chat.send_direct(alice, "bob", "psst", origin=origin)
    assert chat.stats["deliveries"] == 4  # bob, and alice's other session
    await chat.send_direct(alice, "carol", "later")
    assert chat.stats["deliveries"] == 6  # alice's two sessions: carol is offline
    samples = {s.name: s.value for s in chat.delivery_latency.collect()[0].samples}
    assert samples["chatserv_delivery_latency_seconds_count"] == 3  # one per message


@pytest_twisted.ensureDeferred
async def test_conversations_list_everyone_written_to_with_unread_counts(chat):
    alice, bob, carol, dave = await users(chat, "alice", "bob", "carol", "dave")
    await chat.add_contact(alice, "dave")  # a contact never written to
    await chat.create_room(alice, "games")
    await chat.send_direct(bob, alice, "one")
    await chat.send_direct(bob, alice, "two")
    await chat.send_direct(carol, alice, "hello from a stranger")
    await chat.send_room(alice, "games", "anyone?")

    def listed(conversations):
        return [(c.room.name if c.room else c.peer.username, c.last and c.last.body, c.unread)
                for c in conversations]

    found = await chat.conversations(alice)
    assert listed(found) == [("games", "anyone?", 0), ("carol", "hello from a stranger", 1),
                             ("bob", "two", 2), ("dave", None, 0)]
    assert found[0].room is not None and found[1].peer is carol
    newest_two = await chat.conversations(alice, limit=2)
    assert listed(await chat.conversations(alice, before=newest_two[-1].last.id)) == listed(found[2:])

    sessions = [Sink(), Sink()]
    for sink in sessions:
        chat.attach(alice, sink, "test")
    assert await chat.mark_read(alice, peer=bob) == found[2].last.id
    assert [(e.peer, e.up_to) for s in sessions for e in s.of(events.ReadMarked)] == [
        (UserRef.of(bob), found[2].last.id)] * 2
    await chat.send_room(alice, "games", "more")  # one's own messages are never unread
    await chat.join_room(bob, "games")
    await chat.mark_read(alice, room=found[0].room, up_to=0)
    await chat.send_room(bob, "games", "yes!")
    assert listed(await chat.conversations(alice))[:3] == [
        ("games", "yes!", 1), ("carol", "hello from a stranger", 1), ("bob", "two", 0)]
    with pytest.raises(errors.Denied):
        await chat.mark_read(carol, room=found[0].room)


@pytest_twisted.ensureDeferred
async def test_presence_reaches_those_who_watch_a_non_contact(chat):
    alice, bob = await users(chat, "alice", "bob")
    sink = Sink()
    session = chat.attach(alice, sink, "test")
    chat.watch_presence_of(session, [bob])
    bob_session = chat.attach(bob, Sink(), "test")
    chat.detach(bob_session)
    assert [(e.user, e.online) for e in sink.of(events.PresenceChanged)] == [
        (UserRef.of(bob), True), (UserRef.of(bob), False)]
    chat.detach(session)
    chat.attach(bob, Sink(), "test")
    assert len(sink.of(events.PresenceChanged)) == 2 and chat.bus._watchers == {}


@pytest_twisted.ensureDeferred
async def test_direct_messages_wait_in_the_inbox_until_taken(chat):
    alice, bob = await users(chat, "alice", "bob")
    await chat.send_direct(alice, "bob", "while you were out")
    skype_like = chat.attach(bob, Sink(), "test", subscribes=Subscription.NONE)
    await chat.send_direct(alice, "bob", "you cannot see this here")
    chat.detach(skype_like)
    waiting = await chat.take_undelivered(bob)
    assert [m.body for m in waiting] == ["while you were out", "you cannot see this here"]
    assert await chat.take_undelivered(bob) == []
    assert [m.body for m in await chat.inbox(bob)] == [m.body for m in waiting]
    with pytest.raises(errors.Invalid):
        await chat.send_direct(alice, "bob", "")
    with pytest.raises(errors.Invalid):
        await chat.send_direct(alice, "bob", "x" * (chat.limits.max_body + 1))


class LoginSink(Sink):
    """A sink a login attaches a session to."""

    def admit(self, user):
        return True

    def attached(self, session):
        pass


async def waiting_at_login(chat, user) -> list[str]:
    """What a login that shows the waiting direct messages (and marks them) shows."""
    login = await chat.log_in(Vouched(user), LoginSink(), "test", subscribes=Subscription.DIRECT,
                              waiting=True)
    await chat.mark_delivered(user, login.waiting)
    chat.detach(login.session)
    return [m.body for m in login.waiting]


@pytest_twisted.ensureDeferred
async def test_the_store_says_which_direct_messages_still_wait(store_db):
    """Shown live: never waiting again, even after a restart; not shown: waiting exactly once."""
    if store_db == "memory":
        pytest.skip("an in-memory store forgets by design")
    chat = await start(store_db)
    alice, bob = await users(chat, "alice", "bob")
    live = chat.attach(bob, Sink(), "test", subscribes=Subscription.DIRECT)
    await chat.send_direct(alice, "bob", "shown live")
    chat.detach(live)
    await chat.send_direct(alice, "bob", "while you were out")
    shows_nothing = chat.attach(bob, Sink(), "test", subscribes=Subscription.NONE)
    await chat.send_direct(alice, "bob", "not shown on this wire")
    chat.detach(shows_nothing)
    assert [e.message.body for e in live.sink.of(events.DirectMessage)] == ["shown live"]
    await chat.stopService()

    chat = await start(store_db)
    bob = await chat.authenticate("bob", "bob-pw")
    assert await waiting_at_login(chat, bob) == ["while you were out", "not shown on this wire"]
    assert await waiting_at_login(chat, bob) == []
    await chat.stopService()


@pytest_twisted.ensureDeferred
async def test_a_session_gone_while_the_message_is_stored_leaves_it_waiting(chat):
    alice, bob = await users(chat, "alice", "bob")
    live = chat.attach(bob, Sink(), "test", subscribes=Subscription.DIRECT)
    stored, add_message = defer.Deferred(), chat.store.add_message
    chat.store.add_message = lambda message: stored.addCallback(lambda _: add_message(message))
    sending = chat.send_direct(alice, "bob", "after you left")
    chat.detach(live)  # bob logs out while the message is being stored
    stored.callback(None)
    await sending
    assert live.sink.of(events.DirectMessage) == []
    assert await waiting_at_login(chat, bob) == ["after you left"]


@pytest_twisted.ensureDeferred
async def test_a_login_does_not_show_as_waiting_what_was_just_shown_live(chat):
    """The delivery mark of a message shown live may not be committed when a second session of
    the same user logs in: it is not handed over again all the same."""
    alice, bob = await users(chat, "alice", "bob")
    live = chat.attach(bob, Sink(), "test", subscribes=Subscription.DIRECT)
    chat.store.mark_delivered = lambda message_ids: defer.Deferred()  # never committed
    await chat.send_direct(alice, "bob", "shown live")
    assert [e.message.body for e in live.sink.of(events.DirectMessage)] == ["shown live"]
    login = await chat.log_in(Vouched(bob), LoginSink(), "test", subscribes=Subscription.DIRECT, waiting=True)
    assert login.waiting == []


@pytest_twisted.ensureDeferred
async def test_guests_hold_their_name_only_while_online(chat):
    await users(chat, "alice")
    with pytest.raises(errors.AlreadyExists):
        chat.guest("alice")
    guest = chat.guest("visitor")
    assert guest.guest
    with pytest.raises(errors.AlreadyExists):
        await chat.register("visitor", "pw")
    session = chat.attach(guest, Sink(), "test")
    await chat.join_room(guest, LOBBY)
    chat.detach(session)
    assert guest.id not in chat.room(LOBBY).members
    assert (await chat.register("visitor", "pw")).username == "visitor"


@pytest_twisted.ensureDeferred
async def test_kick_others_ends_only_same_protocol_sessions(chat):
    (alice,) = await users(chat, "alice")
    old, other_protocol, new = Sink(), Sink(), Sink()
    chat.attach(alice, old, "chatroom")
    chat.attach(alice, other_protocol, "irc")
    chat.kick_others(chat.attach(alice, new, "chatroom"), "logged in elsewhere")
    assert [e.reason for e in old.of(events.Kicked)] == ["logged in elsewhere"]
    assert other_protocol.of(events.Kicked) == new.of(events.Kicked) == []


@pytest_twisted.ensureDeferred
async def test_failed_logins_lock_out_that_address_for_a_doubling_time():
    from twisted.internet.testing import MemoryReactorClock

    clock = MemoryReactorClock()
    hasher = cheap_hasher()
    chat = ChatService(open_store("memory", reactor), hasher, clock)
    chat.startService()
    await chat.when_ready()
    await chat.register("alice", "right")
    for _ in range(chat.limits.login_attempts):
        with pytest.raises(errors.BadCredentials):
            await chat.authenticate("alice", "wrong", "10.0.0.1")
    with pytest.raises(errors.RateLimited):
        await chat.authenticate("alice", "right", "10.0.0.1")  # even the right password waits
    assert (await chat.authenticate("alice", "right", "10.0.0.2")).username == "alice"
    clock.advance(1.5)
    with pytest.raises(errors.BadCredentials):
        await chat.authenticate("alice", "wrong", "10.0.0.1")
    with pytest.raises(errors.RateLimited):
        await chat.authenticate("alice", "right", "10.0.0.1")
    clock.advance(1.5)  # the second lock lasts two seconds
    with pytest.raises(errors.RateLimited):
        await chat.authenticate("alice", "right", "10.0.0.1")
    clock.advance(1)
    assert (await chat.authenticate("alice", "right", "10.0.0.1")).username == "alice"


@pytest_twisted.ensureDeferred
async def test_each_failure_has_a_type_of_its_own_under_the_broad_one(chat):
    """Ports tell failures apart by type (UserNotFound vs RoomNotFound), never by their words."""
    alice, bob = await users(chat, "alice", "bob")
    await chat.create_room(alice, "games")
    failures = [
        (errors.UsernameTaken, errors.AlreadyExists, lambda: chat.register("ALICE", "pw")),
        (errors.ReservedUsername, errors.Invalid, lambda: chat.register("NickServ", "pw")),
        (errors.InvalidUsername, errors.Invalid, lambda: chat.register("1abc", "pw")),
        (errors.EmptyPassword, errors.Invalid, lambda: chat.register("carol", "")),
        (errors.UserNotFound, errors.NotFound, lambda: chat.user("nobody")),
        (errors.UserNotFound, errors.NotFound, lambda: chat.user_by_id(10**9)),
        (errors.RoomNotFound, errors.NotFound, lambda: chat.room("nowhere")),
        (errors.RoomNotFound, errors.NotFound, lambda: chat.room_by_id(10**9)),
        (errors.RoomExists, errors.AlreadyExists, lambda: chat.create_room(bob, "GAMES")),
        (errors.InvalidRoomName, errors.Invalid, lambda: chat.create_room(bob, "has space")),
        (errors.NotMember, errors.Denied, lambda: chat.leave_room(bob, "games")),
        (errors.NotMember, errors.Denied, lambda: chat.send_room(bob, "games", "hi")),
        (errors.NotOperator, errors.Denied,
         lambda: chat.change_room(bob, "games", [RoomChange("operator", user=alice)])),
        (errors.MemberNotFound, errors.NotFound,
         lambda: chat.change_room(alice, "games", [RoomChange("operator", user=bob)])),
        (errors.ContactNotFound, errors.NotFound, lambda: chat.remove_contact(alice, "bob")),
        (errors.ContactIsSelf, errors.Invalid, lambda: chat.add_contact(alice, "alice")),
        (errors.UnknownContactStatus, errors.Invalid, lambda: chat.set_contact(alice, "bob", "enemy")),
        (errors.GuestDenied, errors.Denied, lambda: chat.add_contact(chat.guest("visitor"), "bob")),
        (errors.EmptyMessage, errors.Invalid, lambda: chat.send_direct(alice, "bob", "")),
        (errors.MessageTooLong, errors.Invalid, lambda: chat.send_direct(alice, "bob", "x" * 10**5)),
    ]
    for narrow, broad, attempt in failures:
        with pytest.raises(narrow) as raised:
            await defer.maybeDeferred(attempt)
        assert isinstance(raised.value, broad) and raised.value.message


class FailingStore(MemoryStore):
    """A memory store whose writes fail while ``failing`` is set (a database gone away)."""

    failing = False

    def _fails(name):
        def write(self, *args, **kwargs):
            if self.failing:
                return defer.fail(errors.StoreUnavailable("the database is gone"))
            return getattr(MemoryStore, name)(self, *args, **kwargs)
        return write

    add_user = _fails("add_user")
    add_room = _fails("add_room")
    set_contact = _fails("set_contact")
    remove_contact = _fails("remove_contact")
    add_member = _fails("add_member")
    remove_member = _fails("remove_member")
    update_room = _fails("update_room")
    add_message = _fails("add_message")
    set_room_role = _fails("set_room_role")
    add_room_ban = _fails("add_room_ban")


async def failing_chat():
    store = FailingStore()
    chat = ChatService(store, cheap_hasher(), reactor)
    chat.startService()
    await chat.when_ready()
    return store, chat


@pytest_twisted.ensureDeferred
async def test_a_failed_write_leaves_no_trace_in_memory():
    store, chat = await failing_chat()
    alice, bob = await users(chat, "alice", "bob")
    await chat.create_room(alice, "kept")
    await chat.add_contact(alice, "bob")
    store.failing = True
    attempts = [chat.register("carol", "pw"), chat.create_room(alice, "lost"),
                chat.join_room(bob, "kept"), chat.block(alice, "bob"), chat.remove_contact(alice, "bob"),
                chat.set_topic(alice, "kept", "new"), chat.send_room(alice, "kept", "hi")]
    for attempt in attempts:
        with pytest.raises(errors.StoreUnavailable):
            await attempt
    assert not chat.is_registered("carol") and [r.name for r in chat.rooms()] == ["kept", "lobby"]
    kept = chat.room("kept")
    assert not chat.is_member(bob, kept) and chat.topic(kept) == ""
    assert chat.contact_status(alice, bob) == "friend" and not chat.has_blocked(alice, bob)
    store.failing = False
    assert (await chat.register("carol", "pw")).username == "carol"  # the name was not kept either
    assert (await chat.create_room(alice, "lost")).name == "lost"
    await chat.stopService()


@pytest_twisted.ensureDeferred
async def test_a_failed_room_settings_write_leaves_the_room_as_it_was():
    store, chat = await failing_chat()
    alice, bob = await users(chat, "alice", "bob")
    room = await chat.create_room(alice, "kept")
    await chat.join_room(bob, "kept")
    store.failing = True
    for changes in ([RoomChange("moderated"), RoomChange("limit", 5)], [RoomChange("operator", user=bob)],
                    [RoomChange("ban", mask="carol!*@*")]):
        with pytest.raises(errors.StoreUnavailable):
            await chat.change_room(alice, "kept", changes)
    info = chat.room_info(room)
    assert not info.moderated and info.limit == 0 and not chat.is_operator(bob, room)
    assert chat.room_bans(room) == []
    await chat.stopService()
