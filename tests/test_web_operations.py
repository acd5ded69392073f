"""Running the web port: methods and bodies real clients send, session IDs across a restart,
refused connections, and clients behind a reverse proxy."""

import json

import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.logger import formatEvent, globalLogPublisher

from tests.support import TIMEOUT, Daemon, connect
from tests.web_support import base_url, call, register_and_login

EIO = "/socket.io/"


def polling(**extra):
    return {"EIO": "4", "transport": "polling", **extra}


@pytest_twisted.ensureDeferred
async def test_head_never_acts_and_only_safe_paths_answer_it(daemon):
    for path in ["/register?username=x&password=y", "/login?username=x&password=y", "/logout",
                 "/getContacts?sessionID=s", "/saveMessage"]:
        response = await treq.head(base_url(daemon) + path)
        assert response.code == 405, path
        assert response.headers.getRawHeaders("allow") == ["GET, POST"]
    assert not daemon.chat.is_registered("x")
    response = await treq.head(base_url(daemon) + EIO, params=polling())
    assert response.code == 400 and not daemon.ports["web"].factory.engine.sessions
    for path in ["/", "/healthz", "/chat", "/static/chat.js", "/metrics"]:
        assert (await treq.head(base_url(daemon) + path)).code == 200, path


@pytest_twisted.ensureDeferred
async def test_a_json_body_sent_as_a_form_is_read_as_json(daemon):
    # What `curl -d '{...}'` and jQuery's $.post(url, JSON.stringify(...)) send.
    form = {"Content-Type": ["application/x-www-form-urlencoded"]}
    assert (await call(daemon, "/register", "POST", raw=b'{"username": "alice", "password": "pw"}',
                       headers=form))[0] == 200
    code, login = await call(daemon, "/login?username=nobody", "POST", headers=form,
                             raw=b' {"username": "alice", "password": "pw"}')
    assert code == 200 and login["username"] == "alice"  # the body wins over the query string
    code, contacts = await call(daemon, "/getContacts?sessionID=" + login["sessionID"], "POST",
                                raw=b"{}", headers=form)
    assert (code, contacts) == (200, [])
    assert await call(daemon, "/login", "POST", raw=b"{broken", headers=form) == (
        400, {"error": "malformed JSON body"})


@pytest_twisted.ensureDeferred
async def test_session_ids_outlive_a_restart_of_the_daemon(tmp_path):
    daemon = await Daemon(str(tmp_path / "chat.sqlite3")).start()
    try:
        alice = await register_and_login(daemon, "alice")
        gone = await register_and_login(daemon, "bob")
        await call(daemon, "/logout", params={"sessionID": gone["sessionID"]})
        await daemon.restart()
        assert await call(daemon, "/getContacts", params={"sessionID": alice["sessionID"]}) == (200, [])
        assert await call(daemon, "/getContacts", params={"sessionID": gone["sessionID"]}) == (
            400, {"error": "Invalid session"})
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_logins_beyond_the_cap_end_the_oldest_session_id(daemon):
    await daemon.chat.register("alice", "pw")
    sessions = []
    for _ in range(11):  # one more than --web-sessions-per-user
        code, reply = await call(daemon, "/login", params={"username": "alice", "password": "pw"})
        sessions.append(reply["sessionID"])
    assert await call(daemon, "/getContacts", params={"sessionID": sessions[0]}) == (
        400, {"error": "Invalid session"})
    assert (await call(daemon, "/getContacts", params={"sessionID": sessions[1]}))[0] == 200
    assert len(daemon.ports["web"].factory.web_sessions) == 10


async def fresh_connection(daemon, method, **params):
    """A request on a connection of its own (a client with many sockets, or many clients)."""
    response = await treq.request(method, base_url(daemon) + EIO, persistent=False, **params).addTimeout(
        TIMEOUT, reactor)
    return response.code, (await treq.content(response)).decode()


