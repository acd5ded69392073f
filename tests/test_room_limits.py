"""Rooms cannot be made without bound (issue 13, item 3): a guest's rooms are never stored and
vanish once empty; room creation has a per-user and per-address rate and cap and a server-wide
``--max-rooms``, refused on every port in its own words; and what is done for one user never
walks every room."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, task

from chatserv import errors
from chatserv.bus import Subscription
from chatserv.limits import Limits
from chatserv.service import ChatService
from chatserv.store.memory import MemoryStore
from tests.support import Daemon, InstantHasher
from tests.test_irc import raw, until
from tests.test_rooms import logged_in as rooms_user
from tests.test_service import Sink
from tests.test_web_rest import register_and_login
from tests.web_support import call


def service(**limits) -> ChatService:
    """A started service on a memory store and a clock the test moves."""
    chat = ChatService(MemoryStore(), InstantHasher(), task.Clock(), Limits(**limits))
    chat.startService()
    return chat


def result(d: defer.Deferred):
    """What an already-fired Deferred holds (raising its failure)."""
    outcome = []
    d.addBoth(outcome.append)
    (value,) = outcome
    if hasattr(value, "raiseException"):
        value.raiseException()
    return value


# guest rooms vanish


@pytest_twisted.ensureDeferred
async def test_a_guests_room_vanishes_when_its_last_member_leaves_and_is_never_stored(tmp_path):
    daemon = await Daemon(str(tmp_path / "chat.sqlite3")).start()
    try:
        chat = daemon.chat
        await chat.register("alice", "pw")
        gina = await raw(daemon, "gina")
        gina.send(b"JOIN #g", b"PRIVMSG #g :only for guests", b"PING stored")
        await until(gina, b"PONG")
        assert not chat.room("g").persistent

        # an account in it keeps it alive after the guest has gone...
        alice = await raw(daemon, "alice", before=[b"PASS pw"])
        alice.send(b"JOIN #g")
        await until(alice, b"only for guests")
        gina.send(b"QUIT :bye")
        await until(alice, b"QUIT")
        assert [u.username for u in chat.members(chat.room("g"))] == ["alice"]
        # ...until it leaves too: then the room is gone, and so is what was said in it
        alice.send(b"PART #g")
        await until(alice, b"PART")
        with pytest.raises(errors.NotFound):
            chat.room("g")

        # the name is free again: an account makes a new room of it, its own and kept
        alice.send(b"JOIN #g", b"TOPIC #g :mine now")
        lines = await until(alice, b"TOPIC #g")
        assert not any(b"only for guests" in line for line in lines)
        assert lines[-1].endswith(b"TOPIC #g :mine now")
        kept = chat.room("g")
        assert kept.persistent and kept.created_by == chat.user("alice").id

        gina = await raw(daemon, "gina")
        gina.send(b"JOIN #gone")
        await until(gina, b" 366 ")
        await daemon.restart()
        chat = daemon.chat
        assert chat.room("g").created_by == chat.user("alice").id
        with pytest.raises(errors.NotFound):
            chat.room("gone")  # a guest's room is never stored
        assert await chat.room_history(chat.user("alice"), "g") == []
    finally:
        await daemon.stop()


def test_a_guest_that_goes_takes_its_rooms_with_it_and_their_messages():
    chat = service()
    guest = chat.guest("gina")
    session = chat.attach(guest, Sink(), "irc", "10.0.0.1")
    room = result(chat.join_room(guest, "den", create=True))
    result(chat.send_room(guest, "den", "hello"))
    assert result(chat.store.room_history(room.id, 10)) != []
    chat.detach(session)
    with pytest.raises(errors.NotFound):
        chat.room("den")
    assert result(chat.store.room_history(room.id, 10)) == []
    assert chat.rooms_of(guest) == []
    again = result(chat.join_room(result(chat.register("alice", "pw")), "den", create=True))
    assert again.id != room.id


# caps and rates


@pytest_twisted.ensureDeferred
async def test_room_creation_caps_are_refused_on_every_port_in_its_own_words(db):
    daemon = await Daemon(db, ["--max-rooms-per-user", "2", "--max-rooms-per-address", "4"]).start()
    try:
        chat = daemon.chat
        gina = await raw(daemon, "gina")
        gina.send(b"JOIN #a,#b,#c,#lobby")
        lines = await until(gina, b"#lobby :End of /NAMES")
        assert b":chatserv 405 gina #c :you have created too many rooms" in lines
        with pytest.raises(errors.NotFound):
            chat.room("c")
        # joining rooms that exist is not creating them
        assert [r.name for r in chat.rooms_of(chat.user_or_guest("gina"))] == ["a", "b", "lobby"]

        rooms = await rooms_user(daemon)  # alice, a new account
        assert await rooms.call(3, ["d", "alice"]) == ["OK"]
        assert await rooms.call(3, ["e", "alice"]) == ["OK"]
        refused = [{"description": "ERROR: You have created too many rooms."}]
        assert await rooms.call(3, ["f", "alice"]) == refused

        # four rooms came from 127.0.0.1: the address is spent, whoever asks
        session = (await register_and_login(daemon, "carol"))["sessionID"]
        code, reply = await call(daemon, "/joinGroup", params={"sessionID": session, "group": "h"})
        assert (code, reply) == (400, {"error": "too many rooms were created from your address"})
        code, reply = await call(daemon, "/joinGroup", params={"sessionID": session, "group": "a"})
        assert code == 200 and reply["name"] == "a"

        # a guest's room that vanished gives its creator, and the address, one room back
        gina.send(b"PART #b", b"JOIN #c")
        lines = await until(gina, b"#c :End of /NAMES")
        assert not any(b" 405 " in line for line in lines)
        code, reply = await call(daemon, "/joinGroup", params={"sessionID": session, "group": "h"})
        assert code == 400
    finally:
        await daemon.stop()


def test_room_creation_is_rate_limited_per_user_and_per_address():
    chat = service(room_burst_per_user=2, room_rate_per_user=6.0,  # one every 10 s after two
                   room_burst_per_address=3, room_rate_per_address=6.0)
    alice, bob = result(chat.register("alice", "pw")), result(chat.register("bob", "pw"))
    make = chat.create_room
    result(make(alice, "a1", address="10.0.0.1"))
    result(make(alice, "a2", address="10.0.0.1"))
    with pytest.raises(errors.TooManyRooms, match="too fast"):
        result(make(alice, "a3", address="10.0.0.2"))
    result(make(bob, "b1", address="10.0.0.1"))  # another user, the address's third
    with pytest.raises(errors.TooManyRooms, match="too fast"):
        result(make(bob, "b2", address="10.0.0.1"))
    result(make(bob, "b2", address="10.0.0.3"))
    chat.clock.advance(10)
    result(make(alice, "a3", address="10.0.0.2"))
    assert [r.name for r in chat.rooms()] == ["a1", "a2", "a3", "b1", "b2", "lobby"]


def test_max_rooms_bounds_the_whole_server():
    chat = service(max_rooms=3)  # the lobby is one
    alice = result(chat.register("alice", "pw"))
    result(chat.join_room(alice, "one", create=True))
    result(chat.join_room(alice, "two", create=True))
    with pytest.raises(errors.TooManyRooms, match="the server has too many rooms"):
        result(chat.join_room(alice, "three", create=True))
    result(chat.join_room(alice, "two", create=True))  # an existing room can still be joined


# one user's requests never walk every room


class NoScan(dict):
    """The service's table of every room, made to fail whenever something walks it."""

    def _walked(self, *args):
        raise AssertionError("walked every room")

    __iter__ = values = items = keys = _walked


