"""Several nodes: two real ``twistd`` processes sharing one PostgreSQL database (the test's own)
and one Redis (a channel of the test's own), behaving as one server."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from zope.interface.verify import verifyClass

from chatserv.bus import IBus
from chatserv.bus.local import LocalBus
from chatserv.bus.redis import RedisBus
from chatserv.nodes import nodes_check
from chatserv.tap import PORTS
from tests.support import FAST_HASH, GRACE, ROOT, TIMEOUT, Twistd, connect
from tests.test_chatroom import JsonClient
from tests.test_daemon import run_twistd
from tests.test_irc import raw, until
from tests.web_support import call, register_and_login, socketio_client

REDIS = ("127.0.0.1", 6379)


def _redis_up(host, port) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class Node:
    """One ``twistd chatserv`` of a cluster, with what the test clients ask of a daemon."""

    def __init__(self, tmp_path, name: str, db: str, bus: str, *extra):
        cwd = tmp_path / name
        cwd.mkdir()
        self.name = name
        self.twistd = Twistd(cwd, "--db", db, "--bus", bus, "--node-name", name, *extra)
        self.wait_for(f"redis bus: node {name} on")

    def port(self, option: str) -> int:
        return self.twistd.ports[option]

    def wait_for(self, text: str) -> str:
        while text not in self.twistd.log:
            self.twistd.readline()
        return self.twistd.log

    def stop(self) -> str:
        return self.twistd.stop()


@pytest.fixture
def bus_url():
    if not _redis_up(*REDIS):
        pytest.skip("Redis is not running on 127.0.0.1:6379 (.ci/run starts it)")
    return f"redis://{REDIS[0]}:{REDIS[1]}/0?channel=chatserv-test-{secrets.token_hex(6)}"


@pytest.fixture
def cluster(tmp_path, postgresql_url, bus_url):
    """Two nodes, ``a`` then ``b``, on the test's own database and channel."""
    nodes = []
    try:
        nodes.append(Node(tmp_path, "a", postgresql_url, bus_url, "--presence-ttl", "1.5"))
        nodes.append(Node(tmp_path, "b", postgresql_url, bus_url, "--presence-ttl", "1.5"))
        yield nodes
    finally:
        for node in nodes:
            log = node.stop() if node.twistd.process.poll() is None else node.twistd.log
            print(f"--- node {node.name}:\n{log}")  # shown when the test fails
            assert "Traceback" not in log, log


async def eventually(check, what: str):
    """Poll ``check()`` until it is true, up to TIMEOUT (a deadline, not a measurement)."""
    deadline = time.monotonic() + TIMEOUT
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {TIMEOUT}s: {what}")
        await task.deferLater(reactor, 0.05, lambda: None)


async def until_known(client, nick: bytes, channel: bytes):
    """Wait until ``client``'s node knows ``nick`` is in ``channel`` (the bus is asynchronous:
    a node learns of another's changes a moment later)."""
    async def known():
        client.send(b"WHOIS " + nick)
        return channel in b"".join(await until(client, b" 318 "))

    await eventually(known, f"{nick} in {channel} seen from the other node")


async def json_login(node, name, password="pw") -> JsonClient:
    client = JsonClient(await connect(node.port("chatroom")))
    assert await client.request(type="auth", username=name, password=password) == {"result": "ok"}
    return client


async def logs_in(node, name, password="pw") -> bool:
    """Whether ``name`` can log in on ``node`` now (the session ends at once)."""
    client = JsonClient(await connect(node.port("chatroom")))
    try:
        return await client.request(type="auth", username=name, password=password) == {"result": "ok"}
    finally:
        client.frames.transport.loseConnection()
        await client.frames.wait_closed()


async def register(node, name, password="pw"):
    """An account, created on ``node``'s Skype port (the other node learns of it by the bus)."""
    client = await connect(node.port("skype"))
    assert await client.request(f"CREATE {name} {password}".encode()) == b"200 OK"
    client.transport.loseConnection()  # CREATE logs in: the test logs in where it wants
    await client.wait_closed()


def test_both_buses_are_whole_ibus():
    """The Redis bus stands in for the local one wherever the domain asks a bus."""
    verifyClass(IBus, LocalBus)
    verifyClass(IBus, RedisBus)