@pytest_twisted.ensureDeferred
async def test_a_session_that_fills_its_address_quota_still_gets_its_own_connections():
    # 200 socket.io clients behind one address with the default 100: 100 connect now, 12 did.
    daemon = await Daemon(extra=["--connections-per-ip", "1"]).start()
    try:
        alice = await daemon.chat.register("alice", "pw")
        session = await daemon.ports["web"].factory.web_sessions.start(alice)
        code, opened = await fresh_connection(daemon, "GET", params=polling(sessionID=session.token))
        sid = json.loads(opened[1:])["sid"]
        # The quota is the session's now; its POST and its next poll come on new connections.
        assert await fresh_connection(daemon, "POST", params=polling(sid=sid), data=b"40") == (200, "ok")
        code, connected = await fresh_connection(daemon, "GET", params=polling(sid=sid))
        assert connected.startswith('40{"sid"')
        code, refused = await fresh_connection(daemon, "GET", params=polling())  # a second session
        assert json.loads(refused) == {"code": 4, "message": "Forbidden"}
    finally:
        await daemon.stop()


class LogLines:
    def __init__(self):
        self.lines = []

    def __call__(self, event):
        self.lines.append(formatEvent(event))

    def __enter__(self):
        globalLogPublisher.addObserver(self)
        return self

    def __exit__(self, *exc):
        globalLogPublisher.removeObserver(self)


@pytest_twisted.ensureDeferred
async def test_a_refused_connection_gets_503_is_counted_and_logged_once_a_minute():
    daemon = await Daemon(extra=["--connections-per-ip", "1"]).start()
    try:
        holder = await connect(daemon.port("web"))  # the address's one connection
        with LogLines() as log:
            for _ in range(3):
                response = await treq.get(base_url(daemon) + "/healthz", persistent=False).addTimeout(
                    TIMEOUT, reactor)
                assert response.code == 503
                assert response.headers.getRawHeaders("retry-after") == ["10"]
                assert await treq.json_content(response) == {"error": "too many connections: try again later"}
        refusals = [line for line in log.lines if "refused" in line]
        assert refusals == ["refused a connection from 127.0.0.1, over --connections-per-ip"]
        holder.transport.loseConnection()
        await holder.wait_closed()
        code, metrics = await call(daemon, "/metrics")
        assert "chatserv_connections_refused_total 3.0\n" in metrics
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_behind_a_trusted_proxy_limits_and_throttles_follow_x_forwarded_for():
    daemon = await Daemon(extra=["--web-trusted-proxies", "127.0.0.0/8", "--connections-per-ip", "1",
                                 "--login-attempts", "2"]).start()
    try:
        await register_and_login(daemon, "alice")  # several connections from the proxy: all fine

        def via(client, **params):
            return call(daemon, "/login", params={"username": "alice", **params},
                        headers={"X-Forwarded-For": [f"203.0.113.9, {client}"]})

        for _ in range(2):
            assert (await via("198.51.100.1", password="wrong"))[0] == 400
        assert await via("198.51.100.1", password="pw") == (
            400, {"error": "too many failed logins: try again later"})
        assert (await via("198.51.100.2", password="pw"))[0] == 200  # another client behind the proxy

        # One Engine.IO session per client address, whatever the proxy's own address.
        first = await call(daemon, EIO, params=polling(), headers={"X-Forwarded-For": ["198.51.100.1"]})
        assert first[0] == 200
        assert await call(daemon, EIO, params=polling(), headers={"X-Forwarded-For": ["198.51.100.1"]}) == (
            400, {"code": 4, "message": "Forbidden"})
        other = await call(daemon, EIO, params=polling(), headers={"X-Forwarded-For": ["198.51.100.2"]})
        assert other[0] == 200
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_x_forwarded_for_from_anyone_else_is_ignored():
    daemon = await Daemon(extra=["--web-trusted-proxies", "10.0.0.1", "--login-attempts", "2"]).start()
    try:
        await register_and_login(daemon, "alice")
        for n in range(3):
            reply = await call(daemon, "/login", params={"username": "alice", "password": "wrong"},
                               headers={"X-Forwarded-For": [f"198.51.100.{n}"]})
        assert reply == (400, {"error": "too many failed logins: try again later"})
    finally:
        await daemon.stop()
