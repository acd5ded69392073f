"""Seed 001, the chat-room: JSON lines for the documented clients and ``key:value`` lines for
the real Java client, on one port. A line starting with ``{`` is JSON, any other is key:value,
and each is answered in its own encoding.

There are two kinds of login:

- a *connection login* (``auth`` without ``port``): the connection is the session and pushes
  are lines written on it;
- a *callback login* (``auth`` with ``port``, the real client): that client makes one TCP
  connection per request, so its login lives here beyond the connection, until ``logout`` or
  the alive timeout, and pushes reach it by connecting to its IP and that port (``Pusher``).
  A later request belongs to it when the user named in ``from`` has a callback login made
  from the same peer IP; nothing else can speak as that user. A direct message pushed to it
  counts as delivered only once the client answers: until then it waits in the inbox.

The real client never ends its request with a newline and reads its reply until a short read,
so a request still unterminated when the client falls quiet (or half-closes) is answered
without a newline, and the connection is closed; that client's pushes are unterminated too.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Callable
from typing import ClassVar

import attrs
from twisted.internet import defer, endpoints, protocol
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from chatserv import errors, events
from chatserv.bus import Subscription
from chatserv.domain.login import Password
from chatserv.limits import TokenBucket
from chatserv.model import LOBBY, Message, User, fold
from chatserv.options import option
from chatserv.protocols import keyvalue
from chatserv.protocols.base import ChatConnection, ChatFactory
from chatserv.protocols.framing import LineFramer
from chatserv.service import ISink, Session
from chatserv.wire import BadRequest, ErrorTable, json_object

log = Logger()

PROTOCOL = "chatroom"
KILL_REASON = "you have logged in at another place."
OFFLINE_NOTE = "{} is offline now. Msg will be delivered when online."
INVALID = "invalid request!"
OK = {"result": "ok"}
FAIL = {"result": "fail"}
NO_ADDRESS = {"ip": "null", "port": "null"}

# How long an unterminated request may sit before it is taken as complete (the real client
# writes its whole request at once and then waits for the reply).
UNTERMINATED_SETTLE = 0.2
# Pushes waiting for one callback login before further ones are dropped (and logged); a direct
# message whose push is dropped or fails stays in the inbox for the user's next login.
LOGIN_PUSH_BACKLOG = 256

ERRORS = ErrorTable({
    BadRequest: lambda exc: exc.message,
    errors.BadCredentials: "fail",
    errors.NotLoggedIn: "please login first",
    errors.NotFound: "user does not exist!",
    errors.Blocked: "you are blocked!",
    errors.RateLimited: lambda exc: exc.message,
    errors.Denied: lambda exc: exc.message,
    errors.Invalid: lambda exc: exc.message,
    errors.Offline: lambda exc: exc.message,
    errors.Busy: "server busy, try again",
    errors.ChatError: "fail",
})


class NotARequest(BadRequest):
    """A line that does not decode at all: answered with the seed's ``invalid request!``."""


class JsonWire:
    """The documented form: one JSON object per line."""

    name = "json"

    @staticmethod
    def decode(line: bytes) -> dict:
        try:
            return json_object(line.decode("utf-8"))
        except ValueError:  # bad UTF-8, not JSON, or not an object
            raise NotARequest() from None

    @staticmethod
    def encode(fields: dict) -> bytes:
        return json.dumps(fields, ensure_ascii=False).encode("utf-8")

    @staticmethod
    def extend(encoded: bytes, key: str, value: str) -> bytes:
        """``encoded`` (an object) with one more field, without encoding it again."""
        return encoded[:-1] + b", " + JsonWire.encode({key: value})[1:]

    @staticmethod
    def invalid() -> bytes:
        return JsonWire.encode({"result": INVALID})


class KeyValueWire:
    """The real client's form: ``key:value`` pairs with ``\\`` escapes."""

    name = "kv"

    @staticmethod
    def decode(line: bytes) -> dict:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            # The Java client writes one byte per character (DataOutputStream.writeBytes): é is 0xE9.
            text = line.decode("latin-1")
        try:
            return keyvalue.parse(text)
        except keyvalue.DecodeError:  # a dangling escape
            raise NotARequest() from None

    @staticmethod
    def encode(fields: dict) -> bytes:
        return keyvalue.serialise(fields).encode("utf-8")

    @staticmethod
    def extend(encoded: bytes, key: str, value: str) -> bytes:
        return encoded + b":" + KeyValueWire.encode({key: value})

    @staticmethod
    def invalid() -> bytes:
        return INVALID.encode()  # the original answers this one in plain text


