"""The web port against slowloris (issue 13, item 6): a request's headers have a deadline that
arriving bytes do not extend, and so has the whole request; a request that is in may take as
long as it needs (long polls), on a clock the test moves."""

from __future__ import annotations

import re

import pytest
from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from chatserv.limits import Limits
from chatserv.service import ChatService
from chatserv.store.memory import MemoryStore
from chatserv.web import WebSite
from chatserv.wire import ConnectionTracker
from tests.support import InstantHasher

OPTIONS = {"web-max-body": 65536, "web-session-ttl": 3600.0, "web-ping-interval": 40.0,
           "web-ping-timeout": 20.0, "web-header-timeout": 10.0, "web-request-timeout": 30.0}


@pytest.fixture
def site():
    clock = task.Clock()
    chat = ChatService(MemoryStore(), InstantHasher(), clock)
    chat.startService()
    return WebSite(chat, ConnectionTracker(clock), Limits(), clock, OPTIONS)


def connected(site) -> tuple:
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    channel.makeConnection(transport)
    return channel, transport


def trickle(site, channel, transport, data: bytes, every: float) -> float:
    """Send ``data`` one byte every ``every`` seconds until the server closes; when it did."""
    for byte in data:
        site.clock.advance(every)
        if transport.disconnecting:
            break
        channel.dataReceived(bytes([byte]))
    return site.clock.seconds()


REQUEST = b"GET /healthz HTTP/1.1\r\nHost: chat.example\r\nUser-Agent: slow\r\n\r\n"


def test_headers_trickled_a_byte_every_three_seconds_are_cut_off_at_the_header_deadline(site):
    channel, transport = connected(site)
    assert trickle(site, channel, transport, REQUEST, every=3) == 12  # the first look after 10 s
    assert transport.value() == b""  # no answer: only a close
    assert transport.disconnecting
    channel.connectionLost(None)
    assert not site.tracker.connections


def test_a_body_trickled_in_is_cut_off_at_the_request_deadline(site):
    channel, transport = connected(site)
    channel.dataReceived(b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 40\r\n\r\n")
    assert trickle(site, channel, transport, b'{"username": "alice", "password": "pw!"}', every=3) == 30
    assert transport.value() == b""


def test_a_connection_that_says_nothing_is_closed_at_the_header_deadline(site):
    channel, transport = connected(site)
    site.clock.advance(9.9)
    assert not transport.disconnecting
    site.clock.advance(0.1)
    assert transport.disconnecting


def test_each_request_on_a_kept_alive_connection_gets_its_own_deadline_from_its_first_byte(site):
    channel, transport = connected(site)
    channel.dataReceived(REQUEST)
    assert transport.value().startswith(b"HTTP/1.1 200 ")
    transport.clear()
    site.clock.advance(50)  # idle between requests: the keep-alive idle timeout's business
    assert not transport.disconnecting
    channel.dataReceived(REQUEST[:5])
    site.clock.advance(9)
    channel.dataReceived(REQUEST[5:])
    assert transport.value().startswith(b"HTTP/1.1 200 ")
    transport.clear()
    channel.dataReceived(REQUEST[:5])
    site.clock.advance(10)
    assert transport.disconnecting and transport.value() == b""


def test_a_long_poll_waits_past_both_deadlines(site):
    channel, transport = connected(site)
    channel.dataReceived(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n\r\n")
    sid = re.search(rb'"sid":\s*"([^"]+)"', transport.value()).group(1)
    transport.clear()
    channel.dataReceived(b"GET /socket.io/?EIO=4&transport=polling&sid=%s HTTP/1.1\r\nHost: x\r\n\r\n"
                         % sid)
    site.clock.advance(39)  # past the header and request deadlines: the poll is in, it waits
    assert transport.value() == b"" and not transport.disconnecting
    site.clock.advance(1)  # the Engine.IO ping is what answers it
    answer = transport.value()
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"\r\n\r\n1\r\n2\r\n0\r\n\r\n")  # a ping
    assert not transport.disconnecting