def test_a_redis_bus_needs_a_shared_store_and_workers_need_both():
    with pytest.raises(ValueError, match="postgresql"):
        nodes_check("chatserv.sqlite3", "redis://127.0.0.1:6379/0", 1)
    with pytest.raises(ValueError, match="postgresql"):
        nodes_check("memory", "redis://127.0.0.1:6379/0", 1)
    with pytest.raises(ValueError, match="--workers"):
        nodes_check("chatserv.sqlite3", "local", 2)
    with pytest.raises(ValueError, match="--workers"):
        nodes_check("postgresql://u@h/db", "local", 2)
    nodes_check("postgresql://u@h/db", "redis://127.0.0.1:6379/0", 2)
    nodes_check("chatserv.sqlite3", "local", 1)


async def alice_on_a_and_bob_on_b_in_one_room(cluster):
    """alice makes #room on node a; bob, on node b, joins it once b knows of it. Returns both
    clients and the lines bob got up to his NAMES end (366)."""
    a, b = cluster
    alice = await raw(a, "alice")
    bob = await raw(b, "bob")
    alice.send(b"JOIN #room")
    await until(alice, b" 366 ")
    await until_known(bob, b"alice", b"#room")
    bob.send(b"JOIN #room")  # created on a, joinable on b
    return alice, bob, await until(bob, b" 366 ")


@pytest_twisted.ensureDeferred
async def test_irc_across_nodes_one_server(cluster):
    _, b = cluster
    alice, bob, joined = await alice_on_a_and_bob_on_b_in_one_room(cluster)
    names = b"".join(joined)
    assert b"alice" in names and b"bob" in names  # NAMES sees both nodes
    await until(alice, b"JOIN")
    bob.send(b"PRIVMSG #room :hello from b")
    assert (await until(alice, b"PRIVMSG"))[-1].endswith(b"PRIVMSG #room :hello from b")
    alice.send(b"PRIVMSG bob :direct from a")
    assert (await until(bob, b"PRIVMSG"))[-1].endswith(b"PRIVMSG bob :direct from a")
    bob.send(b"WHOIS alice")
    assert b"connected with irc" in b"".join(await until(bob, b" 318 "))

    taken = await connect(b.port("irc"))  # a nick in use on a is in use on b
    taken.send(b"NICK alice", b"USER u 0 * :U")
    assert b" 433 " in await taken.receive()

    alice.send(b"QUIT :bye")
    assert b"QUIT :" in (await until(bob, b"QUIT"))[-1]


@pytest_twisted.ensureDeferred
async def test_chatroom_accounts_and_direct_messages_across_nodes(cluster):
    a, b = cluster
    await register(a, "alice")
    await register(a, "bob")

    await eventually(lambda: logs_in(b, "bob"), "an account made on a logs in on b")
    alice = await json_login(a, "alice")
    bob = await json_login(b, "bob")

    async def bob_online_on_a():  # online on b is online everywhere (a moment later)
        return await alice.request(type="online") == {"alice": "alice", "bob": "bob"}

    await eventually(bob_online_on_a, "a sees bob come online on b")
    assert await alice.request(type="message", **{"from": "alice"}, to="bob", msg="hi") == {"result": "ok"}
    assert await bob.receive() == {"type": "message", "from": "alice", "msg": "hi"}
    assert await bob.request(type="broadcast", **{"from": "bob"}, msg="all") == {"result": "ok"}
    assert await alice.receive() == {"type": "message", "from": "bob", "msg": "all", "to": "alice"}
    assert await bob.request(type="logout", **{"from": "bob"}) == {"result": "ok"}

    async def bob_offline_on_a():
        return await alice.request(type="online") == {"alice": "alice"}

    await eventually(bob_offline_on_a, "a sees bob go offline on b")


