"""What the web page builds on beyond seed 004: conversations with unread counts, marking
read on every session, paged history with message types, presence of non-contacts (treq and
the real socket.io-client, both stores)."""

import pytest_twisted

from tests.support import connect
from tests.web_support import call, register_and_login, socketio_client


def conversations(daemon, session, **params):
    return call(daemon, "/getConversations", params={"sessionID": session["sessionID"], **params})


async def login(daemon, name) -> dict:
    """Another session of a registered user: another device."""
    code, reply = await call(daemon, "/login", params={"username": name, "password": "pw"})
    assert code == 200
    return reply


def summary(entries):
    return [(e["kind"], e["name"], e["last_message"] and e["last_message"]["content"], e["unread"])
            for e in entries]


@pytest_twisted.ensureDeferred
async def test_every_conversation_with_its_last_message_and_unread_count(daemon):
    alice, bob, carol = [await register_and_login(daemon, name) for name in ("alice", "bob", "carol")]
    await register_and_login(daemon, "dave")
    sid = alice["sessionID"]
    await call(daemon, "/addContact", "POST", data={"sessionID": sid, "contact": "dave"})
    code, tea = await call(daemon, "/joinGroup", "POST", data={"sessionID": sid, "group": "tea"})
    await call(daemon, "/markRead", "POST", data={"sessionID": sid, "groupID": tea["group_id"]})
    await call(daemon, "/joinGroup", "POST", data={"sessionID": bob["sessionID"], "group": "tea"})
    for sender, to, text in [(bob, "alice", "one"), (bob, "alice", "two"), (carol, "alice", "a stranger")]:
        await call(daemon, "/saveMessage", "POST", json_body={"sessionID": sender["sessionID"],
                                                             "recipientID": to, "content": text})
    await daemon.chat.send_room(daemon.chat.user("bob"), "tea", "kettle's on")

    code, found = await conversations(daemon, alice)
    assert code == 200
    assert summary(found) == [("group", "tea", "kettle's on", 1), ("user", "carol", "a stranger", 1),
                              ("user", "bob", "two", 2), ("user", "dave", None, 0)]
    by_name = {e["name"]: e for e in found}
    assert by_name["carol"]["contact_status"] is None and by_name["dave"]["contact_status"] == "friend"
    assert by_name["bob"]["id"] == bob["user_id"] and by_name["tea"]["id"] == tea["group_id"]
    assert by_name["bob"]["status"] == "offline"
    last = by_name["carol"]["last_message"]
    assert (last["sender_user_id"], last["sender_username"], last["type"]) == (
        carol["user_id"], "carol", "text")

    # Paging: the newest two, then the ones before the older of them.
    code, first = await conversations(daemon, alice, limit=2)
    code, rest = await conversations(daemon, alice, limit="2", before=first[-1]["last_message"]["message_id"])
    assert summary(first + rest) == summary(found)

    # Read on one device, read everywhere; a mark names a message or defaults to the newest.
    assert await call(daemon, "/markRead", "POST", json_body={"sessionID": sid, "contact": "bob"}) == (
        200, {"last_read_id": by_name["bob"]["last_message"]["message_id"]})
    first_from_bob = by_name["bob"]["last_message"]["message_id"] - 1
    second_device = await login(daemon, "alice")
    code, _ = await call(daemon, "/markRead", params={"sessionID": second_device["sessionID"],
                                                      "contactID": carol["user_id"], "message_id": "1"})
    code, found = await conversations(daemon, second_device)
    assert summary(found)[1:3] == [("user", "carol", "a stranger", 1), ("user", "bob", "two", 0)]
    assert first_from_bob == 1

    for params, error in [
        ({"limit": "0"}, "limit must be a whole number above 0"),
        ({"limit": "many"}, "limit must be a whole number above 0"),
        ({"before": "-1"}, "before must be a message id"),
    ]:
        assert await conversations(daemon, alice, **params) == (400, {"error": error})
    assert await call(daemon, "/markRead", params={"sessionID": sid}) == (
        400, {"error": "missing parameter: contact"})
    assert await call(daemon, "/markRead", params={"sessionID": sid, "groupID": "1"}) == (
        400, {"error": "not a member"})
    assert await call(daemon, "/markRead", params={"sessionID": sid, "contact": "bob",
                                                   "message_id": "x"}) == (
        400, {"error": "message_id must be a message id"})