def wire_of(line: bytes):
    """JSON for a line that opens an object (or an array, which no key:value line starts with:
    a JSON client sending one is told in JSON that it is not a request)."""
    return JsonWire if line.lstrip()[:1] in (b"{", b"[") else KeyValueWire


def message_push(wire, message: Message) -> bytes:
    return wire.encode({"type": "message", "from": message.sender_name, "msg": message.body})


def render_push(event, wire, user: User, is_peer) -> bytes | None:
    """The push for ``event`` to ``user``, unterminated; None when this user is not told."""
    key = f"{PROTOCOL}-{wire.name}"
    if isinstance(event, events.DirectMessage):
        if event.recipient.id != user.id:
            return None  # the sender's own copy: the seed has no echo
        return event.render_once(key, lambda: message_push(wire, event.message))
    if isinstance(event, events.RoomMessage):
        if fold(event.room.name) != fold(LOBBY):
            return None
        # A broadcast names its recipient in ``to``: render once, append the name per recipient.
        return wire.extend(event.render_once(key, lambda: message_push(wire, event.message)),
                           "to", user.username)
    if isinstance(event, events.PresenceChanged):
        if event.online or not is_peer(user, event.user):
            return None
        return event.render_once(key, lambda: wire.encode({"type": "offline", "from": event.user.username}))
    if isinstance(event, (events.Kicked, events.ServerShutdown)):
        return wire.encode({"type": "kill", "reason": event.reason})
    return None


# outbound pushes


class PushFailed(Exception):
    """A push was dropped, refused, or got no answer in time."""


class PushDropped(PushFailed):
    """A push found too many waiting (the ``Pusher`` logs these, not each one)."""


class PushClient(protocol.Protocol):
    """Writes one push and takes the client's answer: a line, or (``first_chunk``) the first
    bytes the real client writes, or whatever came before the client closed."""

    def __init__(self, payload: bytes, first_chunk: bool, max_answer: int):
        self.payload = payload
        self.first_chunk = first_chunk
        self.max_answer = max_answer
        self.answer = defer.Deferred()
        self._buffer = b""

    def connectionMade(self):
        self.transport.write(self.payload)
        if self.first_chunk:
            # The real client reads in 32-character chunks until a short one or the end: end our
            # side, so a push whose length is a multiple of 32 does not leave it waiting.
            self.transport.loseWriteConnection()

    def dataReceived(self, data):
        self._buffer += data
        line, newline, _ = self._buffer.partition(b"\n")
        if newline or self.first_chunk or len(self._buffer) > self.max_answer:
            self._answered(line[: self.max_answer].rstrip(b"\r"))

    def connectionLost(self, reason=protocol.connectionDone):
        self._answered(self._buffer[: self.max_answer])

    def _answered(self, answer):
        if not self.answer.called:
            self.answer.callback(answer)


class OnePush(protocol.Factory):
    """Hands the endpoint the one client of a push (and, unlike ``connectProtocol``, logs nothing)."""

    noisy = False

    def __init__(self, client: PushClient):
        self.client = client

    def buildProtocol(self, addr):
        return self.client


class PushTimedOut(PushFailed):
    """A target did not take a push in time (no connection, or no answer): it is backed off."""


def _connect_timed_out(result, timeout):
    return Failure(PushTimedOut("cannot connect in time"))


@attrs.define(eq=False)
class _Target:
    """A client's listening port (host and port): one push at a time, a backoff after a timeout."""

    host: str
    port: int
    queue: collections.deque = attrs.field(factory=collections.deque)  # jobs waiting their turn
    busy: bool = False  # a job of its queue is ready or running
    timeouts: int = 0  # in a row; an answer clears them
    not_before: float = 0.0
    wake: object = None  # the IDelayedCall that ends its backoff

    @property
    def idle(self) -> bool:
        return not (self.busy or self.queue or self.wake)


