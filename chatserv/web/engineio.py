"""Engine.IO v4 over HTTP long-polling and WebSocket: the Twisted transport glue.

The packet codec is python-engineio's; this module only moves packets. A session starts
with a polling handshake (``GET /socket.io/?EIO=4&transport=polling``) or directly on a
WebSocket, may upgrade from polling to WebSocket (probe ping/pong, a NOOP to release the
pending poll, then UPGRADE), and is kept alive by server pings the client must answer
within ``ping_timeout``. What rides on it (Socket.IO) is the handler's business: the
handler gets ``message(text)`` and ``lost(reason)`` calls and sends with ``send``.
"""

from __future__ import annotations

import binascii
import collections
import json
import secrets
from collections.abc import Callable

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from engineio import packet as eio
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.web import resource, server
from zope.interface import implementer

from chatserv.wire import Deadline, SendQueue

log = Logger()

SEPARATOR = "\x1e"  # between packets of one polling payload
POLLING_CHANNELS = 2  # HTTP connections of one polling session counted as that session: a GET and a POST
# Connections a live session may still open beyond the per-address limit: its polling GET and
# POST, and the WebSocket it upgrades to. Without them, sessions that filled an address's
# quota could not finish connecting (200 clients behind one address: 12 of them got in).
FOLLOW_UP_CONNECTIONS = POLLING_CHANNELS + 1
CLOSE_PACKET = eio.Packet(eio.CLOSE).encode()
NOOP_PACKET = eio.Packet(eio.NOOP).encode()
PING_PACKET = eio.Packet(eio.PING).encode()

# Engine.IO's own HTTP error codes (the body is {"code": n, "message": "..."}).
UNKNOWN_TRANSPORT = (0, "Transport unknown")
UNKNOWN_SID = (1, "Session ID unknown")
BAD_METHOD = (2, "Bad handshake method")
BAD_REQUEST = (3, "Bad request")
FORBIDDEN = (4, "Forbidden")
BAD_VERSION = (5, "Unsupported protocol version")


class BrokenPacket(Exception):
    """A packet that does not decode: the session it came on is closed."""


def decode_packet(text: str) -> eio.Packet:
    """One Engine.IO packet from text, or BrokenPacket (binary payloads are not served)."""
    try:
        packet = eio.Packet(encoded_packet=text)
    except (ValueError, IndexError, TypeError, binascii.Error, RecursionError) as e:
        raise BrokenPacket(str(e)) from None
    if packet.binary or packet.packet_type not in (eio.CLOSE, eio.PING, eio.PONG, eio.MESSAGE,
                                                   eio.UPGRADE, eio.NOOP):
        raise BrokenPacket("unexpected packet")
    return packet


