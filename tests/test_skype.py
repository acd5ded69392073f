"""Seed 000 over real loopback sockets, both framings, both stores."""

import pytest_twisted

from chatserv.protocols.framing import LengthPrefixFramer
from tests.support import connect


@pytest_twisted.ensureDeferred
async def test_the_readme_session(daemon):
    client = await connect(daemon.port("skype"))
    assert await client.request(b"CREATE alice pw") == b"200 OK"
    assert await client.request(b"LOGIN alice pw") == b"200 OK"
    found = await client.request(b"SEARCH alice")
    assert found.startswith(b"201 id:1,username:alice,password:,online:true,address:127.0.0.1")
    assert await client.request(b"EXIT") == b"201 Goodbye"
    await client.wait_closed()
