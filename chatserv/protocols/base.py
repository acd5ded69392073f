"""What every connection-oriented protocol shares: framing, request order, limits, delivery.

A protocol module subclasses ``ChatConnection`` and supplies: a framer, ``handle(frame)``
(bytes in, one service call, reply bytes out), ``render(event)`` for live events, its one
``ErrorTable``, and its goodbye. Everything here is wire-agnostic; what the web port shares
with it (request order, the send queue, deadlines, the error table) is in ``chatserv.wire``.
"""

from __future__ import annotations

from collections.abc import Mapping

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from chatserv import errors
from chatserv.bus import Subscription
from chatserv.domain.login import LoggedIn
from chatserv.limits import Limits, QuietLog, TokenBucket
from chatserv.options import from_options
from chatserv.protocols.framing import FrameError
from chatserv.service import ChatService, ISink, Session
from chatserv.wire import (
    ConnectionTracker,
    Deadline,
    ErrorTable,
    RequestQueue,
    SendQueue,
    WriteTurns,
    write_through,
)

log = Logger()
quiet = QuietLog(log)  # what a client can make us log: a flood of it writes one line a minute


@implementer(ISink, IPushProducer, IHalfCloseableProtocol)
class ChatConnection(protocol.Protocol):
    """One client connection. Requests are answered strictly in order, one at a time."""

    protocol_name = "base"
    error_table: ErrorTable
    subscribes = Subscription.DIRECT  # what this wire renders (chatserv.bus.Subscription)

    # Slots, not an instance dict, and nothing an idle connection does not use (the rate
    # bucket and the waiters' list come when needed): tens of thousands of connections stay
    # idle. Protocol's attributes are slots too: a single attribute kept in the instance dict
    # costs every connection the dict's values (some 270 bytes).
    __slots__ = ("session", "requests", "_reading_paused", "_write_paused", "unsent", "_closing",
                 "_input_ended", "deadline", "_in_flight", "_drained", "_settled", "failed_logins",
                 "framer", "peer_host", "_rate", "_handed", "factory", "transport", "connected")

    def __init__(self):
        self.factory = None  # Protocol's class defaults, which the slots hide
        self.transport = None
        self.connected = 0
        self.session: Session | None = None
        self.requests = RequestQueue(self._answer_frame, self._requests_waiting)
        self._reading_paused = False
        self._write_paused = False
        self.unsent: SendQueue | None = None  # set on connect: written while the reader paused us
        self._closing = False
        self._input_ended = False
        self.deadline: Deadline | None = None  # set on connect: the connection's one timeout
        self._in_flight = 0
        self._drained: defer.Deferred | None = None
        self._settled: list[defer.Deferred] | None = None
        self.failed_logins = 0
        self._rate: TokenBucket | None = None
        self._handed: list[bytes] | None = None  # events' bytes held until the turn ends (flush)

    # set up by the factory

    @property
    def service(self) -> ChatService:
        return self.factory.service

    @property
    def limits(self) -> Limits:
        return self.factory.limits

    @property
    def clock(self):
        return self.factory.clock

    @property
    def rate(self) -> TokenBucket:
        """The session's message rate bucket, made when first asked (it starts full either way)."""
        if self._rate is None:
            self._rate = TokenBucket(self.clock, self.limits.messages_per_second, self.limits.message_burst)
        return self._rate

    def make_framer(self):
        raise NotImplementedError

    # connection life

    def connectionMade(self):
        self.framer = self.make_framer()
        self.peer_host = getattr(self.transport.getPeer(), "host", "")
        self.unsent = SendQueue(self.limits.send_queue)
        self.transport.registerProducer(self, True)
        self.factory.tracker.add(self)
        self.deadline = Deadline(self.clock, self.timed_out)
        self.deadline.arm(self.limits.prelogin_timeout)
        self.greet()

    def connectionLost(self, reason=protocol.connectionDone):
        self._closing = True
        self._handed = None
        self.deadline.cancel()
        self.requests.stop()
        self.factory.tracker.discard(self)
        self.logout()

    def greet(self):
        """Called once on connect: protocols whose server speaks first override it."""

    def close(self):
        """Flush what was written, then close; nothing more is read or answered."""
        if self._closing:
            return
        if self._handed is not None:
            self.flush()
        self._closing = True
        self.requests.stop()
        self.deadline.cancel()
        self._write_paused = False
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    # reading: frames are queued and handled one after another, in order

    def dataReceived(self, data: bytes):
        if self._closing:
            return
        self.requests.extend(self.framer.feed(data))
        if len(self.requests) > self.limits.max_pending_requests and not self._reading_paused:
            self._reading_paused = True
            self.transport.pauseProducing()
        self.requests.run()

    def _answer_frame(self, frame) -> defer.Deferred | None:
        """Answer one frame (``self.requests`` calls this in order); a Deferred holds the next."""
        self.deadline.push_back()
        if isinstance(frame, FrameError):
            self.write(self.frame_error(frame))
            if frame.fatal:
                self.close()
            return None
        d = defer.maybeDeferred(self.handle, frame)
        d.addCallback(self._reply)
        d.addErrback(self._failed)
        return d

    def _requests_waiting(self):
        """Reading resumes once half the backlog is answered; a client that ended is let go."""
        if self._reading_paused and len(self.requests) < self.limits.max_pending_requests // 2:
            self._reading_paused = False
            if not self._closing:
                self.transport.resumeProducing()
        self._close_if_answered()

    def queue_frame(self, frame):
        """Answer, in order, a frame found outside the framer (an unterminated last request)."""
        if not self._closing:
            self.requests.put(frame)

    def readConnectionLost(self):
        """The client sent its last byte (``printf ... | nc``): answer what came, then close."""
        self._input_ended = True
        self._close_if_answered()

    def writeConnectionLost(self):
        self.close()

    def _close_if_answered(self):
        if self._input_ended and self.requests.idle:
            self.close()

    def _reply(self, reply):
        if reply is not None and not self._closing:
            self.write(reply)

    def _failed(self, failure):
        try:
            self._reply(self.error_table.reply(failure.value))
        except Exception:
            quiet.failure("unexpected failure in {proto} request", failure, proto=self.protocol_name)
            self._reply(self.internal_error())

    def in_background(self, work: defer.Deferred) -> defer.Deferred | None:
        """Answer the next requests while ``work`` (a message being stored) finishes.

        The caller has attached what to write when it lands. Stores commit in order, so a
        sender's messages still land in the order sent; the store's commit latency no longer
        limits one sender to one message per commit. Past ``max_pending_requests`` in flight,
        returns a Deferred for the request to wait on until half of them have landed.
        """
        self._in_flight += 1
        work.addBoth(self._landed)
        if self._in_flight > self.limits.max_pending_requests:
            self._drained = defer.Deferred()
            return self._drained
        return None

    def _landed(self, result):
        self._in_flight -= 1
        if isinstance(result, Failure):
            quiet.failure("unexpected failure in {proto} background work", result, proto=self.protocol_name)
        if self._drained is not None and self._in_flight <= self.limits.max_pending_requests // 2:
            drained, self._drained = self._drained, None
            drained.callback(None)
        if not self._in_flight and self._settled:
            settled, self._settled = self._settled, None
            for d in settled:
                d.callback(None)

    def settled(self) -> defer.Deferred:
        """Fires once every message this connection sent has landed (stored and delivered)."""
        if not self._in_flight:
            return defer.succeed(None)
        if self._settled is None:
            self._settled = []
        self._settled.append(defer.Deferred())
        return self._settled[-1]

    def handle(self, frame: bytes):
        """Answer one frame: returns reply bytes, None, or a Deferred (or coroutine) of them."""
        raise NotImplementedError

    def frame_error(self, error: FrameError) -> bytes:
        """The reply to a frame the framer rejected."""
        raise NotImplementedError

    def internal_error(self) -> bytes | None:
        """The reply when a request fails unexpectedly (the failure is logged)."""
        return None

    # writing: bounded by the send queue, so a reader that never reads is let go

    def write(self, payload: bytes):
        """Frame and send one payload."""
        self.write_raw(self.framer.encode(payload))

    def write_raw(self, data: bytes):
        if self._handed is not None:
            self.flush()  # what events brought this turn goes first: the order stays as handed
        if self._closing:
            return
        if not self._write_paused:
            write_through(self.transport, data)
            return
        if not self.unsent.hold(data):
            quiet.info("{proto}: disconnecting {peer}, a slow reader", proto=self.protocol_name,
                       peer=self.peer_host)
            self.unsent.take()
            self._closing = True
            self.requests.stop()
            last_words = self.too_slow()
            if last_words:
                self.transport.write(last_words)
            self.transport.unregisterProducer()
            self.transport.abortConnection()

    def flush(self):
        """Write the bytes of this turn's events as one write (``WriteTurns`` calls it)."""
        handed, self._handed = self._handed, None
        if handed:
            self.write_raw(handed[0] if len(handed) == 1 else b"".join(handed))

    def too_slow(self) -> bytes | None:
        """What a reader let go for not reading is told (if it ever reads again): None, or
        the protocol's own words."""
        return None

    def pauseProducing(self):
        self._write_paused = True

    def resumeProducing(self):
        self._write_paused = False
        unsent = self.unsent.take()
        if unsent and not self._closing:
            self.transport.writeSequence(unsent)

    def stopProducing(self):
        self.unsent.take()

    # timeouts: a shorter one before login, the idle one after (self.deadline)

    def timed_out(self):
        """Say goodbye in the protocol's own words; the default just closes."""
        self.close()

    # sessions

    async def log_in(self, credentials, **options) -> LoggedIn:
        """Log this connection in through the service's one login path (``ChatService.log_in``,
        which ``options`` go to), replacing any earlier login."""
        return await self.service.log_in(credentials, self, self.protocol_name, self.peer_host, **options)

    def admit(self, user) -> bool:
        """``ChatService.log_in`` asks once the credentials passed, just before it attaches the
        session. A connection already closing (its client left while the password was checked)
        gets none: nothing would ever detach it. Otherwise its earlier login ends here."""
        if self._closing:
            return False
        self.logout()
        return True

    def attached(self, session: Session):
        """``ChatService.log_in`` attached this connection's session (before it reads the
        messages that waited, so live events meanwhile render as this user's)."""
        self.session = session
        self.failed_logins = 0
        self.deadline.arm(self.logged_in_timeout())

    def logged_in_timeout(self) -> float:
        return self.limits.idle_timeout

    def logout(self):
        if self.session is not None:
            session, self.session = self.session, None
            self.service.detach(session)

    def login_failed(self) -> bool:
        """Count a failed login; True when the connection has used up its attempts."""
        self.failed_logins += 1
        return self.failed_logins >= self.limits.login_attempts

    @property
    def user(self):
        if self.session is None:
            raise errors.NotLoggedIn("please login")
        return self.session.user

    def check_rate(self):
        if not self.rate.allow():
            raise errors.RateLimited("slow down")

    # events

    def deliver(self, event):
        """ISink: render a live event on this wire; shutdown and kicks end the connection.

        The fan-out hot path, once per recipient: the bytes wait in ``_handed`` for the
        reactor's turn to end (``WriteTurns``), so a connection handed many messages in one
        turn (a store commit's worth) makes one write of them all.
        """
        if self._closing:
            return
        try:
            data = self.render(event)
        except Exception:
            quiet.failure("cannot render {event!r}", event=event)
            return
        if data:
            handed = self._handed
            if handed is not None:
                handed.append(data)
            elif self._write_paused or not self.factory.write_turns.running:
                self.write_raw(data)  # a paused reader's bytes queue within the send-queue bound
            else:
                self._handed = [data]
                self.factory.write_turns.hold(self)
        if event.ends_session:
            self.logout()
            self.close()

    def render(self, event) -> bytes | None:
        """Bytes for ``event`` on this wire (framed), or None to ignore it."""
        return None


class ChatFactory(protocol.Factory):
    """Builds one protocol's connections and hands them the shared service and limits.

    ``config_class``: the protocol's typed options (``chatserv.options``), if it has any;
    ``config`` is made from ``options`` (twistd's, or a test's dict of the ones it sets).
    """

    config_class: type | None = None

    def __init__(self, service: ChatService, tracker: ConnectionTracker, limits: Limits, clock,
                 options: Mapping | None = None):
        self.service = service
        self.tracker = tracker
        self.limits = limits
        self.clock = clock
        self.write_turns = WriteTurns.of(clock)
        self.config = from_options(self.config_class, options or {}) if self.config_class else None

    def buildProtocol(self, addr):
        """Refuse (close at once) a connection over the total or per-address limit."""
        if not self.tracker.admits(getattr(addr, "host", ""), self.limits):
            return None
        return super().buildProtocol(addr)
