"""Seed 000 over real loopback sockets: every command and reply code, both framings, both stores."""

import pytest
import pytest_twisted
from twisted.internet import endpoints, reactor

from chatserv.protocols.framing import LengthPrefixFramer, LineFramer
from tests.support import Daemon, FrameClient, connect
from tests.test_irc import raw as irc_client


@pytest.fixture(params=["line", "framed"])
def framing(request):
    return request.param


async def client_for(daemon, framing):
    """A connected client; on the framed port the server's greeting is read first."""
    if framing == "line":
        return await connect(daemon.port("skype"))
    client = await connect(daemon.port("skype-framed"), LengthPrefixFramer(1 << 20))
    assert await client.receive() == b"200 OK"
    return client


async def logged_in(daemon, framing, name):
    client = await client_for(daemon, framing)
    assert await client.request(b"CREATE %s %s-pw" % (name.encode(), name.encode())) == b"200 OK"
    return client


@pytest_twisted.ensureDeferred
async def test_the_readme_session(daemon):
    client = await connect(daemon.port("skype"))
    client.send(b"CREATE alice pw", b"LOGIN alice pw", b"SEARCH alice", b"EXIT")
    assert [await client.receive() for _ in range(3)] == [
        b"200 OK", b"200 OK", b"201 id:1,username:alice,password:,online:true,address:127.0.0.1"]
    assert await client.receive() == b"201 Goodbye"
    await client.wait_closed()


@pytest_twisted.ensureDeferred
async def test_every_command(daemon, framing):
    alice = await logged_in(daemon, framing, "alice")
    bob = await logged_in(daemon, framing, "bob")
    assert await alice.request(b"CREATE bob again") == b"300 Not OK"
    assert await alice.request(b"PING") == b"200 OK"
    assert await alice.request(b"LIST") == b"301 Not found"
    assert await alice.request(b"ADD bob") == b"200 OK"
    assert await alice.request(b"ADD nobody") == b"301 Not found"
    assert await alice.request(b"ADD alice") == b"300 Not OK"
    assert await alice.request(b"LIST") == (
        b"201 id:2,username:bob,password:,online:true,address:127.0.0.1")
    assert await alice.request(b"AVAILABLE bob") == (
        b"201 id:2,username:bob,password:,online:true,address:127.0.0.1")
    assert await alice.request(b"AVAILABLE nobody") == b"301 Not found"
    assert await alice.request(b"SEARCH nobody") == b"301 Not found"

    assert await bob.request(b"EXIT") == b"201 Goodbye"
    await bob.wait_closed()
    assert await alice.request(b"AVAILABLE bob") == b"300 Not OK"
    assert await alice.request(b"SEARCH bob") == (
        b"201 id:2,username:bob,password:,online:false,address:")
    assert await alice.request(b"REMOVE bob") == b"200 OK"
    assert await alice.request(b"REMOVE bob") == b"301 Not found"
    assert await alice.request(b"LIST") == b"301 Not found"


@pytest_twisted.ensureDeferred
async def test_list_joins_records_with_spaces(daemon, framing):
    alice = await logged_in(daemon, framing, "alice")
    for name in ["bob", "carol"]:
        other = await logged_in(daemon, framing, name)
        assert await alice.request(b"ADD " + name.encode()) == b"200 OK"
        assert await other.request(b"EXIT") == b"201 Goodbye"
    listing = await alice.request(b"LIST")
    assert listing == (b"201 id:2,username:bob,password:,online:false,address: "
                       b"id:3,username:carol,password:,online:false,address:")


@pytest_twisted.ensureDeferred
async def test_login_rules(daemon, framing):
    client = await client_for(daemon, framing)
    for command in [b"SEARCH alice", b"ADD alice", b"REMOVE alice", b"AVAILABLE alice", b"LIST"]:
        assert await client.request(command) == b"202 Please login"
    assert await client.request(b"LOGIN alice pw") == b"300 Not OK"
    assert await client.request(b"CREATE alice pass word") == b"200 OK"
    assert await client.request(b"LOGIN alice pass") == b"300 Not OK"
    assert await client.request(b"LOGIN alice pass word") == b"200 OK"
    assert await client.request(b"CREATE 9lives pw") == b"300 Not OK"
    assert await client.request(b"login alice pass word") == b"200 OK"


@pytest_twisted.ensureDeferred
async def test_two_users_on_one_host_are_two_sessions(daemon):
    alice = await logged_in(daemon, "line", "alice")
    bob = await logged_in(daemon, "line", "bob")
    assert await alice.request(b"ADD bob") == b"200 OK"
    assert await bob.request(b"LIST") == b"301 Not found"


@pytest_twisted.ensureDeferred
async def test_a_user_of_one_framing_logs_in_on_the_other(daemon):
    line = await logged_in(daemon, "line", "alice")
    assert await line.request(b"EXIT") == b"201 Goodbye"
    framed = await client_for(daemon, "framed")
    assert await framed.request(b"LOGIN alice alice-pw") == b"200 OK"


