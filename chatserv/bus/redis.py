"""The bus of several nodes: Redis pub/sub carries every event to every node of a cluster.

``RedisBus`` wraps the node's ``LocalBus``: ``publish`` hands the event to the sessions of
this node, then sends it (``chatserv.events.encode``, JSON) on one Redis channel; each other
node hands what arrives to its own local bus. Nodes share through Redis this channel and one
kind of key: the names users go by (``claim_name``), which a restart loses and each node makes
again on its next heartbeat.

Names (an IRC nick, a guest's name; a guest room's, as ``#`` and its name) are unique across
nodes: a node claims one atomically, ``SET chatserv:<channel>:nick:<folded name>
<node>:<user id> PX <ttl>`` unless another owner holds it (a Lua script), refreshes its claims
with its heartbeat and deletes one, if still its own, on release. A dead node's claims expire
with its presence (``ttl``).

Presence across nodes: each node says on the channel which users it has online (when one
comes or goes, and in full when a node asks, as it does on every (re)connection), and
heartbeats every ``ttl / 3`` seconds. A node not heard for ``ttl`` seconds is dead: its users
go offline everywhere (each node tells its own sessions). A user is online while any node has
them; a node hears "came online" only when the first node gets them, "went offline" when the
last loses them.

What only the domain can do (refresh a cache entry from the store when another node changed
it, deliver the messages missed while Redis was away) it does as ``observer``
(``chatserv.nodes.Replica``): ``remote(event, deliver)``, ``changed(kind, data)``, and
``refresh()`` then ``catch_up(after_id)`` once the channel is back after an outage.
"""

from __future__ import annotations

import collections
import json
import urllib.parse

import attrs
import txredisapi
from twisted.application import service
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import endpoints, protocol
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from chatserv import events
from chatserv.bus import Audience, IBus
from chatserv.model import Message
from chatserv.store.sql import IDS_OUT_OF_ORDER

log = Logger()

_MESSAGE_EVENTS = (events.RoomMessage, events.DirectMessage)

# How many recent message ids a node remembers having delivered: what arrives twice (a publish
# Redis queued during an outage, then the catch-up from the store) is dropped by id.
SEEN_WINDOW = 100_000
# How far below the newest message it saw a node reads the store after an outage: messages
# stored by two nodes reach a third in an order that may differ from their ids by this much
# (a batch, or a PostgreSQL writer's reserved block of ids).
CATCH_UP_MARGIN = IDS_OUT_OF_ORDER


