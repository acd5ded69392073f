"""The publish seam (chatserv.bus): events are plain values that survive a trip through JSON,
audiences name people and rooms rather than this process's sessions, and a sink hears only
what it subscribed to."""

import ast
import json
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from chatserv import events
from chatserv.bus import Audience, Subscription, to_room, to_users
from chatserv.bus.local import LocalBus
from chatserv.model import Message, Room, RoomChange, Session, User
from chatserv.service import ChatService
from chatserv.store.memory import MemoryStore
from tests.support import cheap_hasher

ALICE = User(1, "alice", "12345678901234567890123456789012", "$argon2id$secret-verifier", 0.0)
BOB = User(-7, "bob", "", None, 0.0)
ROOM = Room(3, "lobby", None, 0.0, topic="hello", members={1, -7})
TEXT = Message(11, 1, "alice", "hi", 12.5, "action", room_id=3)
DIRECT = Message(12, 1, "alice", "psst", 13.0, recipient_id=-7, delivered=True)

EXAMPLES = [
    events.DirectMessage(DIRECT, ALICE, BOB, {"+draft/reply": "9"}),
    events.RoomMessage(TEXT, ALICE, ROOM),
    events.PresenceChanged(BOB, False, "irc", "Quit: bye", renamed_from=ALICE),
    events.Renamed(ALICE, "alice_", before=BOB),
    events.Typing(ALICE, True, room=ROOM, tags={"+typing": "active"}),
    events.Tagged(ALICE, {"+react": "x"}, recipient=BOB),
    events.ContactChanged(ALICE, BOB, "blocked", "friend"),
    events.ReadMarked(ALICE, 12, peer=BOB),
    events.MembershipChanged(ROOM, BOB, False, by=ALICE, reason="out"),
    events.RoomChanged(ROOM, ALICE, (RoomChange("operator", True, user=BOB), RoomChange("ban", mask="x!*@*"),
                                     RoomChange("limit", 5))),
    events.Invited(ROOM, ALICE, BOB),
    events.TopicChanged(ROOM, ALICE, "hello"),
    events.Kicked("logged in elsewhere"),
    events.ServerShutdown(),
]


def test_every_event_type_has_an_example():
    assert {type(e).__name__ for e in EXAMPLES} == set(events.EVENT_TYPES)


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: type(e).__name__)
def test_an_event_survives_a_trip_through_json(event):
    data = json.loads(json.dumps(events.encode(event)))
    back = events.decode(data)
    assert type(back) is type(event)
    assert events.encode(back) == events.encode(event)
    assert ALICE.salt not in json.dumps(data) and ALICE.verifier not in json.dumps(data)


def test_an_event_names_people_and_rooms_by_id_and_name_only():
    event = events.RoomMessage(TEXT, ALICE, ROOM)
    assert event.sender == events.UserRef(1, "alice") and event.room == events.RoomRef(3, "lobby")
    assert not hasattr(event.sender, "salt") and not hasattr(event.room, "members")
    assert events.UserRef.of(BOB).guest


def test_an_audience_survives_a_trip_through_json():
    for audience in (to_users(1, 2, skip_session=5), to_room(3, skip_blockers_of=1),
                     Audience(presence_of=4, sessions=frozenset({8, 9}))):
        assert Audience.decode(json.loads(json.dumps(audience.encode()))) == audience


class Directory:
    def __init__(self):
        self.rooms = {3: {1, 2}, 4: {2, 3}}
        self.owners = {1: {5}}
        self.blockers = {1: {2}}

    def room_members(self, room_id):
        return self.rooms.get(room_id, ())

    def rooms_of(self, user_id):
        return [rid for rid, members in self.rooms.items() if user_id in members]

    def contact_owners(self, user_id):
        return self.owners.get(user_id, ())

    def blockers_of(self, user_id):
        return self.blockers.get(user_id, ())


class Sink:
    def __init__(self):
        self.events = []

    def deliver(self, event):
        self.events.append(event)


def subscribed(bus, session_id, user_id, subscribes=Subscription.DIRECT):
    sink = Sink()
    user = User(user_id, f"u{user_id}", "", None, 0.0)
    bus.subscribe(Session(session_id, user, "test", "", sink, subscribes))
    return sink


