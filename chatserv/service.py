"""ChatService: the facade over the domain, which is split by concern in ``chatserv.domain``:
accounts, contacts, rooms (and their settings), messages, presence and the one login path.

It knows no wire format. Protocols call it with a logged-in ``Session`` (or a ``User``) and
get Deferreds back; live events go out through one seam, ``self.bus.publish(event, audience)``
(``chatserv.bus``), which hands them to the sinks that subscribed. The small
tables live in memory here and are written through to the store; every change is durable
before the Deferred that reports it fires, and a message is stored before anyone sees it.
"""

from __future__ import annotations

import collections

from prometheus_client import Histogram
from twisted.application import service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from chatserv import errors
from chatserv.bus import IBus
from chatserv.bus.local import LocalBus
from chatserv.credentials import Hasher
from chatserv.domain.accounts import RESERVED_NAMES, Accounts
from chatserv.domain.common import ISink, deferred, keepable
from chatserv.domain.contacts import Contacts
from chatserv.domain.login import Login
from chatserv.domain.messages import UNREAD_CAP, Messages
from chatserv.domain.presence import Presence
from chatserv.domain.room_settings import RoomSettings
from chatserv.domain.rooms import Rooms
from chatserv.limits import Limits
from chatserv.model import Session

log = Logger()

__all__ = ["ChatService", "ISink", "RESERVED_NAMES", "Session", "UNREAD_CAP", "deferred", "keepable"]


class _Directory:
    """What the bus asks the domain to resolve an audience (``chatserv.bus.IDirectory``)."""

    def __init__(self, service: ChatService):
        self._service = service
        self._cache = service.contacts_cache

    def room_members(self, room_id):
        room = self._service._rooms_by_id.get(room_id)
        return room.members if room is not None else ()

    def rooms_of(self, user_id):
        return [room.id for room in self._service._rooms_of.get(user_id, ())]

    def contact_owners(self, user_id):
        return self._cache.owners_of(user_id)

    def blockers_of(self, user_id):
        return self._cache.blockers_of(user_id)


class ChatService(Accounts, Contacts, Rooms, RoomSettings, Messages, Presence, Login, service.Service):
    node_name = ""  # which node of a cluster this is (--node-name), for logs and metrics

    def __init__(self, store, hasher: Hasher, clock, limits: Limits | None = None, bus: IBus | None = None):
        self.store = store
        self.hasher = hasher
        self.clock = clock
        self.limits = limits or Limits()
        self.stats = collections.Counter()
        # Unregistered: the web port's /metrics registry adds it.
        self.delivery_latency = Histogram(
            "chatserv_delivery_latency_seconds",
            "Seconds from a message's arrival to its hand-over to the recipients' live sessions "
            "(storing it included)", registry=None)
        self._ready: Deferred | None = None
        self._waiting: list[Deferred] = []
        self._init_accounts()
        self._init_contacts()
        self._init_rooms()
        self._init_room_settings()
        self._init_messages()
        self._init_presence()
        self.bus = bus if bus is not None else LocalBus(_Directory(self))

    # life cycle

    def startService(self):
        super().startService()
        opening = self._ready = self.store.open()
        opening.addCallback(self._load)
        opening.addErrback(self._failed_open)

    def _load(self, snapshot):
        self._load_accounts(snapshot)
        self._load_contacts(snapshot)
        d = self._load_rooms(snapshot) or succeed(None)
        d.addCallback(self._release_waiters, None)
        return d

    def _failed_open(self, failure):
        if failure.check(errors.StoreUnavailable):  # not a bug: one line says where and why
            log.critical("cannot open the store: {why}", why=failure.getErrorMessage())
        else:
            log.failure("cannot open the store", failure)
        self._release_waiters(None, failure)

    def _release_waiters(self, _, failure):
        self._ready = failure or True
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(failure) if failure else d.callback(self)

    def when_ready(self) -> Deferred:
        """A Deferred firing with the service once the store is loaded."""
        if self._ready is True:
            return succeed(self)
        d = Deferred()
        if self._ready is None or isinstance(self._ready, Deferred):
            self._waiting.append(d)
        else:
            d.errback(self._ready)
        return d

    def stopService(self):
        super().stopService()
        return self.store.close()