# Claim a name: set it if nobody (or this owner) holds it, for ttl ms. 1: claimed, 0: held.
_CLAIM = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
# Release a name only if this owner still holds it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@attrs.frozen
class RedisURL:
    host: str
    port: int
    db: int
    channel: str

    @classmethod
    def parse(cls, url: str) -> RedisURL:
        """``redis://host:port/db`` (``?channel=name``: the channel, by default ``chatserv.<db>``:
        Redis pub/sub ignores the database number, so the channel carries it)."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "redis":
            raise ValueError(f"{url!r}: give 'local' or redis://host:port/db")
        try:
            db = int(parts.path.strip("/") or 0)
            port = parts.port or 6379
        except ValueError as e:
            raise ValueError(f"{url!r}: the port and database must be numbers") from e
        channel = urllib.parse.parse_qs(parts.query).get("channel", [f"chatserv.{db}"])[0]
        return cls(parts.hostname or "127.0.0.1", port, db, channel)


def check_bus(text: str) -> str:
    """``--bus`` as given, if it can be used; ValueError (a clear one) if not."""
    if text != "local":
        RedisURL.parse(text)
    return text


def _elsewhere(audience: Audience) -> list:
    """The audience as another node reads it: session ids are this node's, and mean nothing
    there (the origin session, which is skipped, is here)."""
    return [sorted(audience.users), audience.room, audience.presence_of, audience.skip_blockers_of]


def _audience(data: list) -> Audience:
    users, room, presence_of, skip_blockers_of = data
    return Audience(users=frozenset(users), room=room, presence_of=presence_of,
                    skip_blockers_of=skip_blockers_of)


# Messages, the bulk of the traffic, travel as positional lists (``m`` items): a third of
# the bytes of ``events.encode``'s dicts, and a third of the time to make.
_MESSAGE_FIELDS = [field.name for field in attrs.fields(Message)]


def _compact_message(event) -> list:
    message, sender = event.message, event.sender
    room = isinstance(event, events.RoomMessage)
    target = [event.room.id, event.room.name] if room else [event.recipient.id, event.recipient.username]
    return [room, [getattr(message, field) for field in _MESSAGE_FIELDS], [sender.id, sender.username],
            target, event.tags]


def _message_event(data: list):
    room, message, sender, target, tags = data
    if room:
        return events.RoomMessage(Message(*message), events.UserRef(*sender), events.RoomRef(*target), tags)
    return events.DirectMessage(Message(*message), events.UserRef(*sender), events.UserRef(*target), tags)


class _Listener(txredisapi.SubscriberProtocol):
    """The subscribed connection: every message on the channel goes to the bus."""

    def connectionMade(self):
        d = super().connectionMade()
        d.addCallback(lambda _: self.subscribe(self.bus.url.channel))
        d.addCallbacks(lambda _: self.bus._listening(self), self._refused)
        return d

    def _refused(self, failure):
        log.warn("redis bus: cannot subscribe: {why}", why=failure.getErrorMessage())
        self.transport.loseConnection()

    def messageReceived(self, pattern, channel, message):
        self.bus._received(message)

    def connectionLost(self, why):
        super().connectionLost(why)
        self.bus._lost(self)


class _Sender(txredisapi.RedisProtocol):
    def connectionMade(self):
        d = super().connectionMade()
        d.addCallback(lambda _: self.bus._sending(self))
        return d

    def connectionLost(self, why):
        super().connectionLost(why)
        self.bus._sending(None)


class _Factory(protocol.Factory):
    noisy = False

    def __init__(self, bus, kind):
        self.bus, self.kind = bus, kind

    def buildProtocol(self, addr):
        proto = self.kind(charset=None, dbid=None, convertNumbers=False, replyTimeout=None)
        proto.factory, proto.bus = self, self.bus
        return proto


@implementer(IBus)
class RedisBus(service.MultiService):
    def __init__(self, local, url: str, node: str, reactor, ttl: float = 30.0):
        super().__init__()
        self.local = local
        self.url = RedisURL.parse(url)
        self.node = node
        self.clock = reactor
        self.ttl = ttl
        self.observer = None  # chatserv.nodes.Replica
        self.up = False  # subscribed
        self._connected_before = False
        self._sender = None
        self._listener = None
        self._outbox: list = []  # items for the channel, sent at the end of this reactor turn
        self._remote: dict[str, dict[int, tuple[events.UserRef, str]]] = {}  # node -> its users
        self._heard: dict[str, float] = {}  # node -> when it was last heard
        self._seen: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._newest_seen = 0
        self._names: dict[str, str] = {}  # folded name -> owner ("node:user id"): this node's claims
        self.stats = collections.Counter()
        endpoint = endpoints.TCP4ClientEndpoint(reactor, self.url.host, self.url.port, timeout=5)
        retry = backoffPolicy(initialDelay=0.2, maxDelay=2.0)
        ClientService(endpoint, _Factory(self, _Listener), retryPolicy=retry).setServiceParent(self)
        ClientService(endpoint, _Factory(self, _Sender), retryPolicy=retry).setServiceParent(self)
        self._beat = LoopingCall(self._heartbeat)
        self._beat.clock = reactor

    def startService(self):
        super().startService()
        self._beat.start(self.ttl / 3, now=False)

    def stopService(self):
        if self._beat.running:
            self._beat.stop()
        for key, owner in list(self._names.items()):
            self._redis_name(_RELEASE, key, owner)
        self._names.clear()
        self._send("bye", None)
        self._flush()
        return super().stopService()

    # IBus: what concerns this node's sessions is the local bus's

    def subscribe(self, session):
        self.local.subscribe(session)

    def unsubscribe(self, session):
        self.local.unsubscribe(session)

    def watch_presence(self, session, user_ids):
        self.local.watch_presence(session, user_ids)

    def unwatch(self, user_id):
        self.local.unwatch(user_id)

    def sessions_of(self, user_id):
        return self.local.sessions_of(user_id)

    def is_online(self, user_id: int) -> bool:
        return bool(self.local.sessions_of(user_id)) or self._remote_node_of(user_id) is not None

    def users_online(self):
        found = dict.fromkeys(self.local.users_online())
        for users in self._remote.values():
            found.update(dict.fromkeys(users))
        return found.keys()

    def remote_user(self, user_id: int) -> events.UserRef | None:
        """Who ``user_id`` is, if another node has them online (a guest this node never saw)."""
        node = self._remote_node_of(user_id)
        return self._remote[node][user_id][0] if node is not None else None

    def names_elsewhere(self):
        for users in self._remote.values():
            for ref, _ in users.values():
                yield ref

    def protocols_elsewhere(self, user_id: int):
        return [users[user_id][1] for users in self._remote.values() if user_id in users]

    def renamed(self, user: events.UserRef) -> None:
        """A guest on another node goes by a new name."""
        for users in self._remote.values():
            if user.id in users:
                users[user.id] = (user, users[user.id][1])

    def start_from(self, newest_message_id: int) -> None:
        """The newest message stored when this node started: a catch-up never reads below it."""
        self._newest_seen = max(self._newest_seen, newest_message_id)

    def _remote_node_of(self, user_id: int) -> str | None:
        for node, users in self._remote.items():
            if user_id in users:
                return node
        return None

    def publish(self, event, audience: Audience) -> int:
        if isinstance(event, events.PresenceChanged):
            return self._local_presence(event, audience)
        self._note_seen(event)
        delivered = self.local.publish(event, audience)
        if audience.sessions:
            return delivered
        if type(event) in _MESSAGE_EVENTS:
            self._send("m", [_compact_message(event), _elsewhere(audience)])
        else:
            self._send("e", [events.encode(event), _elsewhere(audience)])
        return delivered

    def claim_name(self, key: str, user_id: int) -> Deferred:
        owner = f"{self.node}:{user_id}"
        claimed = self._redis_name(_CLAIM, key, owner)
        if claimed is None:  # Redis is away: this node's own check is all there is meanwhile
            self._names[key] = owner
            return succeed(True)

        def answered(won):
            if won:
                self._names[key] = owner
            return bool(won)

        return claimed.addCallback(answered)

    def release_name(self, key: str, user_id: int) -> None:
        owner = f"{self.node}:{user_id}"
        if self._names.get(key) == owner:
            del self._names[key]
            self._redis_name(_RELEASE, key, owner)

    def _redis_name(self, script: str, key: str, owner: str) -> Deferred | None:
        """Run a name script; None if Redis is away (its answer is 1, if it goes away meanwhile)."""
        if self._sender is None:
            return None
        args = [owner, int(self.ttl * 1000)] if script is _CLAIM else [owner]
        try:
            d = self._sender.eval(script, [f"chatserv:{self.url.channel}:nick:{key}"], args)
        except txredisapi.ConnectionError:
            return None
        return d.addErrback(self._name_unanswered, key)

    def _name_unanswered(self, failure, key):
        failure.trap(txredisapi.ConnectionError, txredisapi.ResponseError)
        if self.running:  # not the releases a stopping node sends as its connections close
            log.warn("redis bus: no answer for the name {key}: {why}", key=key,
                     why=failure.getErrorMessage())
        return 1

    def _refresh_names(self) -> None:
        """Claims live a ttl: renew this node's (and make them again after a Redis restart)."""
        for key, owner in list(self._names.items()):
            claimed = self._redis_name(_CLAIM, key, owner)
            if claimed is not None:
                claimed.addCallback(self._still_held, key, owner)

    def _still_held(self, won, key, owner):
        if not won and self._names.get(key) == owner:
            log.warn("redis bus: the name {key} was taken elsewhere while Redis was away", key=key)

    def notify(self, kind: str, data) -> None:
        """Tell the other nodes that something they cache changed (``observer.changed``)."""
        self._send("c", [kind, data])

    def _local_presence(self, event, audience) -> int:
        """This node's first (or last) session of a user: others hear of it only if no other
        node has them."""
        self._send("e", [events.encode(event), _elsewhere(audience)])
        if self._remote_node_of(event.user.id) is not None:
            return 0
        return self.local.publish(event, audience)

    # the channel

    def _send(self, kind: str, data) -> None:
        """Queue one item for the channel: what one reactor turn queued goes as one message,
        so that a busy node pays Redis's per-message costs (here and in every receiver) once
        per turn rather than once per event."""
        if self._sender is None:
            self.stats["unsent"] += 1  # the catch-up (and a full resync) covers it
            return
        self._outbox.append([kind, data])
        if len(self._outbox) == 1:
            self.clock.callLater(0, self._flush)

    def _flush(self) -> None:
        items, self._outbox = self._outbox, []
        if not items:
            return
        if self._sender is None:
            self.stats["unsent"] += len(items)
            return
        payload = json.dumps([self.node, items], separators=(",", ":"), ensure_ascii=False)
        try:
            sent = self._sender.publish(self.url.channel, payload.encode())
        except txredisapi.ConnectionError:
            self.stats["unsent"] += len(items)
            return
        self.stats["published"] += 1
        sent.addErrback(self._unsent, len(items))

    def _unsent(self, failure, count):
        self.stats["unsent"] += count

    def _sending(self, sender):
        self._sender = sender
        if sender is not None and self._listener is not None:
            self._resync()

    def _listening(self, listener):
        self._listener = listener
        log.info("redis bus: node {node} on {host}:{port} channel {channel}", node=self.node,
                 host=self.url.host, port=self.url.port, channel=self.url.channel)
        if self._sender is not None:
            self._resync()

    def _lost(self, listener):
        if self._listener is listener:
            self._listener = None
            if self.up and self.running:
                log.warn("redis bus: lost; serving this node's users until it is back")
            self.up = False

    def _resync(self):
        """Back on the channel: say who is here, ask who is elsewhere, then deliver what was
        stored while the channel was away."""
        now = self.clock.seconds()
        for node in self._heard:
            self._heard[node] = now  # a grace of one ttl to answer
        self._send("hello", self._online_here())
        if self._connected_before:
            self._catch_up(refresh=True)
        self._connected_before = self.up = True

    def _catch_up(self, refresh: bool):
        """Deliver what the store has that this node has not: messages another node stored
        while the channel was away, for this node or for the other (each is delivered once).
        ``refresh``: this node was away: first read again what it caches."""
        if self.observer is None:
            return
        floor = self._seen_floor()
        if refresh:
            self.observer.refresh().addCallback(lambda _: self.observer.catch_up(floor))
        else:
            self.observer.catch_up(floor)

    def _online_here(self) -> list:
        here = []
        for user_id in self.local.users_online():
            session = self.local.sessions_of(user_id)[0]
            here.append([user_id, session.user.username, session.protocol])
        return here

    def _received(self, payload: bytes) -> None:
        try:
            node, items = json.loads(payload)
        except (ValueError, TypeError):
            log.warn("redis bus: dropped a message that is not ours")
            return
        if node == self.node:
            return
        self._heard[node] = self.clock.seconds()
        for kind, data in items:
            handler = getattr(self, f"_on_{kind}", None)
            if handler is None:
                continue
            try:
                handler(node, data)
            except (KeyError, TypeError, ValueError) as e:
                log.warn("redis bus: dropped an item {kind} from {node}: {why!r}", kind=kind, node=node,
                         why=e)

    def _on_m(self, node, data):
        self._on_event(node, _message_event(data[0]), _audience(data[1]))

    def _on_e(self, node, data):
        self._on_event(node, events.decode(data[0]), _audience(data[1]))

    def _on_event(self, node, event, audience):
        if isinstance(event, events.PresenceChanged):
            self._remote_presence(node, event, audience)
            return
        if self._note_seen(event) is False:
            return
        self.stats["received"] += 1
        self._deliver_here(event, audience)

    def _deliver_here(self, event, audience):
        """Hand another node's event to this node's sessions, through the observer (the node's
        caches) when there is one, so it can bring them up to date first."""

        def deliver():
            return self.local.publish(event, audience)

        if self.observer is not None:
            self.observer.remote(event, deliver)
        else:
            deliver()

    def _on_c(self, node, data):
        if self.observer is not None:
            self.observer.changed(*data)

    def _on_hb(self, node, data):
        if node not in self._remote:  # a node that came up while we were away from the channel
            self._send("who", node)

    def _on_who(self, node, data):
        if data == self.node:
            self._send("here", self._online_here())

    def _on_hello(self, node, data):
        """A node (re)joined the channel: what it sent while it was away is in the store."""
        self._on_here(node, data)
        self._send("here", self._online_here())
        if self._connected_before:
            self._catch_up(refresh=False)

    def _on_here(self, node, data):
        """A node's full list of users: whoever it no longer has went offline there."""
        before = self._remote.get(node, {})
        now = {user_id: (events.UserRef(user_id, name), proto) for user_id, name, proto in data}
        for user_id, (ref, proto) in now.items():
            if user_id not in before:
                self._presence_on(node, ref, proto, True, "")
        for user_id, (ref, proto) in list(before.items()):
            if user_id not in now:
                self._presence_on(node, ref, proto, False, "")
        self._remote.setdefault(node, {})

    def _on_bye(self, node, data):
        self._drop_node(node, "")

    def _remote_presence(self, node, event, audience):
        self._presence_on(node, event.user, event.protocol, event.online, event.reason,
                          event=event, audience=audience)

    def _presence_on(self, node, user, proto, online, reason, event=None, audience=None):
        """Whether ``user`` is on ``node`` changed: this node's sessions hear of it if that
        changes whether the user is online anywhere."""
        was = self.is_online(user.id)
        users = self._remote.setdefault(node, {})
        if online:
            users[user.id] = (user, proto)
        else:
            users.pop(user.id, None)
        if was == self.is_online(user.id):
            return
        if event is None:
            event = events.PresenceChanged(user, online, proto, reason)
            audience = Audience(presence_of=user.id)
        self._deliver_here(event, audience)

    def _drop_node(self, node, reason):
        users = self._remote.get(node, {})
        for ref, proto in list(users.values()):
            self._presence_on(node, ref, proto, False, reason)
        self._remote.pop(node, None)
        self._heard.pop(node, None)

    def _heartbeat(self):
        self._send("hb", None)
        self._refresh_names()
        if self._listener is None:
            return  # we cannot hear anyone: nobody is declared dead for it
        deadline = self.clock.seconds() - self.ttl
        for node, heard in list(self._heard.items()):
            if heard < deadline:
                log.warn("redis bus: node {node} not heard for {ttl}s: its users go offline",
                         node=node, ttl=self.ttl)
                self._drop_node(node, "Node lost")

    # messages: each delivered once on this node

    def _note_seen(self, event) -> bool | None:
        """For a message event: False if it was delivered here already, else True (now
        remembered); None for any other event."""
        message = getattr(event, "message", None)
        if message is None:
            return None
        fresh = self.seen(message.id)
        if not fresh:
            self.stats["duplicates"] += 1
        return fresh

    def seen(self, message_id: int) -> bool:
        """Remember a message as delivered here; False if it was already."""
        if message_id in self._seen:
            return False
        self._seen[message_id] = None
        if len(self._seen) > SEEN_WINDOW:
            self._seen.popitem(last=False)
        self._newest_seen = max(self._newest_seen, message_id)
        return True

    def _seen_floor(self) -> int:
        """The id after which the catch-up reads the store: the oldest message this node still
        remembers, so that none stored out of order before the outage is missed."""
        oldest = next(iter(self._seen), self._newest_seen + 1)
        return max(oldest, self._newest_seen - CATCH_UP_MARGIN) - 1
