"""The web chat page at /chat: its files and REST helpers (treq), and the page itself in Chromium.

The browser test runs tests/browser/drive.js (playwright-core driving Debian's
/usr/bin/chromium) against the real ``twistd chatserv``, while an IRC user, on a raw socket
here, is the person on the other side.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor, task

from chatserv.service import ChatService
from chatserv.store.sqlite import SQLiteStore
from tests.support import ROOT, TIMEOUT, Twistd, cheap_hasher, connect
from tests.web_support import NodeClient, base_url, call, register_and_login

CHROMIUM = "/usr/bin/chromium"
BROWSER = ROOT / "tests" / "browser"
DRIVER_TIMEOUT = 120  # seconds the driver gives itself before it exits on its own


async def fetch(daemon, path):
    response = await treq.get(base_url(daemon) + path).addTimeout(TIMEOUT, reactor)
    return response, await treq.content(response)


@pytest_twisted.ensureDeferred
async def test_the_page_its_files_and_its_policy_are_served(daemon):
    response, page = await fetch(daemon, "/chat")
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type") == [b"text/html"]
    [policy] = response.headers.getRawHeaders(b"content-security-policy")
    assert b"default-src 'self'" in policy
    for name, kind, marker in [("chat.js", b"javascript", b'"use strict"'),
                               ("chat.css", b"text/css", b"#messages"),
                               ("socket.io.min.js", b"javascript", b"Socket.IO v4.8.1")]:
        assert f'/static/{name}"'.encode() in page
        response, body = await fetch(daemon, "/static/" + name)
        assert response.code == 200 and kind in response.headers.getRawHeaders(b"content-type")[0]
        assert marker in body[:200] or marker in body


@pytest_twisted.ensureDeferred
async def test_presence_groups_and_group_history(daemon):
    alice = await register_and_login(daemon, "alice")
    sid = alice["sessionID"]
    await daemon.chat.register("bob", "bob-pw")
    assert (await call(daemon, "/addContact", "POST", data={"sessionID": sid, "contact": "bob"}))[0] == 200
    offline = {"user_id": daemon.chat.user("bob").id, "username": "bob", "status": "offline"}
    assert await call(daemon, "/getPresence", params={"sessionID": sid}) == (200, [offline])

    bob = await connect(daemon.port("skype"))  # bob comes online on another port
    assert await bob.request(b"LOGIN bob bob-pw") == b"200 OK"
    assert await call(daemon, "/getPresence", params={"sessionID": sid}) == (
        200, [dict(offline, status="online")])

    assert await call(daemon, "/getGroups", params={"sessionID": sid}) == (200, [])
    code, lobby = await call(daemon, "/joinGroup", "POST", data={"sessionID": sid, "group": "lobby"})
    assert code == 200 and lobby["name"] == "lobby"
    code, tea = await call(daemon, "/joinGroup", "POST", json_body={"sessionID": sid, "group": "tea"})
    assert code == 200 and tea["name"] == "tea" and daemon.chat.room("tea").created_by == alice["user_id"]
    assert await call(daemon, "/getGroups", params={"sessionID": sid}) == (200, [lobby, tea])

    await daemon.chat.join_room(daemon.chat.user("bob"), "lobby")
    await daemon.chat.send_room(daemon.chat.user("bob"), "lobby", "<i>hi</i> room")
    group = {"groupID": lobby["group_id"]}
    code, history = await call(daemon, "/getGroupMessages", params={"sessionID": sid, **group})
    assert code == 200 and [(m["sender_username"], m["sender_user_id"], m["content"]) for m in history] == [
        ("bob", offline["user_id"], "<i>hi</i> room")]

    carol = await register_and_login(daemon, "carol")
    for path, params, error in [
        ("/getGroupMessages", {"sessionID": carol["sessionID"], **group}, "not a member"),
        ("/getGroupMessages", {"sessionID": sid, "groupID": "lobby"}, "groupID must be a group id"),
        ("/getGroupMessages", {"sessionID": sid, "groupID": "999"}, "Group not found"),
        ("/joinGroup", {"sessionID": sid, "group": "no spaces"}, "invalid room name"),
        ("/getGroups", {"sessionID": "forged"}, "Invalid session"),
        ("/getPresence", {}, "Invalid session"),
    ]:
        assert await call(daemon, path, params=params) == (400, {"error": error}), path


def browser_driver() -> str:
    """tests/browser/drive.js with its node_modules installed; skips when a tool is missing."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium package to test the web page")
    if not shutil.which("node") or not shutil.which("npm"):
        pytest.skip("node and npm are needed to drive Chromium (playwright-core)")
    if not (BROWSER / "node_modules" / "playwright-core").is_dir():
        subprocess.run(["npm", "ci", "--prefix", str(BROWSER), "--no-audit", "--no-fund"], check=True,
                       timeout=300, stdout=subprocess.DEVNULL,
                       env=dict(os.environ, PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD="1"))
    return str(BROWSER / "drive.js")


