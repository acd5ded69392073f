"""What must never leak: passwords and verifiers appear in no log line and on no wire."""

import json

import pytest_twisted
from twisted.logger import formatEvent, globalLogPublisher

from chatserv.credentials import password_digest
from chatserv.protocols.framing import LengthPrefixFramer
from tests.support import connect

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