@pytest_twisted.ensureDeferred
async def test_a_direct_message_shown_on_one_node_does_not_wait_on_the_other(cluster):
    """The node whose session showed a message live marks it delivered in the store: the
    recipient's next login, on the other node, does not hand it over again."""
    a, b = cluster
    await register(a, "alice")
    await register(a, "bob")
    await eventually(lambda: logs_in(b, "bob"), "an account made on a logs in on b")
    alice, bob = await json_login(a, "alice"), await json_login(b, "bob")

    async def bob_online_on_a():
        return await alice.request(type="online") == {"alice": "alice", "bob": "bob"}

    await eventually(bob_online_on_a, "a sees bob come online on b")
    for body in ["shown on b", "next on b"]:  # the second comes next: the first was shown once
        answer = await alice.request(type="message", **{"from": "alice"}, to="bob", msg=body)
        assert answer == {"result": "ok"}
        assert await bob.receive() == {"type": "message", "from": "alice", "msg": body}
    assert await bob.request(type="logout", **{"from": "bob"}) == {"result": "ok"}
    bob = await json_login(a, "bob")
    assert await alice.request(type="message", **{"from": "alice"}, to="bob", msg="on a") == {"result": "ok"}
    assert await bob.receive() == {"type": "message", "from": "alice", "msg": "on a"}


@pytest_twisted.ensureDeferred
async def test_a_killed_node_takes_its_users_offline_everywhere(cluster):
    a, _ = cluster
    alice, bob, _ = await alice_on_a_and_bob_on_b_in_one_room(cluster)
    a.twistd.kill()
    # within the presence TTL (1.5 s here), b's users see alice quit
    quit_line = (await until(bob, b"QUIT"))[-1]
    assert quit_line.startswith(b":alice!") and b"Node lost" in quit_line
    bob.send(b"NAMES #room")
    assert b"alice" not in b"".join(await until(bob, b" 366 "))


async def nick_answer(client) -> bool:
    """Whether the client's NICK was taken (its own NICK line) rather than refused (433)."""
    line = await client.receive()
    assert b" NICK " in line or b" 433 " in line, line
    return b" NICK " in line


async def takes_nick(client, nick: bytes) -> bool:
    client.send(b"NICK " + nick)
    return await nick_answer(client)


@pytest_twisted.ensureDeferred
async def test_one_nick_one_holder_when_two_nodes_race_for_it(cluster):
    a, b = cluster
    on_a, on_b = await raw(a, "ann"), await raw(b, "ben")
    for round_ in range(20):  # a registered client on each node asks the same nick at once
        nick = b"race%d" % round_
        on_a.send(b"NICK " + nick)
        on_b.send(b"NICK " + nick)
        assert [await nick_answer(on_a), await nick_answer(on_b)].count(True) == 1, nick
    for round_ in range(10):  # two guests register with the same nick at once
        nick = b"guest%d" % round_
        clients = [await connect(node.port("irc")) for node in (a, b)]
        for client in clients:
            client.send(b"NICK " + nick, b"USER u 0 * :U")
        welcomed = [b" 001 " in await client.receive() for client in clients]
        assert welcomed.count(True) == 1, nick
        for client in clients:
            client.transport.loseConnection()

    assert await takes_nick(on_b, b"kept")
    assert not await takes_nick(on_a, b"kept")
    on_b.send(b"QUIT :bye")  # a claim is given back when its holder leaves
    await eventually(lambda: takes_nick(on_a, b"kept"), "the nick of a client that quit is free")

    survivor = await raw(b, "sam")
    assert await takes_nick(on_a, b"held")
    assert not await takes_nick(survivor, b"held")
    a.twistd.kill()  # a dead node's claims end with its presence (--presence-ttl 1.5 here)
    await eventually(lambda: takes_nick(survivor, b"held"), "the nick held on a killed node is free")


@pytest_twisted.ensureDeferred
async def test_two_nodes_creating_one_guest_room_at_once_make_one(cluster):
    a, b = cluster
    on_a, on_b = await raw(a, "ann"), await raw(b, "ben")
    for round_ in range(10):  # a guest on each node joins a new room at once: one room, both in it
        room = b"#new%d" % round_
        on_a.send(b"JOIN " + room)
        on_b.send(b"JOIN " + room)
        await until(on_a, b" 366 ")
        await until(on_b, b" 366 ")
        await until_known(on_a, b"ben", room)
        on_a.send(b"PRIVMSG %s :one room %d" % (room, round_))
        assert (await until(on_b, b"PRIVMSG"))[-1].endswith(b"PRIVMSG %s :one room %d" % (room, round_))