def start_driver(url, screenshots) -> NodeClient:
    driver = NodeClient()
    reactor.spawnProcess(driver, shutil.which("node"),
                         ["node", browser_driver(), url, str(screenshots), str(DRIVER_TIMEOUT)],
                         env={"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")},
                         path=str(BROWSER))
    return driver


def go(driver: NodeClient, step: str):
    driver.transport.write(json.dumps({"go": step}).encode() + b"\n")


async def irc_until(client, needle: bytes) -> bytes:
    """The first line from the IRC server that contains ``needle``."""
    while needle not in (line := await client.receive()):
        pass
    return line


async def rest(web: str, path: str, **params):
    """One REST call as another user would make it (the page's peer on the web port)."""
    response = await treq.post(web + path, data=params).addTimeout(TIMEOUT, reactor)
    reply = await treq.json_content(response)
    assert response.code == 200, (path, reply)
    return reply


async def irc_login(port: int, name: str, password: str):
    client = await connect(port)
    client.send(f"PASS {password}".encode(), f"NICK {name}".encode(), f"USER {name} 0 * :{name}".encode())
    await irc_until(client, b" 001 ")
    return client


async def write_old_history(db: str, days: int = 3, count: int = 60):
    """While the daemon is down: dave, a new user, wrote to alice once an hour ``days`` ago on.

    The real service on the daemon's store, with a clock set back, so the messages carry old
    times as if they had been sent then."""
    clock = task.Clock()
    clock.advance(time.time() - days * 86400)
    chat = ChatService(SQLiteStore(db, reactor), cheap_hasher(threads=True), clock)
    chat.startService()
    await chat.when_ready()
    dave = await chat.register("dave", "dave-pw")
    for n in range(count):
        clock.advance(3600)
        await chat.send_direct(dave, chat.user("alice"), f"old news {n}")
    await chat.stopService()