class EngineSocket:
    """One Engine.IO session, on whichever transport it currently uses."""

    def __init__(self, engine: EngineServer, sid: str):
        self.server = engine
        self.sid = sid
        self.handler = None
        self.websocket: EngineWebSocket | None = None  # set once on WebSocket
        self.probe: EngineWebSocket | None = None  # a WebSocket asking to take over
        self.closed = False
        self._outbox = SendQueue(engine.send_queue)  # packets waiting for the next poll
        self.channels: set = set()  # HTTP connections counted as part of this session
        self.address = ""
        self._poll = None  # the GET being held until there is something to send
        self._next_ping = Deadline(engine.clock, self._ping)
        self._pong_due = Deadline(engine.clock, self._pong_missed)

    def open_packet(self, upgrades: list[str]) -> str:
        server = self.server
        return eio.Packet(eio.OPEN, {
            "sid": self.sid, "upgrades": upgrades, "pingInterval": int(server.ping_interval * 1000),
            "pingTimeout": int(server.ping_timeout * 1000), "maxPayload": server.max_payload,
        }).encode()

    def start(self, handler):
        self.handler = handler
        self._next_ping.arm(self.server.ping_interval)

    # sending

    def send(self, text: str):
        """Send one Engine.IO MESSAGE carrying ``text``."""
        self.send_packet(eio.Packet(eio.MESSAGE, text).encode())

    def send_packet(self, encoded: str):
        if self.closed:
            return
        if self.websocket is not None:
            self.websocket.send_text(encoded)
            return
        if not self._outbox.hold(encoded):
            log.info("engine.io: closing {sid}, a slow reader", sid=self.sid)
            self._outbox.take()
            self.close("slow reader", say_goodbye=False)
            return
        self._flush_poll()

    def _flush_poll(self):
        if self._poll is None or not self._outbox:
            return
        request, self._poll = self._poll, None
        write_text(request, SEPARATOR.join(self._outbox.take()))
        if self.closed:
            self.server.forget(self)

    # receiving

    def receive(self, text: str):
        """Handle one packet from the client; a broken one closes the session."""
        if self.closed:
            return
        try:
            packet = decode_packet(text)
        except BrokenPacket:
            self.close("parse error", say_goodbye=False)
            return
        if packet.packet_type == eio.PONG:
            self._pong_received()
        elif packet.packet_type == eio.MESSAGE:
            if not isinstance(packet.data, str):
                self.close("parse error", say_goodbye=False)
                return
            self.handler.message(packet.data)
        elif packet.packet_type == eio.CLOSE:
            self.close("client close", say_goodbye=False)
        elif packet.packet_type in (eio.PING, eio.UPGRADE):
            self.close("parse error", say_goodbye=False)  # only a probe WebSocket sends these

    # long-polling

    def poll(self, request: server.Request):
        """A GET: answer now if something waits, else hold the request until something does."""
        if self.closed and not self._outbox:
            write_text(request, CLOSE_PACKET)
            return server.NOT_DONE_YET
        if self._poll is not None:
            write_text(request, CLOSE_PACKET)  # overlapping polls: the client is confused
            self.close("overlapping polls", say_goodbye=False)
            return server.NOT_DONE_YET
        self._poll = request
        request.notifyFinish().addErrback(self._poll_gone, request)
        self._flush_poll()
        return server.NOT_DONE_YET

    def _poll_gone(self, _, request):
        if self._poll is request:
            self._poll = None

    def post(self, request: server.Request, body: bytes) -> bytes:
        try:
            texts = body.decode("utf-8").split(SEPARATOR)
        except UnicodeDecodeError:
            texts = None
        if not texts or not all(texts):
            self.close("parse error", say_goodbye=False)
            return error_body(request, BAD_REQUEST)
        for text in texts:
            if self.closed:
                break
            self.receive(text)
        request.setHeader(b"content-type", b"text/plain; charset=UTF-8")
        return b"ok"

    # upgrade to WebSocket

    def probe_received(self, websocket: EngineWebSocket, text: str):
        """The upgrade dance on a probing WebSocket: 2probe -> 3probe (+NOOP on the poll), then 5."""
        if text == eio.Packet(eio.PING, "probe").encode():
            websocket.send_text(eio.Packet(eio.PONG, "probe").encode())
            self._outbox.hold(NOOP_PACKET)
            self._flush_poll()
        elif text == eio.Packet(eio.UPGRADE).encode():
            self.probe = None
            self.websocket = websocket
            websocket.engine_socket = self
            if self._poll is not None:
                self._outbox.hold(NOOP_PACKET)
                self._flush_poll()
            for encoded in self._outbox.take():
                if encoded != NOOP_PACKET:
                    websocket.send_text(encoded)
            if self.closed:
                websocket.sendClose(1000)
                self.server.forget(self)
        else:
            websocket.dropConnection(abort=True)

    # heartbeat: the server pings, the client answers within ping_timeout

    def _ping(self):
        self.send_packet(PING_PACKET)
        self._pong_due.arm(self.server.ping_timeout)

    def _pong_received(self):
        if self._pong_due.active:
            self._pong_due.cancel()
            self._next_ping.arm(self.server.ping_interval)

    def _pong_missed(self):
        self.close("ping timeout", say_goodbye=False)

    # closing

    def close(self, reason: str, say_goodbye: bool = True):
        """End the session; ``say_goodbye`` sends a CLOSE packet first (a poll may collect it)."""
        if self.closed:
            return
        if say_goodbye:
            self.send_packet(CLOSE_PACKET)
        self.closed = True
        self._next_ping.cancel()
        self._pong_due.cancel()
        if self.websocket is not None:
            self.websocket.sendClose(1000)
        if self.probe is not None and not say_goodbye:
            self.probe.sendClose(1000)
        # With a goodbye to give, a probing WebSocket stays: the client has paused polling to
        # upgrade, so the goodbye goes out on the WebSocket once the upgrade is done.
        if not say_goodbye:
            self._outbox.take()
            if self._poll is not None:
                request, self._poll = self._poll, None
                write_text(request, CLOSE_PACKET)
        for channel in self.channels:
            self.server.channels.unshare(channel)
        self.channels.clear()
        self.server.ended(self)
        if not self._outbox or self.websocket is not None:
            self.server.forget(self)
        else:
            # A last poll may still collect the goodbye; after that the sid is gone.
            self.server.clock.callLater(self.server.ping_timeout, self.server.forget, self)
        if self.handler is not None:
            handler, self.handler = self.handler, None
            handler.lost(reason)

    def abortConnection(self):
        """Drop the session now (what a stopping daemon does to those that did not leave)."""
        for websocket in (self.websocket, self.probe):
            if websocket is not None:
                websocket.dropConnection(abort=True)
        self.close("aborted", say_goodbye=False)