def test_rooms_of_presence_and_guest_clean_up_use_the_index_not_every_room():
    chat = service(max_rooms_per_user=0, room_rate_per_user=0, max_rooms=0)
    alice, bob = result(chat.register("alice", "pw")), result(chat.register("bob", "pw"))
    for number in range(300):
        result(chat.create_room(bob, f"other-{number}"))
    result(chat.create_room(alice, "ours"))
    result(chat.join_room(bob, "ours"))
    guest = chat.guest("gina")
    guest_session = chat.attach(guest, Sink(), "irc", "10.0.0.9")
    result(chat.join_room(guest, "ours"))
    result(chat.join_room(guest, "gina-only", create=True))
    bob_sink = Sink()
    chat.attach(bob, bob_sink, "irc", subscribes=Subscription.DIRECT | Subscription.ROOM_PRESENCE)

    chat._rooms = NoScan(chat._rooms)
    assert [r.name for r in chat.rooms_of(alice)] == ["ours"]
    alice_session = chat.attach(alice, Sink(), "irc")  # bob, a room-mate, hears of it
    chat.detach(alice_session)
    assert [(e.user.username, e.online) for e in bob_sink.events] == [("alice", True), ("alice", False)]
    chat.detach(guest_session)  # its own room goes with it, the shared one stays
    assert [r.name for r in chat.rooms_of(guest)] == []
    assert "gina-only" not in dict.keys(chat._rooms)
    assert [u.username for u in chat.members(dict.get(chat._rooms, "ours"))] == ["alice", "bob"]