@pytest_twisted.ensureDeferred
async def test_the_page_in_chromium_chats_with_an_irc_user_and_survives_a_restart(tmp_path):
    """The real ``twistd chatserv`` (stopped and started again on the same web port and store),
    one Chromium with two tabs of alice (1280 and 375 px), bob, carol and dave on IRC, the
    Skype port and REST."""
    browser_driver()  # skip before starting anything
    daemon = Twistd(tmp_path)
    driver = None
    try:
        skype = await connect(daemon.ports["skype"])  # accounts made on another port
        for name in ("bob", "carol"):
            assert await skype.request(f"CREATE {name} {name}-pw".encode()) == b"200 OK"
        assert await skype.request(b"EXIT") == b"201 Goodbye"
        bob = await irc_login(daemon.ports["irc"], "bob", "bob-pw")
        bob.send(b"JOIN #lobby")
        await irc_until(bob, b" JOIN ")

        web = f"http://127.0.0.1:{daemon.ports['web']}"
        # CHATSERV_SCREENSHOTS=docs writes the README's screenshots (docs/web-chat*.png)
        screenshots = Path(os.environ.get("CHATSERV_SCREENSHOTS") or tmp_path).resolve()
        driver = start_driver(web, screenshots)
        assert (await driver.next("opened"))["title"] == "chatserv"
        await driver.next("registered")
        wrong = await driver.next("wrong_password")
        assert (wrong["error"], wrong["chatHidden"]) == ("Invalid username or password", True)
        await driver.next("logged_in")
        assert await driver.next("unknown_contact") == {
            "event": "unknown_contact", "error": "User not found", "header": False}
        assert (await driver.next("contact_online"))["error"] == ""  # bob, online on IRC; error gone

        sent = await driver.next("sent")
        line = await irc_until(bob, b"PRIVMSG bob ")
        assert line.startswith(b":alice!") and line.endswith(b" PRIVMSG bob :" + sent["content"].encode())
        bob.send(b"PRIVMSG alice :got it: <b>not bold</b> <script>window.pwned=3</script>")
        go(driver, "replied")
        seen = await driver.next("reply_seen")
        assert seen["reply"] == "got it: <b>not bold</b> <script>window.pwned=3</script>"
        assert seen["bodies"] == [sent["content"], seen["reply"]]
        assert seen["elementsInMessages"] == 0 and seen["pwned"] is None

        bob.send(b"PRIVMSG alice :\x01ACTION waves\x01", b"NOTICE alice :heads up")
        go(driver, "typed")
        typed = await driver.next("typed")
        assert (typed["action"], typed["actionShown"]) == ("bob waves", '"* "bob waves')
        assert (typed["notice"], typed["noticeSender"]) == ("heads up", "-bob-")

        multiline = await driver.next("multiline")
        assert multiline["typed"] == multiline["body"] == "line one\nline two" and multiline["composer"] == ""
        assert (await irc_until(bob, b"PRIVMSG bob ")).endswith(b":line one")  # IRC: a line each
        assert (await irc_until(bob, b"PRIVMSG bob ")).endswith(b":line two")
        year = str(datetime.date.today().year)
        assert multiline["thirdContinued"]  # grouped under the message before it: same sender, minutes apart
        assert year in multiline["thirdTitle"] and year in multiline["firstTime"]  # the full date on hover
        assert multiline["days"] == ["Today"]

        await driver.next("joined_room")
        bob.send(b"PRIVMSG #lobby :welcome to the lobby")
        go(driver, "room_message")
        assert (await irc_until(bob, b"PRIVMSG #lobby ")).endswith(b" PRIVMSG #lobby :thanks, room")
        await driver.next("room_sent")
        await driver.next("notifications_on")
        bob.send(b"PRIVMSG alice :are you there?")
        go(driver, "direct_while_in_room")
        attention = await driver.next("attention")
        assert (attention["title"], attention["notified"]) == ("(1) chatserv", ["bob: are you there?"])

        second = await driver.next("second_tab")
        assert (second["badge"], second["title"]) == ("1", "(1) chatserv")
        assert (await driver.next("read_everywhere"))["title"] == "chatserv"
        phone = await driver.next("phone")
        assert phone["list"] == {"sideways": 0, "conversation": False}
        assert (phone["sideways"], phone["sidebar"], phone["back"]) == (0, False, True)
        assert phone["composerWidth"] == phone["width"] == 375
        back = await driver.next("phone_back")
        assert (back["conversation"], back["sideways"]) == (False, 0)

        carol = await irc_login(daemon.ports["irc"], "carol", "carol-pw")
        carol.send(b"PRIVMSG alice :hello, we have not met")
        go(driver, "stranger")
        stranger = await driver.next("stranger")
        assert (stranger["badge"], stranger["title"]) == ("1", "online, not a contact")
        carol.send(b"QUIT :later")
        await carol.wait_closed()
        go(driver, "stranger_left")
        await driver.next("stranger_offline")

        skype = await connect(daemon.ports["skype"])
        assert await skype.request(b"LOGIN carol carol-pw") == b"200 OK"
        assert await skype.request(b"ADD alice") == b"200 OK"
        go(driver, "request")
        assert await driver.next("request") == {"event": "request", "add": True, "block": True}
        await driver.next("added_back")
        alice_id = (await rest(web, "/login", username="alice", password="secret"))["user_id"]
        carol_session = (await rest(web, "/login", username="carol", password="carol-pw"))["sessionID"]
        for status in ("blocked", "friend"):  # carol blocks alice, then lifts it
            await rest(web, "/changeContact", sessionID=carol_session, contactID=str(alice_id), status=status)
        await rest(web, "/saveMessage", sessionID=carol_session, recipientID="alice", content="back again")
        go(driver, "unblocked")
        assert (await driver.next("unblocked"))["request"] is False

        await driver.next("disconnected")
        bob.send(b"PRIVMSG alice :while you were away")
        await rest(web, "/saveMessage", sessionID=carol_session, recipientID="alice", content="gap note")
        go(driver, "gap")
        assert (await driver.next("caught_up"))["notice"] is False

        bob.send(b"QUIT :bye")
        go(driver, "bob_left")
        await driver.next("contact_offline")

        assert "Traceback" not in daemon.stop()
        go(driver, "daemon_stopped")
        reconnecting = await driver.next("reconnecting")
        assert "reconnecting" in reconnecting["notice"] and reconnecting["composerDisabled"]
        assert "while you were away" in reconnecting["bodies"]  # what was said stays on screen

        await write_old_history(str(tmp_path / "chatserv.sqlite3"))
        same_port = f"--web=tcp:{daemon.ports['web']}:interface=127.0.0.1"
        daemon = Twistd(tmp_path, same_port)
        go(driver, "daemon_restarted")
        restarted = await driver.next("restarted")
        assert restarted["authHidden"] and restarted["badge"] == "60" and restarted["stranger"]
        assert restarted["title"] == "(63) chatserv"  # dave's 60, and carol's 3 not yet read

        paged = await driver.next("history_paged")
        assert (paged["firstPage"], paged["total"], paged["more"]) == (50, 60, False)
        assert paged["oldest"] == "old news 0" and abs(paged["shift"]) < 2
        # a separator a day, older ones by date (60 hours back from 12 hours ago: 3 or 4 days)
        assert len(set(paged["days"])) == len(paged["days"]) >= 3
        assert re.search(r"\b\d{4}\b", paged["days"][0]) and paged["days"][0] not in ("Today", "Yesterday")

        dave = await irc_login(daemon.ports["irc"], "dave", "dave-pw")
        dave.send(b"PRIVMSG alice :news from today")
        go(driver, "dave_writes")
        pill = await driver.next("pill")
        assert pill == {"event": "pill", "moved": 0, "atBottom": True, "newest": "news from today"}
        await driver.next("screenshots")
        for name in ("web-chat.png", "web-chat-phone.png"):
            assert (screenshots / name).read_bytes().startswith(b"\x89PNG")
        assert (await driver.next("done"))["problems"] == []
        assert await driver.ended.addTimeout(TIMEOUT, reactor) == 0
        assert "Traceback" not in daemon.stop()
    finally:
        if driver is not None and not driver.ended.called:
            driver.transport.signalProcess("TERM")  # playwright closes Chromium on SIGTERM
        if daemon.process.poll() is None:
            daemon.stop()
