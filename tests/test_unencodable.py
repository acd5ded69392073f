"""Text the store cannot keep (a lone UTF-16 surrogate) is refused at every port with that port's
own error reply, and the next message on the same connection is stored and delivered: the
SQLite writer is never reached, and would live on if it were. Both stores."""

from __future__ import annotations

import json

import pytest
import pytest_twisted

from chatserv import errors
from chatserv.model import LOBBY
from chatserv.protocols.framing import LengthPrefixFramer
from tests.support import connect
from tests.test_chatroom import json_login
from tests.test_irc import raw, until
from tests.test_rooms import error, logged_in
from tests.test_salted import register, salted
from tests.test_web_engineio import handshake, poll, poll_until, post
from tests.web_support import call, register_and_login

LONE = "\ud800"  # JSON writes it as the escape \ud800; repr() as the literal '\ud800'
CESU = b"\xed\xa0\x80"  # the same surrogate as UTF-8 would spell it: invalid UTF-8


async def lobby_bodies(daemon, name="alice") -> list[str]:
    user = daemon.chat.user(name)
    await daemon.chat.join_room(user, LOBBY)
    return [m.body for m in await daemon.chat.room_history(user, LOBBY)]


@pytest_twisted.ensureDeferred
async def test_salted_json(daemon):
    alice = await register(daemon, "alice")
    stranger = await salted(daemon)
    for _ in range(50):  # a pre-login flood: each line answered, nothing logged
        stranger.send(type="salt", user=LONE)
    for _ in range(50):
        assert await stranger.receive() == {"type": "error", "message": "text must be valid Unicode"}
    for request in [{"type": "message", "user": "alice", "message": LONE},
                    {"type": "message", "user": "alice", "message": "x", LONE: 1}]:
        assert await alice.request(**request) == {"type": "error", "message": "text must be valid Unicode"}
    assert await alice.request(type="message", user="alice", message="still here") == {
        "type": "message", "from": "alice", "message": "still here"}
    assert await lobby_bodies(daemon) == ["still here"]


@pytest_twisted.ensureDeferred
async def test_chat_room_json(daemon):
    await daemon.chat.register("alice", "pw")
    alice = await json_login(daemon, "alice")
    for request in [{"type": "broadcast", "from": "alice", "msg": LONE},
                    {"type": "message", "from": "alice", "to": "alice", "msg": LONE},
                    {"type": "auth", "username": "alice", "password": LONE}]:
        assert await alice.request(**request) == {"result": "invalid request!"}
    assert await alice.request(type="broadcast", **{"from": "alice"}, msg="still here") == {"result": "ok"}
    assert await lobby_bodies(daemon) == ["still here"]


@pytest_twisted.ensureDeferred
async def test_rest_parameters_and_json_bodies(daemon):
    alice = await register_and_login(daemon, "alice")
    sid = alice["sessionID"]
    refused = (400, {"error": "text must be valid Unicode"})
    for path, body in [
        ("/saveMessage", {"sessionID": sid, "recipientID": "alice", "content": LONE}),
        ("/saveMessage", {"sessionID": sid, "recipientID": "alice", "content": "x", "type": LONE}),
        ("/joinGroup", {"sessionID": sid, "group": "g" + LONE}),
        ("/register", {"username": "bob", "password": "pw", "public_key": LONE}),
        ("/register", {"username": "bob", "password": LONE}),
        ("/register", {"username": LONE, "password": "pw"}),
        ("/login", {"username": "alice", "password": LONE}),
        ("/login", {"username": LONE, "password": "pw"}),
    ]:
        assert await call(daemon, path, "POST", json_body=body) == refused, (path, body)
    for path in ["/login", "/register"]:  # the surrogate as UTF-8 would spell it, in the query string
        assert await call(daemon, f"{path}?username=al%ED%A0%80&password=pw") == (
            400, {"error": "parameters must be UTF-8"})
    assert not daemon.chat.is_registered("bob")
    code, saved = await call(daemon, "/saveMessage", "POST", json_body={
        "sessionID": sid, "recipientID": "alice", "content": "still here"})
    assert code == 200
    code, history = await call(daemon, "/getContactMessages", params={"sessionID": sid, "contact": "alice"})
    assert [m["content"] for m in history] == ["still here"]


