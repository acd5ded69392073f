"""Seed 004's REST endpoints over a real loopback port, with treq, both stores."""

import pytest
import pytest_twisted
import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import task

from chatserv.limits import Limits
from chatserv.model import User
from chatserv.web.sessions import InvalidSession, WebSessions
from tests.support import Daemon, connect
from tests.web_support import Tokens, base_url, call, register_and_login

# The three ways the seed's clients sent parameters.
FORMS = ["query", "form", "json"]


def send(daemon, path, form, method="POST", **params):
    if form == "query":
        return call(daemon, path, method, params=params)
    if form == "form":
        return call(daemon, path, "POST", data=params)  # form bodies come with POST
    return call(daemon, path, method, json_body=params)


@pytest_twisted.ensureDeferred
async def test_hello_world_healthz_and_unknown_paths(daemon):
    assert await call(daemon, "/") == (200, "Hello World")
    assert await call(daemon, "/healthz") == (200, "ok")
    assert await call(daemon, "/nope") == (404, {"error": "Not found"})
    assert await call(daemon, "/", "DELETE") == (405, {"error": "Method not allowed"})
    assert (await call(daemon, "/static/"))[0] == 404  # no directory listings


@pytest_twisted.ensureDeferred
async def test_a_front_end_from_another_origin_may_call_the_api(daemon):
    response = await treq.request("OPTIONS", base_url(daemon) + "/login", headers={
        "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert response.code == 204
    assert response.headers.getRawHeaders("access-control-allow-origin") == ["*"]
    assert response.headers.getRawHeaders("access-control-allow-headers") == ["content-type"]
    response = await treq.get(base_url(daemon) + "/socket.io/", params={"EIO": "4", "transport": "polling"})
    assert response.headers.getRawHeaders("access-control-allow-origin") == ["*"]
    await treq.content(response)


@pytest.mark.parametrize("form", FORMS)
@pytest_twisted.ensureDeferred
async def test_register_login_logout_in_every_parameter_form(daemon, form):
    code, reply = await send(daemon, "/register", form, username="alice", password="pw", public_key="k")
    assert code == 200 and reply["user_id"] == 1
    assert daemon.chat.user("alice").public_key == "k"
    code, login = await send(daemon, "/login", form, "GET" if form == "query" else "POST",
                             username="alice", password="pw")
    assert code == 200 and set(login) == {"sessionID", "user_id", "username"}
    assert len(login["sessionID"]) >= 40
    assert await send(daemon, "/getContacts", form, sessionID=login["sessionID"]) == (200, [])
    assert await send(daemon, "/logout", form, sessionID=login["sessionID"]) == (
        200, {"message": "Logged out"})
    assert await send(daemon, "/getContacts", form, sessionID=login["sessionID"]) == (
        400, {"error": "Invalid session"})
    assert not daemon.chat.is_online(daemon.chat.user("alice"))


@pytest.mark.parametrize("form", FORMS)
@pytest_twisted.ensureDeferred
async def test_contacts_by_name_or_id_under_contact_or_contact_id(daemon, form):
    alice = await register_and_login(daemon, "alice")
    for name in ("bob", "carol", "dave"):
        await register_and_login(daemon, name)
    sid = alice["sessionID"]
    bob_id = daemon.chat.user("bob").id
    assert await send(daemon, "/addContact", form, sessionID=sid, contact="bob") == (
        200, {"message": "Contact added", "contact_id": bob_id})
    assert (await send(daemon, "/addContact", form, sessionID=sid, contactID="carol"))[0] == 200
    dave_id = str(daemon.chat.user("dave").id)
    assert (await send(daemon, "/addContact", form, sessionID=sid, contactID=dave_id))[0] == 200
    code, reply = await send(daemon, "/changeContact", form, sessionID=sid, contactID=bob_id,
                             status="blocked")
    assert code == 200 and reply["status"] == "blocked"
    code, contacts = await send(daemon, "/getContacts", form, "GET", sessionID=sid)
    assert contacts == [
        {"contact_id": bob_id, "name": "bob", "url": "", "status": "blocked"},
        {"contact_id": daemon.chat.user("carol").id, "name": "carol", "url": "", "status": "friend"},
        {"contact_id": daemon.chat.user("dave").id, "name": "dave", "url": "", "status": "friend"},
    ]
    # The block is the shared one: bob cannot message alice on any port.
    assert daemon.chat.has_blocked(daemon.chat.user("alice"), daemon.chat.user("bob"))


@pytest_twisted.ensureDeferred
async def test_every_contact_status_of_the_original(daemon):
    alice = await register_and_login(daemon, "alice")
    await register_and_login(daemon, "bob")
    for status in ("friend", "new", "blocked", "last_words", "timeout"):
        code, _ = await call(daemon, "/changeContact", "POST",
                             data={"sessionID": alice["sessionID"], "contact": "bob", "status": status})
        assert code == 200
        assert daemon.chat.contact_status(daemon.chat.user("alice"), daemon.chat.user("bob")) == status
    assert await call(daemon, "/changeContact", "POST", data={
        "sessionID": alice["sessionID"], "contact": "bob", "status": "enemy"}) == (
        400, {"error": "unknown contact status"})


@pytest.mark.parametrize("form", FORMS)
@pytest_twisted.ensureDeferred
async def test_save_message_and_get_contact_messages(daemon, form):
    alice = await register_and_login(daemon, "alice")
    bob = await register_and_login(daemon, "bob")
    code, saved = await call(daemon, "/saveMessage", "POST", json_body={
        "sessionID": alice["sessionID"], "recipientID": bob["user_id"], "content": "hi bob"})
    assert code == 200
    await send(daemon, "/saveMessage", form, sessionID=bob["sessionID"], recipientID="alice",
               content="hi alice")
    code, messages = await send(daemon, "/getContactMessages", form, "GET",
                                sessionID=alice["sessionID"], contactID=bob["user_id"])
    assert code == 200
    assert [(m["content"], m["sender_user_id"]) for m in messages] == [
        ("hi bob", alice["user_id"]), ("hi alice", bob["user_id"])]
    assert messages[0]["message_id"] == saved["message_id"]
    assert messages[0]["send_at"].endswith("Z") and "T" in messages[0]["send_at"]
    code, seen_by_bob = await send(daemon, "/getContactMessages", form, sessionID=bob["sessionID"],
                                   contact="alice")
    assert seen_by_bob == messages


@pytest_twisted.ensureDeferred
async def test_every_400(daemon):
    alice = await register_and_login(daemon, "alice")
    sid = alice["sessionID"]
    bad = [
        ("/register", {"password": "pw"}, "missing parameter: username"),
        ("/register", {"username": "bob"}, "missing parameter: password"),
        ("/register", {"username": "alice", "password": "pw"}, "Username already exists"),
        ("/register", {"username": "1bob", "password": "pw"}, "invalid username"),
        ("/login", {"username": "alice"}, "missing parameter: password"),
        ("/login", {"password": "pw"}, "missing parameter: username"),
        ("/login", {"username": "alice", "password": "wrong"}, "Invalid username or password"),
        ("/login", {"username": "nobody", "password": "pw"}, "Invalid username or password"),
        ("/logout", {}, "Invalid session"),
        ("/addContact", {"sessionID": sid}, "missing parameter: contact"),
        ("/addContact", {"contact": "alice"}, "Invalid session"),
        ("/addContact", {"sessionID": sid, "contact": "nobody"}, "User not found"),
        ("/addContact", {"sessionID": sid, "contactID": "999"}, "User not found"),
        ("/addContact", {"sessionID": sid, "contact": "alice"}, "that is you"),
        ("/changeContact", {"sessionID": sid, "contact": "alice"}, "missing parameter: status"),
        ("/changeContact", {"sessionID": sid, "status": "friend"}, "missing parameter: contact"),
        ("/getContacts", {}, "Invalid session"),
        ("/getContacts", {"sessionID": "forged"}, "Invalid session"),
        ("/getContactMessages", {"sessionID": sid}, "missing parameter: contact"),
        ("/getContactMessages", {"sessionID": sid, "contact": "nobody"}, "User not found"),
        ("/saveMessage", {"sessionID": sid, "content": "x"}, "missing parameter: recipientID"),
        ("/saveMessage", {"sessionID": sid, "recipientID": "alice"}, "missing parameter: content"),
    ]
    for path, params, error in bad:
        assert await call(daemon, path, "POST", data=params) == (400, {"error": error}), path
    # Wrong JSON types, and JSON that is not an object, or not JSON at all.
    assert await call(daemon, "/register", "POST", json_body={"username": 5, "password": "pw"}) == (
        400, {"error": "username must be a non-empty string"})
    assert await call(daemon, "/addContact", "POST", json_body={"sessionID": sid, "contact": True}) == (
        400, {"error": "contact must be a user id or a username"})
    assert await call(daemon, "/saveMessage", "POST", json_body={
        "sessionID": sid, "recipientID": 1, "content": "x", "type": 3}) == (
        400, {"error": "type must be a string"})
    json_type = {"Content-Type": ["application/json"]}
    for raw in (b"{not json", b"[1, 2]", b"\xff\xfe", b"[" * 50000):
        assert await call(daemon, "/login", "POST", raw=raw, headers=json_type) in (
            (400, {"error": "malformed JSON body"}), (400, {"error": "the JSON body must be an object"}))
    assert await call(daemon, "/login", "POST", raw=b'{"username": "alice", ') == (
        400, {"error": "malformed JSON body"})
    # Unknown parameters are ignored, as the original did.
    assert (await call(daemon, "/getContacts", params={"sessionID": sid, "colour": "red"}))[0] == 200


@pytest_twisted.ensureDeferred
async def test_ids_past_the_stores_integers_or_in_other_digits_get_400(daemon):
    """Message ids are SQLite integers, and str.isdigit takes digits int() refuses ("²"):
    neither may reach the store or int() (it was HTTP 500 and a traceback); a negative limit
    was SQLite's LIMIT -1, the whole conversation in one answer."""
    alice = await register_and_login(daemon, "alice")
    bob = await register_and_login(daemon, "bob")
    sid = alice["sessionID"]
    group = (await call(daemon, "/joinGroup", "POST", data={"sessionID": sid, "group": "g"}))[1]["group_id"]
    too_big, too_small = 2**63, -(2**63) - 1
    bad = [
        ("/getConversations", {"before": too_big}, "before must be a message id"),
        ("/getConversations", {"before": "\u00b2"}, "before must be a message id"),
        ("/getConversations", {"limit": "\u00b2"}, "limit must be a whole number above 0"),
        ("/getContactMessages", {"contact": "bob", "limit": -1}, "limit must be a whole number above 0"),
        ("/getGroupMessages", {"groupID": group, "limit": -1}, "limit must be a whole number above 0"),
        ("/getContactMessages", {"contact": "bob", "before": too_big}, "before must be a message id"),
        ("/getContactMessages", {"contact": "bob", "before": too_small}, "before must be a message id"),
        ("/getContactMessages", {"contact": "\u00b2"}, "User not found"),
        ("/getGroupMessages", {"groupID": group, "before": too_big}, "before must be a message id"),
        ("/getGroupMessages", {"groupID": "\u00b2"}, "groupID must be a group id"),
        ("/markRead", {"contact": "bob", "message_id": too_big}, "message_id must be a message id"),
        ("/markRead", {"contact": "bob", "message_id": -5}, "message_id must be a message id"),
        ("/markRead", {"contactID": "\u00b2"}, "User not found"),
        ("/saveMessage", {"recipientID": "\u00b2", "content": "x"}, "User not found"),
        ("/addContact", {"contact": "\u00b2"}, "User not found"),
    ]
    for path, params, error in bad:
        assert await call(daemon, path, "POST", json_body={"sessionID": sid, **params}) == (
            400, {"error": error}), (path, params)
    assert (await call(daemon, "/markRead", "POST", json_body={
        "sessionID": sid, "contact": "bob", "message_id": 2**63 - 1}))[1] == {"last_read_id": 2**63 - 1}
    assert (await call(daemon, "/getContactMessages", "POST", data={
        "sessionID": bob["sessionID"], "contact": "alice"})) == (200, [])


@pytest_twisted.ensureDeferred
async def test_oversized_bodies_are_refused_and_the_port_goes_on(daemon):
    code, reply = await call(daemon, "/login", "POST", raw=b"x" * 70000)
    assert (code, reply) == (413, {"error": "request body too large"})
    # A chunked body (no Content-Length) is counted as it arrives.
    client = await connect(daemon.port("web"))
    client.send_raw(b"POST /login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(20):
        client.send_raw(b"1000\r\n" + b"y" * 4096 + b"\r\n")
    assert await client.receive() == b"HTTP/1.1 413 Payload Too Large"
    client.transport.loseConnection()
    await client.wait_closed()
    assert await call(daemon, "/") == (200, "Hello World")


ALICE = User(1, "alice", "1" * 32, None, 0.0)


def started(sessions, user=ALICE):
    return sessions.start(user).result  # the fake store keeps it at once


def test_session_ids_expire_unused_but_not_while_a_socket_uses_them():
    clock = task.Clock()
    sessions = WebSessions(Tokens(), clock, ttl=60, limits=Limits())
    first, second = started(sessions), started(sessions)
    assert first.token != second.token and len(first.token) >= 40
    clock.advance(50)
    assert sessions.get(first.token) is first  # a use pushes the expiry back
    second.sockets.add(object())
    clock.advance(50)
    assert sessions.get(first.token) is first
    assert sessions.get(second.token) is second  # a connected socket keeps it alive
    clock.advance(61)
    with pytest.raises(InvalidSession):
        sessions.get(first.token)
    assert len(sessions) == 1
    second.sockets.clear()
    clock.advance(61)
    assert len(sessions) == 0


def test_a_user_holds_a_bounded_number_of_session_ids_and_the_oldest_go():
    clock = task.Clock()
    tokens = Tokens()
    sessions = WebSessions(tokens, clock, ttl=600, limits=Limits(), per_user=3)
    first, second, third = [started(sessions) for _ in range(3)]
    first.sockets.add(object())  # the page that is open: spared while others can go
    clock.advance(1)
    sessions.get(second.token)
    fourth = started(sessions)
    with pytest.raises(InvalidSession):
        sessions.get(third.token)  # the least recently used without a socket
    assert {s.token for s in sessions.of_user(ALICE)} == {first.token, second.token, fourth.token}
    assert len(tokens.kept) == 3
    bob = User(2, "bob", "1" * 32, None, 0.0)
    started(sessions, bob)  # another user's logins end none of alice's
    assert len(sessions.of_user(ALICE)) == 3


def test_session_ids_outlive_a_restart_but_not_their_expiry():
    clock = task.Clock()
    tokens = Tokens()
    sessions = WebSessions(tokens, clock, ttl=600, limits=Limits())
    kept, stale = started(sessions), started(sessions)
    clock.advance(300)
    sessions.get(kept.token)  # used half-way: the store hears of it
    sessions.close()
    clock.advance(400)  # the daemon was down a while
    again = WebSessions(tokens, clock, ttl=600, limits=Limits())
    again.load()
    assert again.get(kept.token).user is ALICE
    with pytest.raises(InvalidSession):
        again.get(stale.token)
    assert len(tokens.kept) == 1
    clock.advance(601)
    assert len(again) == 0 and tokens.kept == {}


async def scrape(daemon) -> dict:
    """/metrics parsed: {sample name with its labels: value}, and the HELP of each family."""
    response = await treq.get(base_url(daemon) + "/metrics")
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == ["text/plain; version=0.0.4; charset=utf-8"]
    samples, helps = {}, {}
    for family in text_string_to_metric_families((await treq.content(response)).decode()):
        helps[family.name] = family.documentation
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples, helps


@pytest_twisted.ensureDeferred
async def test_metrics_in_prometheus_text_format(daemon):
    fresh, helps = await scrape(daemon)
    for counter in ["logins", "login_failures", "registrations", "messages", "deliveries", "sessions",
                    "web_errors", "connections_refused"]:
        assert fresh[f"chatserv_{counter}_total"] == 0, counter  # present before it ever counts
        assert helps[f"chatserv_{counter}"], counter
    assert fresh["process_resident_memory_bytes"] > 0 and fresh["process_open_fds"] > 0
    assert "process_cpu_seconds_total" in fresh
    assert fresh["chatserv_delivery_latency_seconds_count"] == 0

    alice = await register_and_login(daemon, "alice")
    await call(daemon, "/login", params={"username": "alice", "password": "wrong"})
    skype = await connect(daemon.port("skype"))
    await skype.request(b"PING")
    bob = await connect(daemon.port("skype"))
    assert await bob.request(b"CREATE bob pw") == b"200 OK"
    assert await bob.request(b"LOGIN bob pw") == b"200 OK"
    await call(daemon, "/saveMessage", "POST", json_body={"sessionID": alice["sessionID"],
                                                         "recipientID": "bob", "content": "hi"})
    await call(daemon, "/saveMessage", "POST", json_body={"sessionID": alice["sessionID"],
                                                         "recipientID": "nobody", "content": "hi"})
    samples, _ = await scrape(daemon)
    assert samples['chatserv_connections{protocol="skype"}'] == 2
    assert samples["chatserv_rest_sessions"] == 1
    assert samples["chatserv_logins_total"] == 2
    assert samples["chatserv_login_failures_total"] == 1
    assert samples["chatserv_web_errors_total"] == 2
    assert samples["chatserv_messages_total"] == 1
    # bob's skype session takes direct messages from its inbox: nothing was handed to it live
    assert samples["chatserv_deliveries_total"] == 0
    assert samples["chatserv_delivery_latency_seconds_count"] == 1
    assert samples['chatserv_rest_request_seconds_count{endpoint="save_message"}'] == 2
    assert samples['chatserv_rest_request_seconds_count{endpoint="login"}'] == 2
    skype.transport.loseConnection()
    bob.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_a_user_created_on_the_skype_port_logs_in_here(daemon):
    skype = await connect(daemon.port("skype"))
    assert await skype.request(b"CREATE carol secret") == b"200 OK"
    assert await skype.request(b"ADD alice") == b"301 Not found"
    alice = await register_and_login(daemon, "alice")
    assert await skype.request(b"ADD alice") == b"200 OK"
    code, reply = await call(daemon, "/login", "POST", json_body={"username": "carol", "password": "secret"})
    assert code == 200
    code, contacts = await call(daemon, "/getContacts", params={"sessionID": reply["sessionID"]})
    assert contacts == [{"contact_id": alice["user_id"], "name": "alice", "url": "", "status": "friend"}]
    # A message saved here waits in the inbox of the Skype user (seed 000 has no messages).
    await call(daemon, "/saveMessage", "POST", json_body={
        "sessionID": alice["sessionID"], "recipientID": "carol", "content": "hello carol"})
    inbox = await daemon.chat.inbox(daemon.chat.user("carol"))
    assert [m.body for m in inbox] == ["hello carol"]
    assert await skype.request(b"EXIT") == b"201 Goodbye"


@pytest_twisted.ensureDeferred
async def test_urls_and_parameters_that_are_not_utf8_get_400(daemon):
    assert await call(daemon, "/%ff") == (400, {"error": "the URL must be UTF-8"})
    assert await call(daemon, "/getContacts?sessionID=%ff") == (400, {"error": "parameters must be UTF-8"})
    client = await connect(daemon.port("web"))
    client.send_raw(b"GET /\xff HTTP/1.1\r\nHost: x\r\n\r\n")
    assert await client.receive() == b"HTTP/1.1 400 Bad Request"
    client.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_messages_over_rest_are_rate_limited():
    daemon = await Daemon(extra=["--messages-per-second", "0.001", "--message-burst", "2"]).start()
    try:
        alice = await register_and_login(daemon, "alice")
        message = {"sessionID": alice["sessionID"], "recipientID": "alice", "content": "note to self"}
        for _ in range(2):
            assert (await call(daemon, "/saveMessage", "POST", json_body=message))[0] == 200
        assert await call(daemon, "/saveMessage", "POST", json_body=message) == (400, {"error": "slow down"})
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_messages_read_here_are_not_handed_over_again_as_new_elsewhere(daemon):
    alice = await register_and_login(daemon, "alice")
    bob = await register_and_login(daemon, "bob")
    for text in ("one", "two"):
        await call(daemon, "/saveMessage", "POST", data={
            "sessionID": alice["sessionID"], "recipientID": "bob", "content": text})
    await call(daemon, "/getContactMessages", params={"sessionID": bob["sessionID"], "contact": "alice"})
    assert await daemon.chat.take_undelivered(daemon.chat.user("bob")) == []
    await call(daemon, "/saveMessage", "POST", data={
        "sessionID": alice["sessionID"], "recipientID": "bob", "content": "three"})
    assert [m.body for m in await daemon.chat.take_undelivered(daemon.chat.user("bob"))] == ["three"]


@pytest_twisted.ensureDeferred
async def test_failed_logins_from_one_address_are_throttled():
    daemon = await Daemon(extra=["--login-attempts", "2"]).start()
    try:
        await register_and_login(daemon, "alice")
        wrong = {"username": "alice", "password": "wrong"}
        for _ in range(2):
            assert await call(daemon, "/login", "POST", data=wrong) == (
                400, {"error": "Invalid username or password"})
        assert await call(daemon, "/login", "POST", data={"username": "alice", "password": "pw"}) == (
            400, {"error": "too many failed logins: try again later"})
    finally:
        await daemon.stop()