def test_a_sink_hears_only_what_it_subscribed_to():
    bus = LocalBus(Directory())
    live = subscribed(bus, 1, 2)
    inbox_only = subscribed(bus, 2, 2, Subscription.NONE)
    pushed = subscribed(bus, 3, 2, Subscription.DIRECT_PUSHED)
    assert bus.publish(events.DirectMessage(DIRECT, ALICE, BOB), to_users(2)) == 2
    assert (len(live.events), len(inbox_only.events), len(pushed.events)) == (1, 0, 1)
    assert bus.publish(events.Typing(ALICE, True, recipient=BOB), to_users(2)) == 3


def test_presence_reaches_contacts_room_mates_that_subscribed_and_everyone_listeners():
    bus = LocalBus(Directory())
    owner = subscribed(bus, 1, 5)  # keeps user 1 as a contact
    mate = subscribed(bus, 2, 2, Subscription.ROOM_PRESENCE)  # shares room 3 with user 1
    mate_unsubscribed = subscribed(bus, 3, 2)
    stranger = subscribed(bus, 4, 3, Subscription.ROOM_PRESENCE)  # in room 4 only
    everyone = subscribed(bus, 5, 9, Subscription.PRESENCE)
    watcher = subscribed(bus, 6, 8)
    bus.watch_presence(bus.sessions_of(8)[0], [1])
    origin = subscribed(bus, 7, 1, Subscription.PRESENCE)
    bus.publish(events.PresenceChanged(ALICE, True, "test"), Audience(presence_of=1, skip_session=7))
    heard = [len(s.events) for s in (owner, mate, mate_unsubscribed, stranger, everyone, watcher, origin)]
    assert heard == [1, 1, 0, 0, 1, 1, 0]


def test_a_room_message_skips_the_origin_and_those_who_blocked_the_sender():
    bus = LocalBus(Directory())
    origin, blocker, member = subscribed(bus, 1, 1), subscribed(bus, 2, 2), subscribed(bus, 3, 1)
    outsider = subscribed(bus, 4, 3)
    audience = to_room(3, skip_session=1, skip_blockers_of=1)
    assert bus.publish(events.RoomMessage(TEXT, ALICE, ROOM), audience) == 1
    assert [len(s.events) for s in (origin, blocker, member, outsider)] == [0, 0, 1, 0]


@pytest_twisted.ensureDeferred
async def test_everything_the_service_says_goes_through_publish_as_plain_values():
    chat = ChatService(MemoryStore(), cheap_hasher(), reactor)
    chat.startService()
    await chat.when_ready()
    published = []
    real = chat.bus.publish

    def publish(event, audience):
        data = json.dumps(events.encode(event)), json.dumps(audience.encode())
        published.append((type(event).__name__, *data))
        return real(event, audience)

    chat.bus.publish = publish
    alice = await chat.register("alice", "pw")
    bob = await chat.register("bob", "pw")
    session = chat.attach(alice, Sink(), "test")
    chat.attach(bob, Sink(), "test")
    await chat.join_room(alice, "lobby")
    await chat.send_room(alice, "lobby", "hello")
    await chat.send_direct(alice, "bob", "psst")
    await chat.add_contact(alice, "bob")
    chat.kick_others(chat.attach(alice, Sink(), "test"), "again")
    chat.detach(session)
    kinds = [kind for kind, _, _ in published]
    assert kinds == ["PresenceChanged", "PresenceChanged", "MembershipChanged", "RoomMessage",
                     "DirectMessage", "ContactChanged", "Kicked"]
    assert all(alice.salt not in data and alice.verifier not in data for _, data, _ in published)
    await chat.stopService()


def test_the_service_hands_events_to_sinks_only_through_the_bus():
    source = Path(__file__).resolve().parent.parent / "chatserv" / "service.py"
    calls = [node.lineno for node in ast.walk(ast.parse(source.read_text()))
             if isinstance(node, ast.Attribute) and node.attr == "deliver"]
    assert calls == []
