"""The web port (seed 004): REST + Socket.IO over the shared service, as one twisted.web Site.

``WebSite`` is the PORTS factory. It owns the port's REST sessions, its Engine.IO sessions
and its counters; ``rest.WebAPI`` routes requests to them.
"""

from __future__ import annotations

import collections
import io
from typing import ClassVar

import attrs
from twisted.internet import protocol
from twisted.web import http, server

from chatserv.limits import Limits
from chatserv.options import from_options, option
from chatserv.service import ChatService
from chatserv.web import rest
from chatserv.web.engineio import EngineServer
from chatserv.web.metrics import WebMetrics
from chatserv.web.proxy import TrustedProxies, trusted_proxies
from chatserv.web.sessions import WebSessions
from chatserv.web.socketio import SocketIOConnection
from chatserv.wire import ConnectionTracker

TOO_LARGE = b'{"error":"request body too large"}'
LINGER = 5.0  # seconds a refused upload may go on being sent (and dropped) before we cut it


class BoundedRequest(server.Request):
    """A request whose body may not exceed the site's ``max_body``: 413 and close, unread."""

    _refused = False
    _received = 0

    def gotLength(self, length):
        if length is not None and length > self.channel.site.max_body:
            # Sent before the body: no "100 Continue" may follow it.
            self.requestHeaders.removeHeader(b"expect")
            self._refuse()
        else:
            super().gotLength(length)

    def handleContentChunk(self, data):
        if self._refused:
            return
        self._received += len(data)
        if self._received > self.channel.site.max_body:
            self._refuse()
        else:
            super().handleContentChunk(data)

    def _refuse(self):
        """Answer 413 and stop writing, but keep reading (and dropping) the rest for a while:
        closing with unread input would reset the connection and lose the answer."""
        self._refused = True
        self.content = io.BytesIO()
        site, transport = self.channel.site, self.channel.transport
        site.counters["errors"] += 1
        transport.write(
            b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(TOO_LARGE), TOO_LARGE))
        transport.loseWriteConnection()
        linger = site.clock.callLater(LINGER, transport.abortConnection)
        self.notifyFinish().addBoth(lambda _: linger.cancel() if linger.active() else None)

    def requestReceived(self, command, path, version):
        if not self._refused:
            super().requestReceived(command, path, version)


class TrackedChannel(http.HTTPChannel):
    """An HTTP connection, counted with every other connection: the total and per-address
    limits apply to it, and a stopping daemon closes it instead of serving on.

    A request's headers must have arrived within the site's ``header_timeout`` of its first
    byte (of the connection's opening, for the first request), and all of it within
    ``request_timeout``; bytes arriving do not extend either, so a client trickling a request
    (slowloris) is cut off. Once a request is in, nothing times it: a long poll or a WebSocket
    takes as long as it needs.
    """

    protocol_name = "http"
    _transport = None
    _receiving = False
    _header_deadline = _request_deadline = _linger = None

    @property
    def transport(self):
        return self._transport

    @transport.setter
    def transport(self, value):
        # A WebSocket upgrade (autobahn) takes the connection over by setting this to None:
        # from then on the tracker counts the WebSocket session, not this channel.
        if value is None and self._transport is not None:
            self.site.tracker.discard(self)
        self._transport = value

    def connectionMade(self):
        self.callLater = self.site.clock.callLater  # the idle timeout too runs on the site's clock
        super().connectionMade()
        self.peer_host = getattr(self.transport.getPeer(), "host", "")
        self.site.tracker.add(self)
        self._request_begins()

    def connectionLost(self, reason):
        self._stop_deadlines()
        self._cancel(self._linger)
        self.site.tracker.discard(self)
        super().connectionLost(reason)

    def dataReceived(self, data):
        if data and not self._receiving and not self._handlingRequest:
            self._request_begins()  # the first byte of the next request on a kept-alive connection
        super().dataReceived(data)

    def allHeadersReceived(self):
        self._cancel(self._header_deadline)
        super().allHeadersReceived()

    def allContentReceived(self):
        self._stop_deadlines()
        super().allContentReceived()

    def _request_begins(self):
        self._receiving = True
        clock, site = self.site.clock, self.site
        self._header_deadline = clock.callLater(site.header_timeout, self._too_slow)
        self._request_deadline = clock.callLater(site.request_timeout, self._too_slow)

    def _stop_deadlines(self):
        self._receiving = False
        self._cancel(self._header_deadline)
        self._cancel(self._request_deadline)

    @staticmethod
    def _cancel(call):
        if call is not None and call.active():
            call.cancel()

    def _too_slow(self):
        """A request did not arrive in time: close without an answer (abort if the close hangs)."""
        self._stop_deadlines()
        self.site.counters["slow_requests"] += 1
        transport = self.transport
        transport.loseConnection()
        self._linger = self.site.clock.callLater(LINGER, transport.abortConnection)

    def deliver(self, event):
        """At shutdown an idle keep-alive connection closes now, a busy one after its answer."""
        if event.ends_session:
            self.persistent = False
            if not self.requests:
                self.transport.loseConnection()


