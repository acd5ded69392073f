"""The bus of one process: events reach the sinks of this node's sessions.

It keeps which sessions this node has, by user, and who subscribed to what; the domain
(``IDirectory``) answers who is in a room or keeps whom as a contact. A room message is
handed to each member's sessions in one pass: the fan-out hot path.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable

from twisted.internet.defer import succeed
from zope.interface import implementer

from chatserv import events
from chatserv.bus import HEARS_DIRECT, Audience, IBus, IDirectory, Subscription

# Events only sinks that subscribed to them hear; every other event reaches whoever the
# audience names.
_SUBSCRIBED = {events.DirectMessage: HEARS_DIRECT}


@implementer(IBus)
class LocalBus:
    def __init__(self, directory: IDirectory):
        self.directory = directory
        self._sessions: dict[int, list] = {}  # user id -> that user's sessions, in login order
        self._by_id: dict[int, object] = {}
        self._hear_everyone: set = set()  # sessions subscribed to everyone's presence
        self._watchers: dict[int, set] = collections.defaultdict(set)  # user id -> sessions watching
        self._watching: dict[object, set[int]] = {}

    # subscriptions

    def subscribe(self, session) -> None:
        self._sessions.setdefault(session.user.id, []).append(session)
        self._by_id[session.id] = session
        if session.subscribes & Subscription.PRESENCE:
            self._hear_everyone.add(session)

    def unsubscribe(self, session) -> None:
        sessions = self._sessions.get(session.user.id)
        if sessions is None or session not in sessions:
            return
        sessions.remove(session)
        if not sessions:
            del self._sessions[session.user.id]
        self._by_id.pop(session.id, None)
        self._hear_everyone.discard(session)
        for user_id in self._watching.pop(session, ()):
            self._watchers[user_id].discard(session)
            if not self._watchers[user_id]:
                del self._watchers[user_id]

    def watch_presence(self, session, user_ids: Iterable[int]) -> None:
        if self._by_id.get(session.id) is not session:
            return
        watching = self._watching.setdefault(session, set())
        for user_id in user_ids:
            watching.add(user_id)
            self._watchers[user_id].add(session)

    def unwatch(self, user_id: int) -> None:
        for session in self._watchers.pop(user_id, ()):
            self._watching.get(session, set()).discard(user_id)

    def sessions_of(self, user_id: int) -> list:
        return self._sessions.get(user_id, [])

    def users_online(self) -> Iterable[int]:
        return self._sessions.keys()

    def is_online(self, user_id: int) -> bool:
        return user_id in self._sessions

    # one node: nobody elsewhere, nothing to tell

    def remote_user(self, user_id: int):
        return None

    def names_elsewhere(self) -> Iterable:
        return ()

    def protocols_elsewhere(self, user_id: int) -> Iterable[str]:
        return ()

    def claim_name(self, key: str, user_id: int):
        """The domain's own check (its names in memory) is the whole truth on one node."""
        return succeed(True)

    def release_name(self, key: str, user_id: int) -> None:
        pass

    def notify(self, kind: str, data) -> None:
        pass

    # delivery

    def publish(self, event, audience: Audience) -> int:
        wanted = _SUBSCRIBED.get(type(event))
        if audience.room is not None and not (audience.users or audience.presence_of is not None
                                              or audience.sessions):
            return self._to_room(event, audience, wanted)
        chosen = self._resolve(audience)
        delivered = 0
        for session in chosen:
            if wanted is None or session.subscribes & wanted:
                session.sink.deliver(event)
                delivered += 1
        return delivered

    def _to_room(self, event, audience: Audience, wanted) -> int:
        """The fan-out hot path: each member's sessions, once, without building a set."""
        sessions = self._sessions
        skipped = self._by_id.get(audience.skip_session)
        blocked = audience.skip_blockers_of
        blockers = self.directory.blockers_of(blocked) if blocked is not None else ()
        delivered = 0
        for user_id in self.directory.room_members(audience.room):
            if user_id in blockers:
                continue
            for session in sessions.get(user_id, ()):
                if session is not skipped and (wanted is None or session.subscribes & wanted):
                    session.sink.deliver(event)
                    delivered += 1
        return delivered

    def _resolve(self, audience: Audience) -> list:
        """The sessions of this node ``audience`` names, each once, in a stable order."""
        directory, sessions = self.directory, self._sessions
        user_ids: list[int] = list(audience.users)
        if audience.room is not None:
            user_ids += directory.room_members(audience.room)
        chosen: dict = {}
        for user_id in user_ids:
            for session in sessions.get(user_id, ()):
                chosen[session] = None
        for session_id in audience.sessions:
            session = self._by_id.get(session_id)
            if session is not None:
                chosen[session] = None
        subject = audience.presence_of
        if subject is not None:
            for session in self._hear_everyone:
                chosen[session] = None
            for session in self._watchers.get(subject, ()):
                chosen[session] = None
            for owner in directory.contact_owners(subject):
                for session in sessions.get(owner, ()):
                    chosen[session] = None
            for room_id in directory.rooms_of(subject):
                for user_id in directory.room_members(room_id):
                    for session in sessions.get(user_id, ()):
                        if session.subscribes & Subscription.ROOM_PRESENCE:
                            chosen[session] = None
        if audience.skip_blockers_of is not None:
            blockers = directory.blockers_of(audience.skip_blockers_of)
            for session in [s for s in chosen if s.user.id in blockers]:
                del chosen[session]
        skipped = self._by_id.get(audience.skip_session) if audience.skip_session is not None else None
        chosen.pop(skipped, None)
        return list(chosen)