@pytest_twisted.ensureDeferred
async def test_socketio_event_arguments(daemon):
    alice = await register_and_login(daemon, "alice")
    sid = (await handshake(daemon, sessionID=alice["sessionID"]))["sid"]
    assert await post(daemon, sid, "40") == (200, "ok")
    event = "421" + json.dumps(["send_message", {"recipient_id": alice["user_id"], "content": LONE}])
    assert await post(daemon, sid, event) == (200, "ok")
    packets = await poll_until(daemon, sid, "431")
    assert '42["error",{"message":"text must be valid Unicode"}]' in packets
    assert packets[-1] == '431[{"error":"text must be valid Unicode"}]'
    good = "422" + json.dumps(["send_message", {"recipient_id": alice["user_id"], "content": "still here"}])
    assert await post(daemon, sid, good) == (200, "ok")
    assert (await poll_until(daemon, sid, "432"))[-1] == '432[{"message_id":1}]'
    assert await post(daemon, sid, "41") == (200, "ok")  # leave, so the daemon stops at once
    assert await poll(daemon, sid) == ["1"]


@pytest_twisted.ensureDeferred
async def test_rooms_literals(daemon):
    await daemon.chat.register("bob", "pw")
    alice = await logged_in(daemon, "alice")
    assert await alice.call("create_new_room", ["r", "alice"]) == ["OK"]
    refused = error("Invalid request: text must be valid Unicode.")
    for code, body in [
        ("send_room_message", ["alice", "r", LONE]),
        ("send_personal_message", ["alice", "bob", LONE]),
        ("create_new_room", ["r" + LONE, "alice"]),
        ("join_new_room", [LONE, "alice"]),
        ("send_message_to_selected_rooms", ["alice", ["r"], LONE]),
        ("login", ["bob", LONE]),
    ]:
        assert await alice.send(repr([code, body]).encode()) == refused, code
    assert await alice.call("send_room_message", ["alice", "r", "still here"]) == ["OK"]
    assert [m.body for m in await daemon.chat.room_history(daemon.chat.user("alice"), "r")] == ["still here"]
    assert [r.name for r in daemon.chat.rooms()] == [LOBBY, "r"]


@pytest_twisted.ensureDeferred
async def test_skype_lines_and_frames(daemon):
    lines = await connect(daemon.port("skype"))
    framed = await connect(daemon.port("skype-framed"), LengthPrefixFramer(1 << 20))
    assert await framed.receive() == b"200 OK"
    for client in (lines, framed):
        for request in [b"CREATE " + CESU + b" pw", b"CREATE carol " + CESU, b"LOGIN carol " + CESU]:
            assert await client.request(request) == b"501 Invalid command"
    assert await lines.request(b"CREATE carol pw") == b"200 OK"
    assert daemon.chat.is_registered("carol")


@pytest_twisted.ensureDeferred
async def test_irc_refuses_what_is_not_utf8(daemon):
    """IRC advertises UTF8ONLY: a surrogate spelled in bytes (CESU-8) is invalid UTF-8, answered
    with FAIL INVALID_UTF8, and neither stored nor relayed; the next valid line goes through."""
    await daemon.chat.register("alice", "pw")
    alice = await raw(daemon, "alice", before=[b"PASS pw"])
    bob = await raw(daemon, "bob")
    for client in (alice, bob):
        client.send(b"JOIN #lobby")
        await until(client, b" 366 ")
    alice.send(b"PRIVMSG #lobby :a" + CESU + b"z")
    assert b"FAIL PRIVMSG INVALID_UTF8" in (await until(alice, b"FAIL"))[-1]
    alice.send(b"PRIVMSG #lobby :fine")
    assert (await until(bob, b"PRIVMSG"))[-1].split(b" #lobby ")[-1].lstrip(b":") == b"fine"
    assert await lobby_bodies(daemon) == ["fine"]


# the service refuses such text too: the last line of defence behind the ports


@pytest_twisted.ensureDeferred
async def test_the_service_refuses_text_the_store_cannot_keep(daemon):
    chat = daemon.chat
    alice = await chat.register("alice", "pw")
    await chat.join_room(alice, LOBBY)
    attempts = [
        lambda: chat.send_room(alice, LOBBY, LONE),
        lambda: chat.send_room(alice, LOBBY, "x", kind=LONE),
        lambda: chat.send_direct(alice, "alice", LONE),
        lambda: chat.create_room(alice, "r" + LONE),
        lambda: chat.join_room(alice, "r" + LONE, create=True),
        lambda: chat.set_topic(alice, LOBBY, LONE),
        lambda: chat.set_public_key(alice, LONE),
        lambda: chat.register("bob", LONE),
        lambda: chat.register_digest("bob", "1" * 32, LONE),
        lambda: chat.authenticate("alice", LONE),
        lambda: chat.authenticate(LONE, "pw"),
        lambda: chat.authenticate_digest("alice", LONE),
    ]
    for attempt in attempts:
        with pytest.raises(errors.Invalid, match="must be valid Unicode"):
            await attempt()
    assert (await chat.send_room(alice, LOBBY, "still here")).body == "still here"
    assert await lobby_bodies(daemon) == ["still here"]