@pytest_twisted.ensureDeferred
async def test_history_pages_backwards_and_says_what_type_each_message_is(daemon):
    alice = await register_and_login(daemon, "alice")
    await daemon.chat.register("bob", "pw")
    bob_user = daemon.chat.user("bob")
    irc = await connect(daemon.port("irc"))
    irc.send(b"PASS pw", b"NICK bob", b"USER bob 0 * :Bob", b"JOIN #tea")
    while b" JOIN " not in await irc.receive():
        pass
    await call(daemon, "/joinGroup", "POST", data={"sessionID": alice["sessionID"], "group": "tea"})
    for i in range(7):
        await daemon.chat.send_direct(bob_user, "alice", f"m{i}")
    irc.send(b"PRIVMSG alice :\x01ACTION waves\x01", b"NOTICE alice :a notice",
             b"PRIVMSG #tea :\x01ACTION pours\x01")
    params = {"sessionID": alice["sessionID"], "contact": "bob"}
    code, newest = await call_until(daemon, "/getContactMessages", params, lambda h: len(h) == 9)
    assert [(m["content"], m["type"]) for m in newest[-2:]] == [("waves", "action"), ("a notice", "notice")]
    code, page = await call(daemon, "/getContactMessages", params={**params, "limit": "3"})
    assert [m["content"] for m in page] == ["m6", "waves", "a notice"]
    code, older = await call(daemon, "/getContactMessages",
                             params={**params, "limit": "3", "before": str(page[0]["message_id"])})
    assert [m["content"] for m in older] == ["m3", "m4", "m5"]
    assert older[0]["sender_username"] == "bob" and older[0]["type"] == "text"
    group = {"sessionID": alice["sessionID"], "groupID": str(daemon.chat.room("tea").id)}
    code, room = await call_until(daemon, "/getGroupMessages", group, lambda h: len(h) == 1)
    assert [(m["content"], m["type"], m["sender_username"]) for m in room] == [("pours", "action", "bob")]
    before = str(room[0]["message_id"])
    code, none = await call(daemon, "/getGroupMessages", params={**group, "before": before})
    assert none == []
    irc.transport.loseConnection()


async def call_until(daemon, path, params, done):
    """The IRC lines are sent without an answer to wait for: ask until their messages land."""
    for _ in range(100):
        code, reply = await call(daemon, path, params=params)
        if code == 200 and done(reply):
            return code, reply
    raise AssertionError(f"{path} never got there: {reply}")


@pytest_twisted.ensureDeferred
async def test_the_socket_hears_reads_elsewhere_non_contacts_presence_and_no_request_on_restore(daemon):
    alice = await register_and_login(daemon, "alice")
    bob = await register_and_login(daemon, "bob")
    await call(daemon, "/saveMessage", "POST", json_body={"sessionID": bob["sessionID"],
                                                         "recipientID": "alice", "content": "hi"})
    page = socketio_client(daemon, alice["sessionID"], "websocket")
    await page.next("connect")
    phone = await login(daemon, "alice")
    code, marked = await call(daemon, "/markRead", "POST", data={"sessionID": phone["sessionID"],
                                                                 "contact": "bob"})
    assert (await page.next("conversation_read"))["data"] == {
        "kind": "user", "id": bob["user_id"], "last_read_id": marked["last_read_id"]}

    # bob wrote to alice but is not her contact: she hears him come and go all the same.
    skype = await connect(daemon.port("skype"))
    assert await skype.request(b"LOGIN bob pw") == b"200 OK"
    assert (await page.next("user_status"))["data"] == {
        "user_id": bob["user_id"], "username": "bob", "status": "online"}
    skype.transport.loseConnection()
    assert (await page.next("user_status"))["data"]["status"] == "offline"

    # bob adds alice: news. He blocks her, then makes her a friend again: not news.
    for status in ("friend", "blocked", "friend"):
        await call(daemon, "/changeContact", "POST", data={"sessionID": bob["sessionID"], "contact": "alice",
                                                           "status": status})
    await call(daemon, "/saveMessage", "POST", json_body={"sessionID": bob["sessionID"],
                                                         "recipientID": "alice", "content": "still here"})
    await page.next("new_message", lambda e: e["data"]["content"] == "still here")
    assert [e["data"]["username"] for e in page.events if e["event"] == "contact_request"] == ["bob"]
    assert await page.close() == 0
