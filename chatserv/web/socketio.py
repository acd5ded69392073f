"""Seed 004's real-time half: Socket.IO v5 on an Engine.IO session, over the shared service.

The packet codec is python-socketio's. One connection serves the default namespace. It is
refused (CONNECT_ERROR) unless the handshake's query string (or the CONNECT auth payload)
names a live REST session ID; then it is a service session of its own, so it receives
messages from every port as ``new_message``. Events are handled strictly in order.
"""

from __future__ import annotations

from socketio import packet as sio
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from chatserv import errors, events
from chatserv.domain.login import Vouched
from chatserv.limits import QuietLog, TokenBucket
from chatserv.service import ISink
from chatserv.text import UnencodableText, check_decoded
from chatserv.web import api
from chatserv.web.engineio import EngineSocket
from chatserv.web.sessions import InvalidSession, WebSessions
from chatserv.wire import BadRequest, Deadline, RequestQueue

log = Logger()
quiet = QuietLog(log)  # bounds what clients can make us log

PROTOCOL = "web"
NAMESPACE = "/"
RENDER_KEY = "socket.io"
GOODBYE_GRACE = 5.0  # seconds a client told to disconnect has to close its Engine.IO session


def encode(packet_type, data=None, namespace=None, id=None) -> str:
    return sio.Packet(packet_type, data, namespace=namespace, id=id, binary=False).encode()


def event_packet(name: str, payload) -> str:
    return encode(sio.EVENT, [name, payload])


def _field(data: dict, name: str, kind, required=True, default=None):
    value = data.get(name, default)
    if value is None and not required:
        return default
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise BadRequest(f"{name} is required" if value is None else f"{name} has the wrong type")
    return value


