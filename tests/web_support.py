"""Clients for the web port: treq for REST, and the real npm socket.io-client under Node."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import treq
from twisted.internet import defer, protocol, reactor

from tests.support import TIMEOUT

JS = os.path.join(os.path.dirname(__file__), "js")


def base_url(daemon) -> str:
    return f"http://127.0.0.1:{daemon.port('web')}"


async def call(daemon, path, method="GET", *, params=None, data=None, json_body=None, raw=None,
               headers=None):
    """One request; returns (status, the decoded JSON body, or the text when it is not JSON)."""
    kwargs = {"params": params, "headers": headers}
    if data is not None:
        kwargs["data"] = data
    if json_body is not None:
        kwargs["json"] = json_body
    if raw is not None:
        kwargs["data"] = raw
    response = await treq.request(method, base_url(daemon) + path, **kwargs).addTimeout(TIMEOUT, reactor)
    body = await treq.content(response)
    if response.headers.getRawHeaders("content-type", [""])[0].startswith("application/json"):
        return response.code, json.loads(body)
    return response.code, body.decode()


async def register_and_login(daemon, username, password="pw") -> dict:
    code, _ = await call(daemon, "/register", "POST", data={"username": username, "password": password})
    assert code == 200
    code, reply = await call(daemon, "/login", params={"username": username, "password": password})
    assert code == 200
    return reply


class Tokens:
    """What WebSessions needs of the service: the login tokens the store keeps."""

    def __init__(self):
        self.kept = {}

    def saved_tokens(self):
        return [(digest, *kept) for digest, kept in self.kept.items()]

    def save_token(self, digest, user, created_at, last_used):
        self.kept[digest] = (user, created_at, last_used)
        return defer.succeed(None)

    def drop_token(self, digest):
        self.kept.pop(digest, None)
        return defer.succeed(None)


def node_modules() -> str:
    """tests/js with its node_modules installed (``npm ci`` once); skip without node and npm."""
    if not shutil.which("node") or not shutil.which("npm"):
        pytest.skip("node and npm are needed to run the real socket.io-client")
    if not os.path.isdir(os.path.join(JS, "node_modules", "socket.io-client")):
        subprocess.run(["npm", "ci", "--prefix", JS, "--no-audit", "--no-fund"], check=True,
                       timeout=300, stdout=subprocess.DEVNULL)
    return JS


class NodeClient(protocol.ProcessProtocol):
    """tests/js/client.js as a child process: commands in on stdin, events out as JSON lines."""

    def __init__(self):
        self.events: list[dict] = []
        self._waiting: list[tuple] = []
        self._buffer = b""
        self.ended = defer.Deferred()
        self.stderr = b""

    def outReceived(self, data):
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            self.events.append(json.loads(line))
        self._match()

    def errReceived(self, data):
        self.stderr += data

    def processEnded(self, reason):
        self.ended.callback(reason.value.exitCode)
        for _, _, d in self._waiting:
            d.errback(AssertionError(f"node ended; events {self.events}; stderr {self.stderr!r}"))
        self._waiting = []

    def _match(self):
        for waiter in list(self._waiting):
            name, where, d = waiter
            for event in self.events:
                if event["event"] == name and where(event):
                    self.events.remove(event)
                    self._waiting.remove(waiter)
                    d.callback(event)
                    break

    def next(self, name, where=lambda event: True) -> defer.Deferred:
        """The first event of that name (and matching ``where``) seen, now or within TIMEOUT."""
        d = defer.Deferred()
        self._waiting.append((name, where, d))
        self._match()
        return d.addTimeout(TIMEOUT, reactor)

    def emit(self, name, data, ack=False):
        self.transport.write(json.dumps({"emit": name, "data": data, "ack": ack}).encode() + b"\n")

    async def close(self):
        self.transport.write(b'{"close": true}\n')
        self.transport.closeStdin()
        return await self.ended.addTimeout(TIMEOUT, reactor)


def socketio_client(daemon, session_id, transports="default") -> NodeClient:
    client = NodeClient()
    script = os.path.join(node_modules(), "client.js")
    reactor.spawnProcess(client, shutil.which("node"),
                         ["node", script, base_url(daemon), session_id, transports, str(TIMEOUT * 2)],
                         env={"PATH": os.environ.get("PATH", "")}, path=JS)
    return client
