"""Seed 004's Socket.IO half, with the real npm socket.io-client under Node, both stores.

The default client starts on HTTP long-polling and upgrades to WebSocket; the other one
speaks WebSocket only. Both are driven by tests/js/client.js (see tests/web_support.py).
"""

import json

import pytest_twisted
from twisted.internet import defer

from chatserv import errors
from tests.support import connect
from tests.web_support import call, register_and_login, socketio_client


async def connected(daemon, session_id, transports="default"):
    client = socketio_client(daemon, session_id, transports)
    await client.next("connect")
    return client


@pytest_twisted.ensureDeferred
async def test_polling_upgrade_and_websocket_clients_chat_and_see_each_other(daemon):
    alice = await register_and_login(daemon, "alice")
    bob = await register_and_login(daemon, "bob")
    for me, other in ((alice, "bob"), (bob, "alice")):
        await call(daemon, "/addContact", "POST", data={"sessionID": me["sessionID"], "contact": other})

    bob_client = socketio_client(daemon, bob["sessionID"])
    assert (await bob_client.next("open"))["transport"] == "polling"
    await bob_client.next("connect")
    assert (await bob_client.next("upgrade"))["transport"] == "websocket"

    alice_client = socketio_client(daemon, alice["sessionID"], "websocket")
    assert (await alice_client.next("open"))["transport"] == "websocket"
    await alice_client.next("connect")
    assert (await bob_client.next("user_status"))["data"] == {
        "user_id": alice["user_id"], "username": "alice", "status": "online"}

    alice_client.emit("send_message", {"sessionID": alice["sessionID"], "recipient_id": bob["user_id"],
                                       "content": "hi bob", "is_group": False, "type": "text"})
    received = (await bob_client.next("new_message"))["data"]
    timestamp = received.pop("timestamp")
    assert received == {"message_id": 1, "sender_id": alice["user_id"], "sender_username": "alice",
                        "content": "hi bob", "type": "text", "is_group": False,
                        "recipient_id": bob["user_id"]}
    assert timestamp.endswith("Z") and timestamp[:4].isdigit()
    assert (await alice_client.next("new_message"))["data"]["content"] == "hi bob"  # the sender's own socket

    bob_client.emit("send_message", {"recipient_id": str(alice["user_id"]), "content": "hi alice"}, ack=True)
    assert (await bob_client.next("ack"))["data"] == {"message_id": 2}
    assert (await alice_client.next("new_message"))["data"]["sender_username"] == "bob"

    assert await alice_client.close() == 0
    assert (await bob_client.next("user_status"))["data"]["status"] == "offline"
    assert await bob_client.close() == 0
    code, history = await call(daemon, "/getContactMessages", params={"sessionID": bob["sessionID"],
                                                                      "contact": "alice"})
    assert [m["content"] for m in history] == ["hi bob", "hi alice"]


@pytest_twisted.ensureDeferred
async def test_a_polling_only_client_sends_and_receives(daemon):
    alice = await register_and_login(daemon, "alice")
    bob = await register_and_login(daemon, "bob")
    alice_client = await connected(daemon, alice["sessionID"], "polling")
    bob_client = await connected(daemon, bob["sessionID"], "polling")
    for i in range(15):  # within the rate burst; several arrive in one poll, in order
        alice_client.emit("send_message", {"recipient_id": bob["user_id"], "content": f"m{i}"})
    for i in range(15):
        assert (await bob_client.next("new_message"))["data"]["content"] == f"m{i}"
    bob_client.emit("send_message", {"recipient_id": alice["user_id"], "content": "back"})
    assert (await alice_client.next("new_message", lambda e: e["data"]["content"] == "back"))
    assert not [e for e in alice_client.events + bob_client.events if e["event"] == "upgrade"]
    await alice_client.close()
    await bob_client.close()


@pytest_twisted.ensureDeferred
async def test_add_contact_notifies_both_or_says_user_not_found(daemon):
    alice = await register_and_login(daemon, "alice")
    bob = await register_and_login(daemon, "bob")
    alice_client = await connected(daemon, alice["sessionID"], "websocket")
    bob_client = await connected(daemon, bob["sessionID"])
    alice_client.emit("add_contact", {"sessionID": alice["sessionID"], "contact_username": "bob"})
    assert (await alice_client.next("contact_added"))["data"] == {
        "contact_id": bob["user_id"], "name": "bob", "url": "", "status": "friend"}
    assert (await bob_client.next("contact_request"))["data"] == {"user_id": alice["user_id"],
                                                                  "username": "alice"}
    alice_client.emit("add_contact", {"sessionID": alice["sessionID"], "contact_username": "bob"})
    assert (await alice_client.next("contact_added"))["data"]["name"] == "bob"  # again: still answered
    alice_client.emit("add_contact", {"sessionID": alice["sessionID"], "contact_username": "nobody"})
    assert (await alice_client.next("error"))["data"] == {"message": "User not found"}
    for someone_else in (bob["sessionID"], "forged"):  # an event speaks for its connection only
        alice_client.emit("add_contact", {"sessionID": someone_else, "contact_username": "bob"})
        assert (await alice_client.next("error"))["data"] == {"message": "Invalid session"}
    code, contacts = await call(daemon, "/getContacts", params={"sessionID": alice["sessionID"]})
    assert [c["name"] for c in contacts] == ["bob"]
    await alice_client.close()
    await bob_client.close()