@implementer(ISink)
class SocketIOConnection:
    """One Socket.IO client; the tracker sees it as a connection of the web port."""

    protocol_name = "socket.io"

    def __init__(self, engine: EngineSocket, query: dict, address: str, factory):
        self.engine = engine
        self.query = query
        self.peer_host = address
        self.factory = factory
        self.service = factory.service
        self.web_sessions: WebSessions = factory.web_sessions
        self.limits = factory.limits
        self.web_session = None  # the session ID it connected with
        self.session = None  # its service session, while it is in the namespace
        self.user = None
        self.rate = TokenBucket(factory.clock, self.limits.messages_per_second, self.limits.message_burst)
        self.requests = RequestQueue(self._answer_event)
        self.closed = False
        # closes the Engine.IO session while nobody is in the namespace
        self.deadline = Deadline(factory.clock, lambda: self.engine.close("server close"))
        self.deadline.arm(self.limits.prelogin_timeout)
        factory.tracker.add(self)

    @property
    def transport(self):
        """What the tracker aborts when a stopping daemon's grace runs out."""
        return self.engine

    # from Engine.IO

    def message(self, text: str):
        if self.closed:
            return
        try:
            if not text:
                raise ValueError("empty packet")
            packet = sio.Packet(encoded_packet=text)
        except (ValueError, TypeError, IndexError, RecursionError):
            self.close()
            return
        if packet.packet_type == sio.CONNECT:
            self._connect(packet)
        elif packet.namespace not in (None, NAMESPACE) or self.session is None:
            return  # the client may send for a namespace it was refused; Socket.IO ignores those
        elif packet.packet_type == sio.DISCONNECT:
            self.close(say_goodbye=False)
        elif packet.packet_type == sio.EVENT and self._is_event(packet.data):
            self.requests.extend((packet,))
            if len(self.requests) > self.limits.max_pending_requests:
                self.close()
                return
            self.requests.run()
        else:
            self.close()  # binary events and acks are not part of this API

    @staticmethod
    def _is_event(data) -> bool:
        return isinstance(data, list) and len(data) >= 1 and isinstance(data[0], str)

    def lost(self, reason: str):
        """Engine.IO: the session ended (closed by either side, timed out or aborted)."""
        self.closed = True
        self.requests.stop()
        self.deadline.cancel()
        self.factory.tracker.discard(self)
        self._leave()

    def _leave(self):
        """Out of the namespace: no longer a service session, nor a user of its session ID."""
        self.requests.clear()
        if self.web_session is not None:
            self.web_session.sockets.discard(self)
            self.web_session.touch()
            self.web_session = None
        if self.session is not None:
            session, self.session = self.session, None
            self.service.detach(session)

    def _connect(self, packet):
        namespace = packet.namespace or NAMESPACE
        if namespace != NAMESPACE:
            self.send(encode(sio.CONNECT_ERROR, {"message": "Invalid namespace"}, namespace=namespace))
            return
        if self.web_session is not None:
            return  # in the namespace already, or on its way in
        auth = packet.data if isinstance(packet.data, dict) else {}
        try:
            web_session = self.web_sessions.get(auth.get("sessionID", self.query.get("sessionID")))
        except InvalidSession as e:
            self.send(encode(sio.CONNECT_ERROR, {"message": e.message}))
            return
        self.deadline.cancel()
        self.web_session = web_session
        web_session.sockets.add(self)
        self.user = web_session.user
        logging_in = self.service.log_in(Vouched(self.user), self, PROTOCOL, self.peer_host)
        logging_in.addCallbacks(self._connected, self._connect_failed)

    def admit(self, user) -> bool:
        """``ChatService.log_in`` asks just before it attaches the session: a client that left
        the namespace meanwhile gets none (nothing would ever detach it)."""
        return not self.closed and self.web_session is not None

    def attached(self, session):
        """The handshake's answer goes out once the session is attached, before any event
        rendered for it."""
        self.session = session
        self.send(encode(sio.CONNECT, {"sid": self.engine.sid}))

    def _connected(self, logged_in):
        if logged_in.session is not None:
            self.service.conversations(self.user).addCallbacks(self._watch_partners, self._no_partners)

    def _connect_failed(self, failure):
        self._leave()
        self.send(encode(sio.CONNECT_ERROR, {"message": self._error_text(failure, "connect")}))

    def _watch_partners(self, conversations):
        """The page shows who of the people it talks with is online, contacts or not."""
        if self.session is not None:
            self.service.watch_presence_of(self.session, [c.peer for c in conversations if c.peer])

    def _no_partners(self, failure):
        log.warn("socket.io: no presence of non-contacts for {user}: {why}", user=self.user.username,
                 why=failure.getErrorMessage())

    # events, one at a time and in order

    def _answer_event(self, packet) -> defer.Deferred:
        name, args = packet.data[0], packet.data[1:]
        d = defer.maybeDeferred(self._handle, name, args[0] if args else None)
        d.addErrback(self._failed, name)
        d.addCallback(self._answer, packet.id)
        return d

    def _handle(self, name, data):
        handler = {"send_message": self.on_send_message, "add_contact": self.on_add_contact}.get(name)
        if handler is None:
            raise BadRequest("Unknown event")
        if not isinstance(data, dict):
            raise BadRequest("event data must be an object")
        try:
            check_decoded(data)
        except UnencodableText as exc:
            raise BadRequest(str(exc)) from None
        if "sessionID" in data and self.web_sessions.get(data["sessionID"]).user is not self.user:
            raise InvalidSession("Invalid session")
        return defer.ensureDeferred(handler(data))

    def _failed(self, failure, name):
        text = self._error_text(failure, name)
        self.emit("error", {"message": text})
        return {"error": text}

    @staticmethod
    def _error_text(failure, name) -> str:
        """What the client is told of a failed handshake or event: the REST error table's text."""
        try:
            _, text = api.ERRORS.reply(failure.value)
        except Exception:
            quiet.failure("unexpected failure in socket.io {name}", failure, name=name)
            text = "Internal server error"
        return text

    def _answer(self, reply, ack_id):
        if ack_id is not None:
            self.send(encode(sio.ACK, [reply], id=ack_id))

    async def on_send_message(self, data):
        recipient_id = api.whole_number(data.get("recipient_id"))
        if recipient_id is None:
            raise BadRequest("recipient_id must be an integer")
        content = _field(data, "content", str)
        kind = _field(data, "type", str, required=False, default="text")
        is_group = data.get("is_group") in (True, "true", 1)
        if not self.rate.allow():
            raise errors.RateLimited("slow down")
        if is_group:
            room = self.service.room_by_id(recipient_id)
            message = await self.service.send_room(self.user, room, content, kind)
        else:
            recipient = self.service.user_by_id(recipient_id)
            message = await self.service.send_direct(self.user, recipient, content, kind)
        return {"message_id": message.id}

    async def on_add_contact(self, data):
        name = _field(data, "contact_username", str)
        known = self.service.contact_status(self.user, self.service.user(name))
        contact = await self.service.add_contact(self.user, name)
        if known is not None:  # nothing changed, so no event: answer this socket alone
            self.emit("contact_added", api.contact_entry(contact, known))
        return {"contact_id": contact.id}

    # to the client

    def send(self, text: str):
        self.engine.send(text)

    def emit(self, name: str, payload):
        self.send(event_packet(name, payload))

    def deliver(self, event):
        """ISink: render a live event as a Socket.IO event (messages rendered once for all)."""
        if self.closed:
            return
        if isinstance(event, (events.DirectMessage, events.RoomMessage)):
            self.send(event.render_once(RENDER_KEY, lambda: event_packet(
                "new_message", api.new_message(event.message))))
            if isinstance(event, events.DirectMessage) and self.session is not None:
                partner = event.sender if event.recipient.id == self.user.id else event.recipient
                self.service.watch_presence_of(self.session, [partner])
        elif isinstance(event, events.PresenceChanged):
            self.emit("user_status", api.presence_entry(event.user, event.online))
        elif isinstance(event, events.ReadMarked):
            self.emit("conversation_read", api.read_entry(event))
        elif isinstance(event, events.ContactChanged):
            self._contact_changed(event)
        elif event.ends_session:
            self.close()

    def _contact_changed(self, event):
        if self.session is None or event.status is None:
            return
        if event.owner.id == self.user.id:
            self.emit("contact_added", api.contact_entry(event.contact, event.status))
        elif event.status in ("friend", "new") and event.previous is None:
            # Only a new relation is news: an unblock that restores a contact is not "X added you".
            self.emit("contact_request", {"user_id": event.owner.id, "username": event.owner.username})

    def close(self, say_goodbye: bool = True):
        """End the connection. A connected client gets a DISCONNECT, which tells it not to
        reconnect and to close the Engine.IO session itself; one that does not is closed after
        GOODBYE_GRACE. (Closing it here at once would race the DISCONNECT inside
        socket.io-client, which handles a packet a tick after it sees its transport close.)"""
        if self.closed:
            return
        if say_goodbye and self.session is not None:
            self.send(encode(sio.DISCONNECT))
            self._leave()
            self.deadline.arm(GOODBYE_GRACE)
        else:
            self.engine.close("server close")