@implementer(IPushProducer)
class EngineWebSocket(WebSocketServerProtocol):
    """A WebSocket that carries (or asks to carry) one Engine.IO session.

    It is its transport's producer, so it knows when the client stops reading: what is sent
    from then on is counted, and past the send queue bound the connection is dropped.
    """

    engine_socket: EngineSocket | None = None
    _probing: EngineSocket | None = None
    _address = ""
    _write_paused = False
    _unread: SendQueue | None = None  # what was sent since the transport asked us to pause

    def onConnect(self, request):
        params = request.params
        if params.get("EIO") != ["4"]:
            raise ConnectionDeny(400, BAD_VERSION[1])
        sid = params.get("sid", [None])[0]
        if sid is None:
            engine = self.factory.engine
            self._address = engine.client_address(peer_host(self.transport),
                                                  [request.headers.get("x-forwarded-for", "")])
            if not engine.admits(self._address):
                raise ConnectionDeny(403, FORBIDDEN[1])
            return None
        socket = self.factory.engine.sessions.get(sid)
        if socket is None or socket.closed or socket.websocket is not None or socket.probe is not None:
            raise ConnectionDeny(400, UNKNOWN_SID[1])
        socket.probe = self
        self._probing = socket
        return None

    def onOpen(self):
        self._unread = SendQueue(self.factory.engine.send_queue)
        self.transport.unregisterProducer()  # the HTTP channel this connection began as
        self.transport.registerProducer(self, True)
        if self._probing is None:
            self.engine_socket = self.factory.engine.open(self, self.http_request_params, self._address)

    def onMessage(self, payload, isBinary):
        if isBinary:
            self.dropConnection(abort=True)
            return
        text = payload.decode("utf-8")  # autobahn has checked it is UTF-8
        if self.engine_socket is not None:
            self.engine_socket.receive(text)
        elif self._probing is not None:
            self._probing.probe_received(self, text)

    def send_text(self, text: str):
        data = text.encode("utf-8")
        if self._write_paused and not self._unread.count(data):
            log.info("engine.io: dropping a WebSocket, a slow reader")
            self.dropConnection(abort=True)
            return
        self.sendMessage(data)

    def pauseProducing(self):
        self._write_paused = True

    def resumeProducing(self):
        self._write_paused = False
        self._unread.take()

    def stopProducing(self):
        pass

    def onClose(self, wasClean, code, reason):
        if self.engine_socket is not None:
            self.engine_socket.close("transport close", say_goodbye=False)
        elif self._probing is not None and self._probing.probe is self:
            self._probing.probe = None