@pytest_twisted.ensureDeferred
async def test_a_group_message_reaches_every_member_but_not_outsiders(daemon):
    alice = await register_and_login(daemon, "alice")
    bob = await register_and_login(daemon, "bob")
    carol = await register_and_login(daemon, "carol")
    chat = daemon.chat
    room = await chat.create_room(chat.user("alice"), "team")
    await chat.join_room(chat.user("bob"), "team")
    assert chat.room_by_id(room.id) is room
    clients = [await connected(daemon, who["sessionID"], "websocket") for who in (alice, bob, carol)]
    clients[0].emit("send_message", {"recipient_id": room.id, "content": "hi team", "is_group": True})
    for member in clients[:2]:
        received = (await member.next("new_message"))["data"]
        assert (received["is_group"], received["recipient_id"], received["content"]) == (
            True, room.id, "hi team")
    clients[2].emit("send_message", {"recipient_id": room.id, "content": "let me in", "is_group": True})
    assert (await clients[2].next("error"))["data"] == {"message": "not a member"}
    clients[2].emit("send_message", {"recipient_id": 999, "content": "x", "is_group": True})
    assert (await clients[2].next("error"))["data"] == {"message": "Group not found"}
    clients[2].emit("send_message", {"recipient_id": "\u00b2", "content": "x"})  # isdigit, but no int
    assert (await clients[2].next("error"))["data"] == {"message": "recipient_id must be an integer"}
    assert not [e for e in clients[2].events if e["event"] == "new_message"]
    for client in clients:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_connect_is_refused_without_a_live_session_and_logout_disconnects(daemon):
    alice = await register_and_login(daemon, "alice")
    for transports in ("default", "websocket"):
        forged = socketio_client(daemon, "forged-session-id", transports)
        assert (await forged.next("connect_error"))["message"] == "Invalid session"
        await forged.close()
    client = await connected(daemon, alice["sessionID"])
    assert await call(daemon, "/logout", "POST", data={"sessionID": alice["sessionID"]}) == (
        200, {"message": "Logged out"})
    assert (await client.next("disconnect"))["reason"] == "io server disconnect"
    assert not daemon.chat.is_online(daemon.chat.user("alice"))
    again = socketio_client(daemon, alice["sessionID"], "websocket")
    assert (await again.next("connect_error"))["message"] == "Invalid session"
    await again.close()


@pytest_twisted.ensureDeferred
async def test_connect_goes_through_the_login_path_and_is_told_why_it_refuses(daemon, monkeypatch):
    alice = await register_and_login(daemon, "alice")
    monkeypatch.setattr(daemon.chat, "log_in", lambda *args, **options: defer.fail(errors.Busy("full")))
    refused = socketio_client(daemon, alice["sessionID"], "websocket")
    assert (await refused.next("connect_error"))["message"] == "Server busy, try again"
    assert not daemon.chat.is_online(daemon.chat.user("alice"))
    await refused.close()
    monkeypatch.undo()
    client = await connected(daemon, alice["sessionID"], "websocket")
    assert daemon.chat.is_online(daemon.chat.user("alice"))
    await client.close()


@pytest_twisted.ensureDeferred
async def test_messages_cross_to_the_chatroom_port_and_back(daemon):
    alice = await register_and_login(daemon, "alice")
    await register_and_login(daemon, "carol")
    alice_client = await connected(daemon, alice["sessionID"])
    carol = await connect(daemon.port("chatroom"))
    assert json.loads(await carol.request(b'{"type": "auth", "username": "carol", "password": "pw"}')) == {
        "result": "ok"}
    alice_client.emit("send_message", {"recipient_id": daemon.chat.user("carol").id, "content": "to carol"})
    assert json.loads(await carol.receive()) == {"type": "message", "from": "alice", "msg": "to carol"}
    assert json.loads(await carol.request(
        b'{"type": "message", "from": "carol", "to": "alice", "msg": "to alice"}')) == {"result": "ok"}
    received = (await alice_client.next("new_message", lambda e: e["data"]["sender_username"] == "carol"))
    assert (received["data"]["content"], received["data"]["is_group"]) == ("to alice", False)
    await alice_client.close()


@pytest_twisted.ensureDeferred
async def test_a_user_created_on_the_skype_port_reaches_the_socket(daemon):
    alice = await register_and_login(daemon, "alice")
    alice_client = await connected(daemon, alice["sessionID"], "websocket")
    skype = await connect(daemon.port("skype"))
    assert await skype.request(b"CREATE dave secret") == b"200 OK"
    await daemon.chat.send_direct(daemon.chat.user("dave"), "alice", "from the skype side")
    received = (await alice_client.next("new_message"))["data"]
    assert (received["sender_username"], received["content"]) == ("dave", "from the skype side")
    await alice_client.close()
    skype.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_a_stopping_daemon_disconnects_its_sockets(daemon):
    alice = await register_and_login(daemon, "alice")
    polling = await connected(daemon, alice["sessionID"])
    websocket = await connected(daemon, alice["sessionID"], "websocket")
    await daemon.stop()
    for client in (polling, websocket):
        assert (await client.next("disconnect"))["reason"] == "io server disconnect"
        assert await client.ended == 0
