"""What must never leak: passwords and verifiers appear in no log line and on no wire."""

import base64
import json

import pytest_twisted
from twisted.internet import defer, endpoints, protocol, reactor
from twisted.logger import formatEvent, globalLogPublisher

from chatserv.credentials import password_digest
from chatserv.protocols.framing import LengthPrefixFramer
from tests.support import TIMEOUT, connect
from tests.web_support import call

PASSWORD = "correct-horse-battery"


class Recorder:
    def __init__(self):
        self.lines = []

    def __call__(self, event):
        self.lines.append(formatEvent(event) + repr(event))


@pytest_twisted.ensureDeferred
async def test_no_password_or_verifier_in_logs_or_replies(daemon):
    log = Recorder()
    globalLogPublisher.addObserver(log)
    seen = []
    try:
        line = await connect(daemon.port("skype"))
        for request in [f"CREATE alice {PASSWORD}", f"LOGIN alice {PASSWORD}", "LOGIN alice wrong",
                        "SEARCH alice", "AVAILABLE alice"]:
            seen.append(await line.request(request.encode()))
        framed = await connect(daemon.port("skype-framed"), LengthPrefixFramer(1 << 20))
        seen.append(await framed.receive())
        seen.append(await framed.request(f"LOGIN alice {PASSWORD}".encode()))
        seen.append(await framed.request(b"SEARCH alice"))

        salted = await connect(daemon.port("salted"))
        salt = json.loads(await salted.request(b'{"type":"salt","user":"alice"}'))["salt"]
        digest = password_digest(salt, PASSWORD)
        seen.append(await salted.request(json.dumps(
            {"type": "login", "user": "alice", "password": digest}).encode()))
        seen.append(await salted.request(b'{"type":"userlist","user":"alice","onlinetype":"true"}'))
    finally:
        globalLogPublisher.removeObserver(log)

    alice = daemon.chat.user("alice")
    secrets = [PASSWORD, alice.verifier, digest, alice.verifier.rsplit("$", 1)[-1]]
    wire = b"\n".join(seen).decode()
    assert "password:," in wire  # the seed 000 record keeps the field, always empty
    for secret in secrets:
        assert secret not in wire
        assert not any(secret in text for text in log.lines)


class Recording(protocol.Protocol):
    """Keeps every byte the server sends; ``until(marker)`` waits for a marker to arrive."""

    def __init__(self):
        self.data = b""
        self._waiting: list[tuple[bytes, defer.Deferred]] = []

    def dataReceived(self, data):
        self.data += data
        for marker, d in list(self._waiting):
            if marker in self.data:
                self._waiting.remove((marker, d))
                d.callback(None)

    def send(self, *lines: bytes, end=b"\n"):
        self.transport.write(b"".join(line + end for line in lines))

    def until(self, marker: bytes):
        d = defer.Deferred()
        self._waiting.append((marker, d))
        self.dataReceived(b"")
        return d.addTimeout(TIMEOUT, reactor)


async def recording(port: int) -> Recording:
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    return await endpoints.connectProtocol(endpoint, Recording())


@pytest_twisted.ensureDeferred
async def test_no_secret_on_the_other_ports_wires_or_in_the_log(daemon):
    log = Recorder()
    globalLogPublisher.addObserver(log)
    wire = []
    sasl = base64.b64encode(f"\0carol\0{PASSWORD}".encode())
    try:
        for path, password in [("/register", PASSWORD), ("/login", PASSWORD), ("/login", "wrong")]:
            wire.append(json.dumps(await call(daemon, path, "POST",
                                              data={"username": "carol", "password": password})))

        chatroom = await recording(daemon.port("chatroom"))
        chatroom.send(*(json.dumps({"type": "auth", "username": "carol", "password": p}).encode()
                        for p in ("wrong", PASSWORD)), b'{"type":"online"}')
        await chatroom.until(b'"carol": "carol"')

        rooms = await recording(daemon.port("rooms"))
        rooms.send(f"[2, ['carol', 'wrong']][2, ['carol', '{PASSWORD}']][666, None]".encode(), end=b"")
        await rooms.until(b"['OK']")

        irc = await recording(daemon.port("irc"))
        irc.send(b"CAP LS 302", b"CAP REQ :sasl", b"AUTHENTICATE PLAIN", b"AUTHENTICATE " + sasl, b"CAP END",
                 b"NICK carol", b"USER c 0 * :C", b"PRIVMSG NickServ :IDENTIFY carol " + PASSWORD.encode(),
                 b"PASS " + PASSWORD.encode(), b"PING :sentinel", end=b"\r\n")
        await irc.until(b"sentinel")
        wire += [client.data.decode("utf-8", "replace") for client in (chatroom, rooms, irc)]
    finally:
        globalLogPublisher.removeObserver(log)

    carol = daemon.chat.user("carol")
    secrets = [PASSWORD, carol.verifier, password_digest(carol.salt, PASSWORD),
               carol.verifier.rsplit("$", 1)[-1], sasl.decode()]
    # the logins worked: chat-room, rooms (no current room), SASL
    assert '"result": "ok"' in wire[-3] and "[None]" in wire[-2] and " 903 " in wire[-1]
    for secret in secrets:
        assert not any(secret in text for text in wire)
        assert not any(secret in text for text in log.lines)