@attrs.define(eq=False)
class _Job:
    target: _Target
    payload: bytes
    first_chunk: bool
    wait: float
    beside: bool
    result: defer.Deferred = attrs.field(factory=defer.Deferred)
    slow: bool = False  # started for a target that had timed out


class Pusher:
    """Outbound pushes, bounded in time (connect and answer timeouts) and in number (at most
    ``limit`` at once, ``backlog`` waiting; beyond that a push is dropped with a log line), and
    fair, so that one target's slow pushes never delay another's:

    - a target (a host and port) gets one push at a time; consent asks go beside its messages
      (and fail at once while it is backed off: it would not answer them either);
    - a target that timed out waits a backoff (the push timeout, doubling with each further
      timeout, at most ``BACKOFF_MAX``) before its next push, and stays *slow* until it answers:
      healthy targets are served first, and slow ones hold at most half of the slots;
    - one host holds at most a quarter of the slots, so many tarpits on one address cannot take
      them all even before the first of them has timed out.
    """

    BACKOFF_MAX = 300.0

    def __init__(self, reactor, limit: int, backlog: int, timeout: float, max_answer: int):
        self.reactor = reactor
        self.timeout = timeout
        self.backlog = backlog
        self.max_answer = max_answer
        self.limit = max(1, limit)
        self.per_host = max(1, self.limit // 4)
        self.slow_share = max(1, self.limit // 2)
        self.dropped = 0  # since the backlog last filled up
        self._targets: dict[tuple[str, int], _Target] = {}
        # Jobs ready to start, healthy (False) and slow (True), by host in round-robin order.
        self._ready: dict[bool, collections.OrderedDict] = {False: collections.OrderedDict(),
                                                            True: collections.OrderedDict()}
        self._host_running: collections.Counter = collections.Counter()
        self._running = self._running_slow = self._waiting = 0
        self._pumping = False
        self._prune_at = backlog

    def push(self, host: str, port: int, payload: bytes, *, first_chunk=False, wait=None,
             beside=False) -> defer.Deferred:
        """Deferred[bytes]: the client's answer; PushFailed if none came in time."""
        if self._waiting >= self.backlog:
            if not self.dropped:
                log.warn("chat-room: {n} pushes waiting, dropping more until some are done", n=self.backlog)
            self.dropped += 1
            return defer.fail(PushDropped("too many pushes waiting"))
        if self.dropped:
            log.warn("chat-room: {n} pushes were dropped", n=self.dropped)
            self.dropped = 0
        target = self._targets.get((host, port))
        if target is None:
            target = self._targets[host, port] = _Target(host, port)
            if len(self._targets) > self._prune_at:
                self._prune()
        job = _Job(target, payload, first_chunk, wait or self.timeout, beside)
        if beside:
            if target.not_before > self.reactor.seconds():
                return defer.fail(PushFailed("the client did not answer lately"))
            self._make_ready(job)
        else:
            target.queue.append(job)
            self._release(target)
        self._waiting += 1
        self._pump()
        return job.result

    def stop(self):
        """The daemon stops: pushes still waiting fail, and no backoff timer outlives it."""
        waiting = [job for ready in self._ready.values() for jobs in ready.values() for job in jobs]
        for ready in self._ready.values():
            ready.clear()
        for target in self._targets.values():
            if target.wake is not None:
                target.wake.cancel()
                target.wake = None
            waiting += target.queue
            target.queue.clear()
        self._waiting = 0
        for job in waiting:
            job.result.errback(PushDropped("the daemon stops"))

    def _prune(self):
        """Forget targets with nothing to send whose backoff is over (bounded memory)."""
        now = self.reactor.seconds()
        for key in [key for key, t in self._targets.items() if t.idle and t.not_before <= now]:
            del self._targets[key]
        self._prune_at = max(2 * len(self._targets), self.backlog)

    # scheduling

    def _release(self, target: _Target):
        """Make the target's next push ready if it is its turn, else wait out its backoff."""
        if target.busy or not target.queue:
            return
        delay = target.not_before - self.reactor.seconds()
        if delay > 0:
            if target.wake is None:
                target.wake = self.reactor.callLater(delay, self._woken, target)
            return
        target.busy = True
        self._make_ready(target.queue.popleft())

    def _make_ready(self, job: _Job):
        job.slow = job.target.timeouts > 0
        self._ready[job.slow].setdefault(job.target.host, collections.deque()).append(job)

    def _woken(self, target: _Target):
        target.wake = None
        self._release(target)
        self._pump()

    def _pump(self):
        if self._pumping:
            return  # the loop below sees whatever was released meanwhile
        self._pumping = True
        try:
            while self._running < self.limit:
                job = self._take(slow=False)
                if job is None and self._running_slow < self.slow_share:
                    job = self._take(slow=True)
                if job is None:
                    break
                self._start(job)
        finally:
            self._pumping = False

    def _take(self, slow: bool) -> _Job | None:
        """The next ready job whose host has a slot left, taking hosts in turn."""
        ready = self._ready[slow]
        for host, jobs in ready.items():
            if self._host_running[host] >= self.per_host:
                continue  # at most limit // per_host hosts are full: this skips a few at most
            job = jobs.popleft()
            if jobs:
                ready.move_to_end(host)
            else:
                del ready[host]
            return job
        return None

    def _start(self, job: _Job):
        self._waiting -= 1
        self._running += 1
        self._running_slow += job.slow
        self._host_running[job.target.host] += 1
        defer.Deferred.fromCoroutine(self._push(job)).addBoth(self._finished, job)

    def _finished(self, outcome, job: _Job):
        target = job.target
        self._running -= 1
        self._running_slow -= job.slow
        self._host_running[target.host] -= 1
        if not self._host_running[target.host]:
            del self._host_running[target.host]
        if isinstance(outcome, Failure) and outcome.check(PushTimedOut):
            target.timeouts += 1
            backoff = min(self.timeout * 2 ** (target.timeouts - 1), self.BACKOFF_MAX)
            target.not_before = self.reactor.seconds() + backoff
        elif not isinstance(outcome, Failure):
            target.timeouts, target.not_before = 0, 0.0
        if not job.beside:
            target.busy = False
        job.result.callback(outcome) if not isinstance(outcome, Failure) else job.result.errback(outcome)
        self._release(target)  # after the caller's turn: it may have queued its next push
        if target.idle and not target.timeouts:
            self._targets.pop((target.host, target.port), None)
        self._pump()

    # one push

    async def _push(self, job: _Job) -> bytes:
        target = job.target
        endpoint_type = endpoints.TCP6ClientEndpoint if ":" in target.host else endpoints.TCP4ClientEndpoint
        endpoint = endpoint_type(self.reactor, target.host, target.port, timeout=self.timeout)
        client = PushClient(job.payload, job.first_chunk, self.max_answer)
        try:
            await endpoint.connect(OnePush(client)).addTimeout(self.timeout, self.reactor,
                                                               onTimeoutCancel=_connect_timed_out)
        except PushTimedOut:
            raise
        except Exception as exc:  # refused, unreachable: all the same to the caller
            raise PushFailed(f"cannot connect ({exc.__class__.__name__})") from None
        try:
            answer = await client.answer.addTimeout(job.wait, self.reactor)
        except defer.TimeoutError:
            client.transport.abortConnection()
            # A consent ask waits for a person: a slow one says nothing about the client.
            raise (PushFailed if job.beside else PushTimedOut)("no answer in time") from None
        client.transport.loseConnection()
        return answer


@attrs.define
class QueuedPush:
    payload: bytes
    message: Message | None = None  # a direct message, marked delivered once the client answers


@implementer(ISink)
class CallbackLogin:
    """A user logged in by the real client: lives until logout or the alive timeout; the
    service delivers to it, and its pushes go out one at a time, in order."""

    # Everyone's offline is pushed (render_push filters); a pushed direct message counts as
    # delivered once the client answers.
    subscribes = Subscription.PRESENCE | Subscription.DIRECT_PUSHED

    def __init__(self, factory: ChatroomFactory, host: str, port: int, wire, terminator: bytes,
                 on_admit: Callable[[], None]):
        self.factory = factory
        self.host = host
        self.port = port
        self.wire = wire
        self.terminator = terminator
        limits = factory.limits
        self.rate = TokenBucket(factory.clock, limits.messages_per_second, limits.message_burst)
        self._queue: collections.deque[QueuedPush] = collections.deque()
        self._sending = False
        self._stopped = False
        self._heard: set[int] | None = set()  # direct messages pushed before the waiting ones are
        self._on_admit = on_admit
        self.session: Session | None = None  # ChatService.log_in attaches it
        self._alive: IDelayedCall | None = None

    def admit(self, user) -> bool:
        """``ChatService.log_in`` asks once the credentials passed: the connection that asked
        for this login gives up its own, and this one takes the user's place on its port."""
        self._on_admit()
        self.factory.register_callback(user, self)
        return True

    def attached(self, session: Session):
        self.session = session
        self._alive = self.factory.clock.callLater(self.factory.alive_timeout, self._expired)

    @property
    def user(self) -> User:
        return self.session.user

    def deliver(self, event):
        if self._stopped:
            return
        payload = render_push(event, self.wire, self.user, self.factory.is_peer)
        if payload is not None:
            message = event.message if isinstance(event, events.DirectMessage) else None
            if message is not None and self._heard is not None:
                self._heard.add(message.id)
            self.enqueue(QueuedPush(payload, message))
        if isinstance(event, events.Kicked):
            self.end()

    def push_waiting(self, messages: list[Message]):
        """Push the messages that waited for this login (those not pushed live meanwhile)."""
        heard, self._heard = self._heard or set(), None
        for message in messages:
            if message.id not in heard:
                self.enqueue(QueuedPush(message_push(self.wire, message), message))

    def touch(self):
        if self._alive is not None and self._alive.active():
            self._alive.reset(self.factory.alive_timeout)

    def _expired(self):
        log.info("chat-room: {user} sent nothing for {s} s, logged out", user=self.user.username,
                 s=self.factory.alive_timeout)
        self.end()

    def end(self):
        """Log out (pushes already queued, such as a kill, still go out)."""
        self._stop_alive()
        self.factory.forget(self)

    def stop(self):
        """The daemon stops: no timer and no push outlives it."""
        self._stopped = True
        self._queue.clear()
        self._stop_alive()

    def _stop_alive(self):
        if self._alive is not None and self._alive.active():
            self._alive.cancel()

    def ask_consent(self, asker: User) -> defer.Deferred:
        """Deferred[bool | None]: whether the user agrees to give ``asker`` their address
        (None: no answer in time). It goes out beside the queue: messages do not wait for it."""
        payload = self.wire.encode({"type": "ip", "from": asker.username}) + self.terminator
        asking = self.factory.pusher.push(self.host, self.port, payload, first_chunk=not self.terminator,
                                          wait=self.factory.consent_timeout, beside=True)
        asking.addCallbacks(self._says_ok, self._push_failed)
        return asking

    @staticmethod
    def _says_ok(answer: bytes) -> bool:
        try:
            return wire_of(answer).decode(answer).get("result") == "ok"
        except NotARequest:
            return False

    def enqueue(self, push: QueuedPush):
        if len(self._queue) >= LOGIN_PUSH_BACKLOG:
            log.warn("chat-room: push to {user} dropped, {n} waiting", user=self.user.username,
                     n=len(self._queue))
            return
        self._queue.append(push)
        if not self._sending:
            self._send_next()

    def _send_next(self, _=None):
        if not self._queue or self._stopped:
            self._sending = False
            return
        self._sending = True
        push = self._queue.popleft()
        d = self.factory.pusher.push(self.host, self.port, push.payload + self.terminator,
                                     first_chunk=not self.terminator)
        d.addCallbacks(self._pushed, self._push_failed, callbackArgs=(push,))
        d.addBoth(self._send_next)

    def _pushed(self, answer, push: QueuedPush):
        if push.message is not None and not push.message.delivered and not self._stopped:
            marking = self.factory.service.mark_delivered(self.user, [push.message])
            marking.addErrback(lambda failure: log.failure("chat-room: cannot mark a message delivered",
                                                           failure))

    def _push_failed(self, failure) -> None:
        """Log why a push did not reach the client (a direct message stays waiting); None: no answer."""
        if failure.check(PushDropped):
            pass  # counted by the pusher
        elif failure.check(PushFailed):
            log.info("chat-room: push to {user} at {host}:{port} failed: {why}", user=self.user.username,
                     host=self.host, port=self.port, why=failure.getErrorMessage())
        else:
            log.failure("chat-room: push to {user} failed", failure, user=self.user.username)
        return None


# the connection


class UnterminatedRequest(bytes):
    """A request the client never ended with a newline: answered without one, then closed."""


class ChatroomConnection(ChatConnection):
    protocol_name = PROTOCOL
    error_table = ERRORS
    subscribes = Subscription.DIRECT | Subscription.PRESENCE  # render filters presence

    def __init__(self):
        super().__init__()
        self.wire = KeyValueWire  # of the request being answered, and of frame errors
        self.login_wire = JsonWire  # of this connection's login: its pushes
        self._auth_wire = JsonWire  # of the auth request being checked
        self._seen_newline = False
        self._settle = None
        self._alive = None
        self._after_reply: list[bytes] = []
        self._held: list[bytes] | None = None  # live pushes that wait behind an auth's reply
        self._close_after_reply = False
        self._unterminated = False

    def make_framer(self):
        return LineFramer(self.limits.max_line)

    def frame_error(self, error):
        return self.wire.encode({"result": error.reason})

    def internal_error(self):
        return self.wire.encode(FAIL)

    def render(self, event):
        if self.session is None:
            return None
        payload = render_push(event, self.login_wire, self.session.user, self.factory.is_peer)
        if payload is None:
            return None
        if self._held is not None and not isinstance(event, (events.Kicked, events.ServerShutdown)):
            self._held.append(self.framer.encode(payload))
            return None
        return self.framer.encode(payload)

    # unterminated requests (the real client)

    def dataReceived(self, data: bytes):
        self._seen_newline = self._seen_newline or b"\n" in data
        super().dataReceived(data)
        if self._settle is not None and self._settle.active():
            self._settle.cancel()
        if not self._seen_newline and not self._closing and self.framer.partial.strip():
            self._settle = self.clock.callLater(UNTERMINATED_SETTLE, self._take_unterminated)

    def _take_unterminated(self):
        partial = self.framer.partial
        if wire_of(partial) is JsonWire:
            try:
                JsonWire.decode(partial)
            except BadRequest:
                return  # an object still arriving: wait for the rest or the newline
        self.queue_frame(UnterminatedRequest(self.framer.take_rest()))

    def readConnectionLost(self):
        if self.framer.partial.strip():
            self.queue_frame(UnterminatedRequest(self.framer.take_rest()))
        super().readConnectionLost()

    def connectionLost(self, reason=protocol.connectionDone):
        if self._settle is not None and self._settle.active():
            self._settle.cancel()
        super().connectionLost(reason)

    # answering

    def handle(self, frame: bytes):
        self._unterminated = isinstance(frame, UnterminatedRequest)
        d = defer.Deferred.fromCoroutine(self._answer(frame))
        d.addCallback(self._send_answer, self._unterminated)
        d.addBoth(self._release_held)
        return d

    def _release_held(self, result):
        held, self._held = self._held or [], None
        for data in held:
            self.write_raw(data)
        return result

    def _send_answer(self, payload: bytes, unterminated: bool):
        if unterminated:
            self.write_raw(payload)
        else:
            self.write(payload)
        after, self._after_reply = self._after_reply, []
        for push in after:
            self.write(push)
        if unterminated or self._close_after_reply:
            self.close()

    async def _answer(self, frame: bytes) -> bytes:
        self.wire = wire = wire_of(frame)
        try:
            fields = wire.decode(frame)
        except NotARequest:
            return wire.invalid()
        kind = fields.get("type")
        if not isinstance(kind, str) or kind not in REQUESTS:
            return wire.invalid()
        try:
            reply = await getattr(self, f"do_{kind}")(wire, fields)
        except errors.ChatError as exc:
            reply = {"result": ERRORS.reply(exc)}
            if kind == "address":
                reply.update(NO_ADDRESS)
        return wire.encode(reply)

    @staticmethod
    def _field(fields: dict, name: str) -> str:
        value = fields.get(name)
        if value is None:
            raise BadRequest(f"missing {name}")
        if not isinstance(value, str):
            raise BadRequest(f"{name} must be a string")
        return value

    @staticmethod
    def _port(fields: dict) -> int | None:
        value = fields.get("port")
        if value is None:
            return None
        if isinstance(value, str) and value.isascii() and value.isdigit():
            value = int(value)
        if type(value) is not int or not 0 < value < 65536:
            raise BadRequest("port must be a number from 1 to 65535")
        return value

    def _caller(self, fields: dict) -> tuple[Session, TokenBucket, CallbackLogin | None]:
        """The session that may speak as ``from``: this connection's login, or the callback
        login of that user made from this peer's IP; anything else is refused."""
        name = self._field(fields, "from")
        if self.session is not None:
            if fold(name) != fold(self.session.user.username):
                raise errors.Denied(f"you are logged in as {self.session.user.username}")
            self._touch_alive()
            return self.session, self.rate, None
        login = self.factory.callback_login(name, self.peer_host)
        if login is None:
            raise errors.NotLoggedIn()
        login.touch()
        return login.session, login.rate, login

    # the alive timeout of a connection login

    def _touch_alive(self):
        if self._alive is not None and self._alive.active():
            self._alive.reset(self.factory.alive_timeout)

    def _alive_expired(self):
        self._alive = None
        self.write(self.login_wire.encode({"type": "kill", "reason": "no alive request in time"}))
        self.logout()
        self.close()

    def admit(self, user) -> bool:
        if not super().admit(user):
            return False
        self.login_wire = self._auth_wire  # live pushes render in the wire the client logs in with
        self._held = []  # and come after the reply and the messages that waited
        return True

    def logout(self):
        if self._alive is not None and self._alive.active():
            self._alive.cancel()
        self._alive = None
        user = self.session.user if self.session is not None else None
        super().logout()
        if user is not None:
            self.factory.forget_peers(user)

    # requests

    async def do_auth(self, wire, fields):
        username = self._field(fields, "username")
        password = self._field(fields, "password")
        port = self._port(fields)
        credentials = Password(username, password)
        try:
            if port is None:
                self._auth_wire = wire
                result = await self.log_in(credentials, waiting=True)
            else:
                terminator = b"" if self._unterminated else b"\n"
                login = CallbackLogin(self.factory, self.peer_host, port, wire, terminator, self.logout)
                result = await self.service.log_in(credentials, login, PROTOCOL, self.peer_host, waiting=True)
        except errors.BadCredentials:
            self._close_after_reply = self.login_failed()
            return FAIL
        user = result.user
        if port is None:
            session = result.session
            if session is None or self._closing:
                return FAIL  # the client left while we checked: the messages wait on
            self._alive = self.clock.callLater(self.factory.alive_timeout, self._alive_expired)
            self._after_reply = [message_push(wire, m) for m in result.waiting]
            await self.service.mark_delivered(user, result.waiting)
        else:
            session = result.session
            login.push_waiting(result.waiting)
        self.service.kick_others(session, KILL_REASON)
        await self.service.join_room(user, LOBBY)
        return OK

    async def do_message(self, wire, fields):
        session, rate, _ = self._caller(fields)
        to = self._field(fields, "to")
        body = self._field(fields, "msg")
        if not rate.allow():
            raise errors.RateLimited("slow down")
        recipient = self.service.user_or_guest(to)
        await self.service.send_direct(session.user, recipient, body, origin=session)
        if self.service.is_online(recipient):  # on any port: there it is shown, pushed or waits
            return OK
        return {"result": OFFLINE_NOTE.format(recipient.username)}

    async def do_broadcast(self, wire, fields):
        session, rate, _ = self._caller(fields)
        body = self._field(fields, "msg")
        if not rate.allow():
            raise errors.RateLimited("slow down")
        await self.service.join_room(session.user, LOBBY)  # a no-op unless it was left elsewhere
        await self.service.send_room(session.user, LOBBY, body, origin=session)
        return OK

    async def do_online(self, wire, fields):
        return {user.username: user.username for user in self.service.online_users()}

    async def do_block(self, wire, fields):
        session, _, _ = self._caller(fields)
        await self.service.block(session.user, self._field(fields, "target"))
        return OK

    async def do_unblock(self, wire, fields):
        session, _, _ = self._caller(fields)
        await self.service.unblock(session.user, self._field(fields, "target"))
        return OK

    async def do_logout(self, wire, fields):
        _, _, callback = self._caller(fields)
        if callback is None:
            self.logout()
        else:
            callback.end()
        return OK

    async def do_alive(self, wire, fields):
        self._caller(fields)
        return OK

    async def do_address(self, wire, fields):
        session, _, _ = self._caller(fields)
        target = self.service.user(self._field(fields, "target"))
        if self.service.has_blocked(target, session.user):
            raise errors.Blocked()
        login = self.factory.callbacks.get(target.id)
        if login is None:
            online = self.service.is_online(target)
            raise errors.Offline("the user has no address" if online else "the user is offline")
        agreed = await login.ask_consent(session.user)
        if agreed is None:
            return {**FAIL, **NO_ADDRESS}
        if not agreed:
            return {"result": "the user denied your request.", **NO_ADDRESS}
        self.factory.pair(session.user, target)
        return {"result": "ok", "ip": login.host, "port": str(login.port)}


REQUESTS = frozenset({"auth", "message", "broadcast", "online", "block", "unblock", "logout", "address",
                      "alive"})


@attrs.frozen
class ChatroomConfig:
    """Seed 001's options (``--alive-timeout``, ``--chatroom-*``): see ``chatserv.options``."""

    option_prefix: ClassVar[str] = "chatroom-"

    alive_timeout: float = option(60.0, "seed 001: seconds without a request before a login ends",
                                  name="alive-timeout")
    push_timeout: float = option(5.0, "seed 001: seconds to connect to a client, to answer")
    push_limit: int = option(32, "seed 001: outbound pushes at once")
    push_backlog: int = option(10000, "seed 001: pushes waiting before more are dropped")
    consent_timeout: float = option(30.0, "seed 001: seconds a user has to consent to `address`")


class ChatroomFactory(ChatFactory):
    protocol = ChatroomConnection
    config_class = ChatroomConfig

    def __init__(self, service, tracker, limits, clock, options=None):
        super().__init__(service, tracker, limits, clock, options)
        config = self.config
        self.alive_timeout = config.alive_timeout
        self.consent_timeout = config.consent_timeout
        self.pusher = Pusher(clock, config.push_limit, config.push_backlog, config.push_timeout,
                             limits.max_line)
        self.callbacks: dict[int, CallbackLogin] = {}
        self._peers: dict[int, set[int]] = collections.defaultdict(set)

    def register_callback(self, user, login: CallbackLogin):
        old = self.callbacks.get(user.id)
        if old is not None and (old.host, old.port) == (login.host, login.port):
            old.end()  # the same client logging in again: nobody to kill
        self.callbacks[user.id] = login

    def stopFactory(self):
        """The port stops with the daemon: callback logins end with it, without pushes."""
        logins, self.callbacks = list(self.callbacks.values()), {}
        for login in logins:
            login.stop()
        self.pusher.stop()
        for login in logins:
            self.service.detach(login.session)

    def callback_login(self, name, host) -> CallbackLogin | None:
        """The callback login of the user of that name, if it was made from ``host``."""
        try:
            login = self.callbacks.get(self.service.user(name).id)
        except errors.UserNotFound:
            return None
        return login if login is not None and login.host == host else None

    def forget(self, login: CallbackLogin):
        if self.callbacks.get(login.user.id) is login:
            del self.callbacks[login.user.id]
        self.service.detach(login.session)
        self.forget_peers(login.user)

    # address exchanges: who hears that whom went offline

    def pair(self, one: User, other: User):
        self._peers[one.id].add(other.id)
        self._peers[other.id].add(one.id)

    def is_peer(self, user: User, other: User) -> bool:
        paired = other.id in self._peers.get(user.id, ())
        return paired or self.service.contact_status(user, other) is not None

    def forget_peers(self, user: User):
        if self.service.is_online(user):
            return
        for other in self._peers.pop(user.id, ()):
            self._peers.get(other, set()).discard(user.id)