@pytest.fixture
def private_redis(tmp_path):
    """A redis-server of this test's own on a free port, which the test may restart."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    class Server:
        process = None

        def start(self):
            self.process = subprocess.Popen(
                [server, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
                cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + TIMEOUT
            while not _redis_up("127.0.0.1", port):
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.02)

        def stop(self):
            self.process.terminate()
            self.process.wait(timeout=TIMEOUT)

    redis = Server()
    redis.start()
    redis.url = f"redis://127.0.0.1:{port}/0"
    yield redis
    redis.stop()


@pytest_twisted.ensureDeferred
async def test_a_redis_restart_loses_and_duplicates_nothing(tmp_path, postgresql_url, private_redis):
    unlimited = ("--messages-per-second", "0")
    a = Node(tmp_path, "a", postgresql_url, private_redis.url, *unlimited)
    b = Node(tmp_path, "b", postgresql_url, private_redis.url, *unlimited)
    try:
        await register(a, "alice")
        await register(a, "bob")

        await eventually(lambda: logs_in(b, "bob"), "bob's account reaches b")
        alice = await json_login(a, "alice")
        bob = await json_login(b, "bob")
        acknowledged = []
        for n in range(60):
            if n == 20:
                private_redis.stop()
                await register(a, "carol")  # b cannot hear of it now
            if n == 40:
                private_redis.start()
            body = f"m{n}"
            reply = await alice.request(type="message", **{"from": "alice"}, to="bob", msg=body)
            if reply == {"result": "ok"}:
                acknowledged.append(body)
        received = []
        while len(received) < len(acknowledged):
            message = await bob.receive()
            received.append(message["msg"])
        assert sorted(received, key=lambda m: int(m[1:])) == acknowledged
        assert len(acknowledged) == 60  # a node keeps storing while Redis is away
        # b read again what it caches, the account made meanwhile included, then caught up: what
        # alice sends now is the next thing bob gets (a message twice would come before it)
        await eventually(lambda: logs_in(b, "carol"), "an account made during the outage reaches b")
        assert await alice.request(type="message", **{"from": "alice"}, to="bob", msg="end") == {
            "result": "ok"}
        assert (await bob.receive())["msg"] == "end"
    finally:
        for node in (a, b):
            node.stop()


@pytest_twisted.ensureDeferred
async def test_web_clients_on_either_node_and_a_session_id_that_works_on_both(cluster):
    a, b = cluster
    alice = await register_and_login(a, "alice")  # both logged in on a
    bob = await register_and_login(a, "bob")
    for me, other in ((alice, "bob"), (bob, "alice")):
        await call(a, "/addContact", "POST", data={"sessionID": me["sessionID"], "contact": other})

    async def session_works_on_b():  # a session ID made on a works on b
        code, _ = await call(b, "/getContacts", params={"sessionID": bob["sessionID"]})
        return code == 200

    await eventually(session_works_on_b, "a's session ID accepted by b")
    # bob polls on b (long-polling stays on its node); alice is WebSocket-only, on a
    bob_client = socketio_client(b, bob["sessionID"], "polling")
    assert (await bob_client.next("open"))["transport"] == "polling"
    await bob_client.next("connect")
    alice_client = socketio_client(a, alice["sessionID"], "websocket")
    await alice_client.next("connect")
    assert (await bob_client.next("user_status"))["data"]["status"] == "online"

    alice_client.emit("send_message", {"sessionID": alice["sessionID"], "recipient_id": bob["user_id"],
                                       "content": "from a", "is_group": False, "type": "text"})
    assert (await bob_client.next("new_message"))["data"]["content"] == "from a"
    bob_client.emit("send_message", {"recipient_id": str(alice["user_id"]), "content": "from b"}, ack=True)
    assert (await alice_client.next("new_message", lambda e: e["data"]["sender_username"] == "bob"))[
        "data"]["content"] == "from b"

    assert await alice_client.close() == 0
    assert (await bob_client.next("user_status"))["data"]["status"] == "offline"
    assert await bob_client.close() == 0
    assert await call(b, "/logout", "POST", data={"sessionID": bob["sessionID"]}) == (
        200, {"message": "Logged out"})

    async def session_ended_on_a():
        code, _ = await call(a, "/getContacts", params={"sessionID": bob["sessionID"]})
        return code != 200

    await eventually(session_ended_on_a, "a logout on b ends the session ID on a")


@pytest_twisted.ensureDeferred
async def test_the_login_throttle_counts_failures_made_on_every_node(cluster):
    a, b = cluster
    await register(a, "alice")
    await eventually(lambda: logs_in(b, "alice"), "alice's account reaches b")
    for _ in range(5):  # --login-attempts (5) failures on a lock the name out (for 1 s) ...
        client = JsonClient(await connect(a.port("chatroom")))
        assert (await client.request(type="auth", username="alice", password="wrong"))["result"] != "ok"
        client.frames.transport.loseConnection()
    # ... on b too: once b heard of an account made after them (one channel, in order), the
    # right password is refused there, from the same address
    await register(a, "marker")
    await eventually(lambda: logs_in(b, "marker"), "the account made after the failures reaches b")
    client = JsonClient(await connect(b.port("chatroom")))
    reply = await client.request(type="auth", username="alice", password="pw")
    assert "too many failed logins" in reply["result"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest_twisted.ensureDeferred
async def test_workers_share_the_listening_ports(tmp_path, postgresql_url, bus_url):
    chatroom, web = _free_port(), _free_port()
    ports = [f"--{p.option}=none" for p in PORTS if p.option not in ("chatroom", "web")]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
         "chatserv", *FAST_HASH, *GRACE, *ports, "--db", postgresql_url, "--bus", bus_url,
         "--node-name", "w", "--workers", "2", f"--chatroom=tcp:{chatroom}:interface=127.0.0.1",
         f"--web=tcp:{web}:interface=127.0.0.1"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        class Ports:
            def port(self, option):
                return {"chatroom": chatroom, "web": web}[option]

        seen = set()

        async def both_workers_answer():  # new connections reach either worker
            try:
                code, text = await call(Ports(), "/metrics", headers={"Connection": ["close"]})
            except Exception:
                return False  # not listening yet
            seen.update(re.findall(r'chatserv_node_info\{node="(w-\d)"\}', text))
            return seen == {"w-0", "w-1"}

        await eventually(both_workers_answer, "both workers serve the web port")
        await register_and_login(Ports(), "alice")
        await register_and_login(Ports(), "bob")
        for name in ("alice", "bob"):  # made on one worker, known to the other a moment later
            for _ in range(4):
                await eventually(lambda name=name: logs_in(Ports(), name), f"{name} logs in on any worker")
        alice = await json_login(Ports(), "alice")
        bob = await json_login(Ports(), "bob")
        sent = await alice.request(type="message", **{"from": "alice"}, to="bob", msg="hi")
        assert sent == {"result": "ok"}
        assert await bob.receive() == {"type": "message", "from": "alice", "msg": "hi"}
    finally:
        process.send_signal(signal.SIGTERM)
        log, _ = process.communicate(timeout=TIMEOUT)
    assert process.returncode in (0, -signal.SIGTERM), log.decode()
    assert b"Traceback" not in log and log.count(b"Server Shut Down") == 2, log.decode()


def test_workers_refuse_a_port_they_cannot_share(tmp_path):
    done = run_twistd(tmp_path, "--db", "postgresql://u@127.0.0.1/db", "--bus", "redis://127.0.0.1:6379/0",
                      "--workers", "2", "--chatroom=tcp:0")
    assert done.returncode != 0 and "--chatroom tcp:0" in done.stdout + done.stderr


@pytest.mark.parametrize(("args", "said"), [
    (["--bus", "redis://127.0.0.1:6379/0"], "needs a store every node shares"),
    (["--db", "memory", "--bus", "redis://127.0.0.1:6379/0"], "needs a store every node shares"),
    (["--workers", "2"], "--workers needs a shared store and bus"),
    (["--bus", "redis://127.0.0.1:port/0"], "the port and database must be numbers"),
])
def test_twistd_refuses_options_that_cannot_work_together(tmp_path, args, said):
    done = run_twistd(tmp_path, *args)
    assert done.returncode != 0 and said in done.stdout + done.stderr
