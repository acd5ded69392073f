"""The web chat page at /chat: its files and REST helpers (treq), and the page itself in Chromium.

The browser test runs tests/browser/drive.js (playwright-core driving Debian's
/usr/bin/chromium) against the real ``twistd chatserv``, while an IRC user, on a raw socket
here, is the person on the other side.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor

from tests.support import ROOT, TIMEOUT, Twistd, connect
from tests.web_support import NodeClient, base_url, call, register_and_login

CHROMIUM = "/usr/bin/chromium"
BROWSER = ROOT / "tests" / "browser"
DRIVER_TIMEOUT = 60  # seconds the driver gives itself before it exits on its own


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


def start_driver(url, screenshot) -> NodeClient:
    driver = NodeClient()
    reactor.spawnProcess(driver, shutil.which("node"),
                         ["node", browser_driver(), url, str(screenshot), str(DRIVER_TIMEOUT)],
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


@pytest_twisted.ensureDeferred
async def test_the_page_in_chromium_chats_with_an_irc_user_and_survives_a_restart(tmp_path):
    """The real ``twistd chatserv`` (stopped and started again on the same web port and store)."""
    browser_driver()  # skip before starting anything
    daemon = Twistd(tmp_path)
    driver = None
    try:
        skype = await connect(daemon.ports["skype"])  # bob's account comes from another port
        assert await skype.request(b"CREATE bob bob-pw") == b"200 OK"
        assert await skype.request(b"EXIT") == b"201 Goodbye"
        bob = await connect(daemon.ports["irc"])
        bob.send(b"PASS bob-pw", b"NICK bob", b"USER bob 0 * :Bob", b"JOIN #lobby")
        await irc_until(bob, b" JOIN ")

        screenshot = tmp_path / "web-chat.png"
        web = f"http://127.0.0.1:{daemon.ports['web']}"
        driver = start_driver(web, screenshot)
        assert (await driver.next("opened"))["title"] == "chatserv"
        await driver.next("registered")
        wrong = await driver.next("wrong_password")
        assert (wrong["error"], wrong["chatHidden"]) == ("Invalid username or password", True)
        await driver.next("logged_in")
        assert (await driver.next("unknown_contact"))["notice"] == "User not found"
        await driver.next("contact_online")  # bob, online on IRC, shows as online

        sent = await driver.next("sent")
        line = await irc_until(bob, b"PRIVMSG bob ")
        assert line.startswith(b":alice!") and line.endswith(b" PRIVMSG bob :" + sent["content"].encode())
        bob.send(b"PRIVMSG alice :got it: <b>not bold</b> <script>window.pwned=3</script>")
        go(driver, "replied")
        seen = await driver.next("reply_seen")
        assert seen["reply"] == "got it: <b>not bold</b> <script>window.pwned=3</script>"
        assert seen["bodies"] == [sent["content"], seen["reply"]]
        assert seen["elementsInMessages"] == 0 and seen["pwned"] is None

        await driver.next("joined_room")
        bob.send(b"PRIVMSG #lobby :welcome to the lobby")
        go(driver, "room_message")
        assert (await irc_until(bob, b"PRIVMSG #lobby ")).endswith(b" PRIVMSG #lobby :thanks, room")
        assert (await driver.next("screenshot"))["path"] == str(screenshot)
        assert screenshot.read_bytes().startswith(b"\x89PNG")

        bob.send(b"QUIT :bye")
        go(driver, "bob_left")
        await driver.next("contact_offline")

        assert "Traceback" not in daemon.stop()
        go(driver, "daemon_stopped")
        reconnecting = await driver.next("reconnecting")
        assert "reconnecting" in reconnecting["notice"] and reconnecting["composerDisabled"]
        assert reconnecting["bodies"] == seen["bodies"]  # what was said stays on screen

        # Back on the same port and store: the old session ID is gone, so the page asks for a
        # login, after which the conversation is all there.
        same_port = f"--web=tcp:{daemon.ports['web']}:interface=127.0.0.1"
        daemon = Twistd(tmp_path, same_port)
        go(driver, "daemon_restarted")
        assert (await driver.next("session_ended"))["error"] == "Your session has ended: please log in again."
        assert (await driver.next("history"))["bodies"] == seen["bodies"]
        assert (await driver.next("done"))["problems"] == []
        assert await driver.ended.addTimeout(TIMEOUT, reactor) == 0
        assert "Traceback" not in daemon.stop()
    finally:
        if driver is not None and not driver.ended.called:
            driver.transport.signalProcess("TERM")  # playwright closes Chromium on SIGTERM
        if daemon.process.poll() is None:
            daemon.stop()