@attrs.frozen
class WebConfig:
    """Seed 004's options (``--web-*``): see ``chatserv.options``."""

    option_prefix: ClassVar[str] = "web-"

    session_ttl: float = option(3600.0, "seed 004: seconds a REST session ID lives unused")
    max_body: int = option(65536, "seed 004: bytes in one HTTP body or WebSocket message")
    header_timeout: float = option(10.0, "seed 004: seconds for a request's headers to arrive, however "
                                         "slowly they trickle")
    request_timeout: float = option(30.0, "seed 004: seconds for a whole request (body too) to arrive")
    ping_interval: float = option(25.0, "seed 004: seconds between Engine.IO pings")
    ping_timeout: float = option(20.0, "seed 004: seconds a client has to answer a ping")
    sessions_per_user: int = option(10, "seed 004: session IDs one user may hold; a login beyond ends the "
                                        "oldest (0: no cap)")
    trusted_proxies: TrustedProxies = option(
        TrustedProxies(), "seed 004: reverse proxies (addresses or networks, comma-separated) whose "
        "X-Forwarded-For names the client", coerce=trusted_proxies)


class WebSite(server.Site):
    requestFactory = BoundedRequest
    protocol = TrackedChannel
    config_class = WebConfig

    def __init__(self, service: ChatService, tracker: ConnectionTracker, limits: Limits, clock, options):
        self.service = service
        self.tracker = tracker
        self.limits = limits
        self.clock = clock
        self.config = config = from_options(WebConfig, options)
        self.max_body = config.max_body
        self.header_timeout = config.header_timeout
        self.request_timeout = config.request_timeout
        self.counters = collections.Counter()
        self.proxies = config.trusted_proxies
        self.web_sessions = WebSessions(service, clock, config.session_ttl, limits, config.sessions_per_user)
        self.engine = EngineServer(
            clock, self._socket_opened, ping_interval=config.ping_interval,
            ping_timeout=config.ping_timeout, max_payload=self.max_body,
            send_queue=limits.send_queue, admits=lambda address: tracker.admits(address, limits),
            client_address=self.proxies.client, channels=tracker)
        self.metrics = WebMetrics(self)
        super().__init__(rest.Root(rest.WebAPI(self).app.resource()), timeout=limits.prelogin_timeout)
        self.displayTracebacks = False

    def buildProtocol(self, addr):
        host = getattr(addr, "host", "")
        limits = self.limits
        if self.proxies.trusts(host):
            # A trusted proxy brings many clients over its connections: the per-address limit
            # applies to each client's address (X-Forwarded-For) once its request is read.
            limits = attrs.evolve(limits, connections_per_ip=0)
        elif limits.connections_per_ip and self.engine.follow_ups(host):
            # This may be a connection of one of the address's sessions: room for those.
            limits = attrs.evolve(limits, connections_per_ip=limits.connections_per_ip
                                  + self.engine.follow_ups(host))
        if not self.tracker.admits(host, limits):
            return Refused(self.clock)
        return super().buildProtocol(addr)

    def client_address(self, request) -> str:
        """The address a request comes from: its TCP peer, or behind a trusted proxy the
        client's (X-Forwarded-For)."""
        peer = getattr(request.getClientAddress(), "host", "")
        return self.proxies.client(peer, request.requestHeaders.getRawHeaders(b"x-forwarded-for"))

    def startFactory(self):
        super().startFactory()
        self.web_sessions.load()

    def _socket_opened(self, engine_socket, query, address):
        return SocketIOConnection(engine_socket, query, address, self)

    def log(self, request):
        """No access log: query strings carry session IDs."""

    def stopFactory(self):
        self.web_sessions.close()
        super().stopFactory()


REFUSED = b'{"error":"too many connections: try again later"}'


class Refused(protocol.Protocol):
    """A connection over --max-connections or --connections-per-ip: HTTP 503 at once, then
    its request is read and dropped (closing with it unread would reset the connection and
    lose the answer) until the client closes, or LINGER seconds have passed."""

    def __init__(self, clock):
        self.clock = clock

    def connectionMade(self):
        self.transport.write(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 10\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(REFUSED), REFUSED))
        self.transport.loseWriteConnection()
        self._linger = self.clock.callLater(LINGER, self.transport.abortConnection)

    def connectionLost(self, reason):
        if self._linger.active():
            self._linger.cancel()