class EngineServer:
    """The Engine.IO sessions of one web port, and the resource that serves them.

    ``on_open(socket, query, address)`` makes the handler of each new session; ``query`` is
    the handshake's query string as a dict of str to str (first value of each name).
    ``admits(address)`` says whether one more session may open from that address;
    ``client_address(peer, forwarded_for)`` is the client's address behind a trusted proxy;
    ``channels`` (the connection tracker) counts a polling session's HTTP connections as part
    of the session (``share``/``unshare``).
    """

    def __init__(self, clock, on_open: Callable, *, ping_interval: float, ping_timeout: float,
                 max_payload: int, send_queue: int, admits: Callable = lambda address: True,
                 client_address: Callable = lambda peer, forwarded_for: peer, channels=None):
        self.clock = clock
        self.on_open = on_open
        self.admits = admits
        self.client_address = client_address
        self.channels = channels or _Uncounted()
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.max_payload = max_payload
        self.send_queue = send_queue
        self.sessions: dict[str, EngineSocket] = {}
        self.per_address: collections.Counter = collections.Counter()  # live sessions by client address
        factory = WebSocketServerFactory()
        factory.protocol = EngineWebSocket
        factory.engine = self
        # failByDrop off: an oversized frame gets a close frame (1009) before the connection ends.
        factory.setProtocolOptions(maxFramePayloadSize=max_payload, maxMessagePayloadSize=max_payload,
                                   openHandshakeTimeout=ping_timeout, closeHandshakeTimeout=5,
                                   failByDrop=False)
        self.resource = EngineResource(self, WebSocketResource(factory))

    def _new_socket(self) -> EngineSocket:
        socket = EngineSocket(self, secrets.token_urlsafe(15))
        self.sessions[socket.sid] = socket
        return socket

    def open(self, websocket: EngineWebSocket | None, query: dict, address: str) -> EngineSocket:
        """A new session: on ``websocket`` directly, or (None) by a polling handshake."""
        socket = self._new_socket()
        socket.address = address
        self.per_address[address] += 1
        query = {k: v[0] for k, v in query.items() if v}
        if websocket is not None:
            socket.websocket = websocket
            websocket.send_text(socket.open_packet([]))
        else:
            socket.send_packet(socket.open_packet(["websocket"]))
        socket.start(self.on_open(socket, query, address))
        return socket

    def forget(self, socket: EngineSocket):
        if self.sessions.get(socket.sid) is socket:
            del self.sessions[socket.sid]

    def ended(self, socket: EngineSocket):
        self.per_address[socket.address] -= 1
        if not self.per_address[socket.address]:
            del self.per_address[socket.address]

    def follow_ups(self, address: str) -> int:
        """Connections the live sessions from ``address`` may still open beyond its limit."""
        return FOLLOW_UP_CONNECTIONS * self.per_address.get(address, 0)

    def adopt(self, socket: EngineSocket, channel):
        """``channel`` carries ``socket``'s polling requests: it counts as part of the session
        (up to POLLING_CHANNELS of them; released when the session ends)."""
        if len(socket.channels) < POLLING_CHANNELS and not socket.closed and self.channels.share(channel):
            socket.channels.add(channel)


class _Uncounted:
    def share(self, channel):
        return False

    def unshare(self, channel):
        pass


class EngineResource(resource.Resource):
    """``/socket.io/``: the polling transport itself, and the door to the WebSocket one."""

    isLeaf = True

    def __init__(self, engine: EngineServer, websocket: WebSocketResource):
        super().__init__()
        self.engine = engine
        self.websocket = websocket

    def render(self, request):
        request.setHeader(b"access-control-allow-origin", b"*")  # polling from another origin
        if request.method not in (b"GET", b"POST"):
            return error_body(request, BAD_METHOD)  # a HEAD would open or drain a session
        args = {k.decode("latin-1"): v[0].decode("utf-8", "replace") for k, v in request.args.items() if v}
        if args.get("EIO") != "4":
            return error_body(request, BAD_VERSION)
        transport = args.get("transport")
        if transport == "websocket":
            if request.method != b"GET":
                return error_body(request, BAD_METHOD)
            if (request.getHeader(b"upgrade") or b"").lower() != b"websocket":
                return error_body(request, BAD_REQUEST)
            return self.websocket.render(request)
        if transport != "polling":
            return error_body(request, UNKNOWN_TRANSPORT)
        sid = args.get("sid")
        if sid is None:
            if request.method != b"GET":
                return error_body(request, BAD_METHOD)
            engine, channel = self.engine, request.channel
            address = engine.client_address(peer_host(channel.transport),
                                            request.requestHeaders.getRawHeaders(b"x-forwarded-for"))
            shared = engine.channels.share(channel)  # the asking connection is part of the session
            if not engine.admits(address):
                if shared:
                    engine.channels.unshare(channel)
                return error_body(request, FORBIDDEN)
            query = {k.decode("latin-1"): [v.decode("utf-8", "replace") for v in vs]
                     for k, vs in request.args.items()}
            socket = engine.open(None, query, address)
            if shared:
                socket.channels.add(channel)
            return socket.poll(request)
        socket = self.engine.sessions.get(sid)
        if socket is None or socket.websocket is not None:
            return error_body(request, UNKNOWN_SID)
        self.engine.adopt(socket, request.channel)
        if request.method == b"GET":
            return socket.poll(request)
        if request.method == b"POST":
            if socket.closed:
                return error_body(request, UNKNOWN_SID)
            return socket.post(request, request.content.read())
        return error_body(request, BAD_METHOD)


def peer_host(transport) -> str:
    return getattr(transport.getPeer(), "host", "")


def write_text(request: server.Request, text: str):
    request.setHeader(b"content-type", b"text/plain; charset=UTF-8")
    request.write(text.encode("utf-8"))
    request.finish()


def error_body(request: server.Request, error: tuple[int, str]) -> bytes:
    code, message = error
    request.setResponseCode(400)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps({"code": code, "message": message}).encode()