@pytest_twisted.ensureDeferred
async def test_data_survives_a_restart(tmp_path):
    daemon = await Daemon(str(tmp_path / "chat.sqlite3")).start()
    try:
        alice = await logged_in(daemon, "line", "alice")
        await logged_in(daemon, "framed", "bob")
        assert await alice.request(b"ADD bob") == b"200 OK"
        await daemon.chat.send_direct(daemon.chat.user("bob"), "alice", "kept")
        await daemon.restart()
        alice = await client_for(daemon, "framed")
        assert await alice.request(b"LOGIN alice alice-pw") == b"200 OK"
        assert await alice.request(b"LIST") == b"201 id:2,username:bob,password:,online:false,address:"
        kept = await daemon.chat.inbox(daemon.chat.user("alice"))
        assert [m.body for m in kept] == ["kept"]
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_shutdown_says_goodbye_on_both_framings(daemon):
    line = await logged_in(daemon, "line", "alice")
    framed = await client_for(daemon, "framed")
    await daemon.stop()
    assert await line.receive() == b"201 Goodbye"
    assert await framed.receive() == b"201 Goodbye"
    await line.wait_closed()
    await framed.wait_closed()


@pytest_twisted.ensureDeferred
async def test_line_port_bad_input(daemon):
    client = await logged_in(daemon, "line", "alice")
    bystander = await logged_in(daemon, "line", "bob")
    client.send_raw(b"x" * 9000 + b"\n")
    assert await client.receive() == b"501 Invalid command"
    for bad in [b"", b"FOO", b"SEARCH", b"SEARCH two words", b"\xff\xfeSEARCH", b"CREATE onlyname",
                b"do_PING", b"PING\x00"]:
        assert await client.request(bad) == b"501 Invalid command", bad
    assert await client.request(b"PING") == b"200 OK"
    assert await bystander.request(b"SEARCH alice") == (
        b"201 id:1,username:alice,password:,online:true,address:127.0.0.1")


@pytest_twisted.ensureDeferred
async def test_framed_port_skips_an_overlong_frame_and_keeps_serving(daemon):
    """The C++ client's frame over --max-line (8192): its length header is valid, so the payload
    is skipped as it arrives, answered 501, and the session goes on."""
    client = await logged_in(daemon, "framed", "alice")
    payload = b"SEARCH " + b"x" * 9000
    client.send_raw(b"%010d" % len(payload) + payload[:4000])
    assert await client.receive() == b"501 Invalid command"
    client.send_raw(payload[4000:] + LengthPrefixFramer(64).encode(b"PING"))
    assert await client.receive() == b"200 OK"
    assert await client.request(b"SEARCH alice") == (
        b"201 id:1,username:alice,password:,online:true,address:127.0.0.1")


@pytest_twisted.ensureDeferred
async def test_framed_port_bad_headers_close_cleanly(daemon):
    for garbage in [b"00000000xxLOGIN", b"-000000001"]:
        client = await client_for(daemon, "framed")
        client.send_raw(garbage)
        assert await client.receive() == b"501 Invalid command"
        await client.wait_closed()
    client = await client_for(daemon, "framed")
    client.send(b"")
    assert await client.receive() == b"501 Invalid command"
    client.send_raw(b"0000000010PIN")  # a client that disconnects mid-frame
    client.transport.loseConnection()
    await client.wait_closed()
    survivor = await client_for(daemon, "framed")
    assert await survivor.request(b"PING") == b"200 OK"


@pytest_twisted.ensureDeferred
async def test_replies_keep_request_order_under_pipelining(daemon):
    client = await connect(daemon.port("skype"))
    client.send(b"CREATE alice pw", b"SEARCH alice", b"PING", b"LOGIN alice bad", b"LOGIN alice pw", b"LIST")
    replies = [await client.receive() for _ in range(6)]
    assert [r[:3] for r in replies] == [b"200", b"201", b"200", b"300", b"200", b"301"]


@pytest_twisted.ensureDeferred
async def test_an_address_is_shown_only_for_a_user_on_a_seed_000_port(daemon):
    """IRC masks its users' addresses, so seed 000 must not tell them either."""
    alice = await logged_in(daemon, "line", "alice")
    for name in ("bob", "carol"):
        await daemon.chat.register(name, "pw")
    await irc_client(daemon, "bob", before=[b"PASS pw"])  # on IRC only
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", daemon.port("skype"),
                                            bindAddress=("127.0.0.2", 0))
    carol = await endpoints.connectProtocol(endpoint, FrameClient(LineFramer(1 << 20)))
    assert await carol.request(b"LOGIN carol pw") == b"200 OK"
    await irc_client(daemon, "carol", before=[b"PASS pw"])  # and on IRC, later, from 127.0.0.1
    assert await alice.request(b"SEARCH bob") == b"201 id:2,username:bob,password:,online:true,address:"
    assert await alice.request(b"AVAILABLE bob") == b"201 id:2,username:bob,password:,online:true,address:"
    assert await alice.request(b"SEARCH carol") == (
        b"201 id:3,username:carol,password:,online:true,address:127.0.0.2")
    assert await carol.request(b"EXIT") == b"201 Goodbye"
    await carol.wait_closed()
    assert await alice.request(b"SEARCH carol") == b"201 id:3,username:carol,password:,online:true,address:"
