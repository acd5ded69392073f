"""IRC channels, modes, operators and server queries, through real IRC clients where one exists.

Twisted's ``IRCClient`` parses MODE lines with the CHANMODES and PREFIX the server advertises,
so a wrong 005 shows as a wrong mode change; the ``irc`` package names each refusal numeric.
Raw lines where the bytes are the point.
"""

import time

import argon2
import irc.client
import pytest
import pytest_twisted
from twisted.internet import endpoints, reactor, threads
from twisted.python import usage

from chatserv import errors
from chatserv.credentials import LoginThrottle
from chatserv.limits import Limits
from chatserv.model import RoomBan, RoomChange
from chatserv.protocols.irc.connection import IRCConfig
from chatserv.protocols.irc.modes import ban_mask, mode_lines
from chatserv.protocols.irc.operators import OperatorBook
from chatserv.service import ChatService
from chatserv.store import open_store
from chatserv.tap import Options
from tests.support import TIMEOUT, Daemon, InstantHasher, cheap_hasher
from tests.test_irc import Bot, raw, until
from tests.test_rooms import error, logged_in


class Member(Bot):
    """The test Bot, also hearing kick reasons, server info and the numerics IRCClient keeps."""

    def irc_RPL_MYINFO(self, prefix, params):  # IRCClient reads 004 as one parameter
        self.heard.put(("myinfo", *params[1:]))

    def userKicked(self, kickee, channel, kicker, message):
        self.heard.put(("userKicked", kickee, channel, kicker, message))

    def kickedFrom(self, channel, kicker, message):
        self.heard.put(("kickedFrom", channel, kicker, message))

    def luserClient(self, info):
        self.heard.put(("numeric", "251", [info]))

    def luserMe(self, info):
        self.heard.put(("numeric", "255", [info]))

    def luserChannels(self, channels):
        self.heard.put(("numeric", "254", [channels]))

    def irc_ERR_PASSWDMISMATCH(self, prefix, params):
        self.heard.put(("numeric", "464", params[1:]))

    def irc_RPL_TOPIC(self, prefix, params):
        self.heard.put(("numeric", "332", params[1:]))

    def userRenamed(self, oldname, newname):
        self.heard.put(("renamed", oldname, newname))


async def member(daemon, nickname, password=None) -> Member:
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", daemon.port("irc"))
    client = await endpoints.connectProtocol(endpoint, Member(nickname, password))
    return await client.signed_on.addTimeout(TIMEOUT, reactor)


async def joined(client: Member, channel: str, key=None) -> Member:
    client.join(channel, key)
    await client.hear("joined")
    return client


async def operator_and_member(daemon, channel: str, modes: str = "") -> tuple[Member, Member]:
    """alice, the channel's operator, and bob in it, once bob has seen alice set ``modes``."""
    alice = await joined(await member(daemon, "alice"), channel)
    bob = await joined(await member(daemon, "bob"), channel)
    if modes:
        alice.mode(channel, True, modes)
        await bob.hear("mode")
    return alice, bob


OPER_HASH = argon2.PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash("letmein")


@pytest_twisted.async_yield_fixture
async def opered(db):
    """The daemon with two server operators: one by password, one by its argon2 hash."""
    running = await Daemon(db, ["--irc-oper", "root:sesame", "--irc-oper", f"keeper:{OPER_HASH}"]).start()
    yield running
    await running.stop()


# bugs 1, 4, 6, 14, 15


@pytest_twisted.ensureDeferred
async def test_a_channel_a_guest_made_is_not_left_without_an_operator(daemon):
    """Bug 1's repro: a guest makes #g and quits; an account then joins and sets the topic."""
    gina = await raw(daemon, "gina")
    gina.send(b"JOIN #g", b"QUIT")
    await until(gina, b"ERROR")
    await daemon.chat.register("acct", "pw")
    acct = await raw(daemon, "acct", before=[b"PASS pw"])
    acct.send(b"JOIN #g", b"TOPIC #g :x")
    lines = await until(acct, b"TOPIC")
    assert b":chatserv 353 acct = #g :@acct" in lines
    assert lines[-1] == b":acct!u@chatserv TOPIC #g x"


@pytest_twisted.ensureDeferred
async def test_a_guests_room_takes_modes_and_roles_in_memory_and_vanishes_with_them(daemon):
    gina = await raw(daemon, "gina")
    gina.send(b"JOIN #tmp")
    await until(gina, b" 366 ")
    await daemon.chat.register("acct", "pw")
    acct = await joined(await member(daemon, "acct", "pw"), "#tmp")
    gina.send(b"MODE #tmp +mvb acct x", b"MODE #tmp +o acct")
    assert (await acct.hear("mode"))[3:] == ("+mvb", (None, "acct", "x!*@*"))
    assert (await acct.hear("mode"))[3:] == ("+o", ("acct",))
    assert not daemon.chat.room("tmp").persistent
    acct.leave("#tmp")
    await until(gina, b"PART")
    gina.send(b"QUIT")
    await gina.wait_closed()
    acct.join("#tmp")  # a new room: acct's, with none of the old settings
    assert await acct.hear("names") == ("names", "#tmp", ["@acct"])
    room = daemon.chat.room("tmp")
    assert room.persistent and not room.moderated and not room.bans


@pytest_twisted.ensureDeferred
async def test_the_founder_regains_operator_status_on_joining(daemon):
    await daemon.chat.register("alice", "pw")
    alice = await joined(await member(daemon, "alice", "pw"), "#den")
    alice.leave("#den")
    await alice.hear("left")
    bob = await member(daemon, "bob")
    bob.join("#den")
    assert await bob.hear("names") == ("names", "#den", ["bob"])  # an empty room, but it has a founder
    alice.join("#den")
    assert await bob.hear("userJoined") == ("userJoined", "alice", "#den")
    assert await bob.hear("mode") == ("mode", "chatserv", "#den", "+o", ("alice",))
    bob.topic("#den", "mine")
    assert await bob.numeric("482") == ["#den", "You're not channel operator"]
    alice.quit()
    await bob.hear("userQuit")
    again = await member(daemon, "alice", "pw")  # an account rejoins its rooms at login, as their founder
    assert await again.hear("names") == ("names", "#den", ["@alice", "bob"])
    assert await bob.hear("mode") == ("mode", "chatserv", "#den", "+o", ("alice",))
    await again.sync()  # its login is over before the daemon stops


@pytest_twisted.ensureDeferred
async def test_a_guest_that_logs_in_keeps_its_rooms_and_roles_past_their_settings(daemon):
    await daemon.chat.register("alice", "pw")
    guest = await joined(await member(daemon, "alice"), "#vault")  # 433: IRCClient goes on as alice_
    guest.mode("#vault", True, "ik", user="sesame")
    await guest.hear("mode")
    bob = await member(daemon, "bob")
    guest.invite("bob", "#vault")
    await bob.numeric("INVITE")
    await joined(bob, "#vault", "sesame")
    guest.msg("NickServ", "IDENTIFY alice pw")
    assert await guest.hear("nick") == ("nick", "alice")
    assert await bob.hear("renamed") == ("renamed", "alice_", "alice")
    assert daemon.chat.is_operator(daemon.chat.user("alice"), daemon.chat.room("vault"))
    guest.topic("#vault", "still mine")
    assert await bob.hear("topic") == ("topic", "alice", "#vault", "still mine")


@pytest_twisted.ensureDeferred
async def test_every_mode_change_reaches_every_member_and_modes_can_be_asked_for(daemon):
    alice, bob = await operator_and_member(daemon, "#c")
    alice.mode("#c", False, "t")
    assert await alice.hear("mode") == ("mode", "alice", "#c", "-t", (None,))
    assert await bob.hear("mode") == ("mode", "alice", "#c", "-t", (None,))
    bob.topic("#c", "anyone may")
    assert await alice.hear("topic") == ("topic", "bob", "#c", "anyone may")
    raw_carol = await raw(daemon, "carol")
    raw_carol.send(b"MODE #c", b"TOPIC #c")
    room = daemon.chat.room("c")
    assert await until(raw_carol, b" 333 ") == [
        b":chatserv 324 carol #c +n",
        b":chatserv 329 carol #c %d" % int(room.created_at),
        b":chatserv 332 carol #c :anyone may",
        b":chatserv 333 carol #c bob %d" % int(room.topic_at)]
    alice.mode("#c", True, "tn")  # already +n: only what changes is announced
    assert await bob.hear("mode") == ("mode", "alice", "#c", "+t", (None,))
    bob.topic("#c", "not any more")
    assert await bob.numeric("482") == ["#c", "You're not channel operator"]


@pytest_twisted.ensureDeferred
async def test_kick_takes_the_kickers_nick_as_reason_and_answers_per_channel(daemon):
    alice = await joined(await joined(await member(daemon, "alice"), "#a"), "#b")
    bob = await joined(await joined(await member(daemon, "bob"), "#a"), "#b")
    alice.sendLine("KICK #a,#b bob")
    assert await bob.hear("kickedFrom") == ("kickedFrom", "#a", "alice", "alice")
    assert await bob.hear("kickedFrom") == ("kickedFrom", "#b", "alice", "alice")
    assert await alice.hear("userKicked") == ("userKicked", "bob", "#a", "alice", "alice")
    await joined(bob, "#a")
    alice.sendLine("KICK #nowhere,#b,#a bob :go")
    assert await alice.numeric("403") == ["#nowhere", "No such channel"]
    assert await alice.numeric("441") == ["bob", "#b", "They aren't on that channel"]
    assert await bob.hear("kickedFrom") == ("kickedFrom", "#a", "alice", "go")
    alice.sendLine("KICK #a,#b x,y,z")
    assert await alice.numeric("461") == ["KICK", "Not enough parameters"]


@pytest_twisted.ensureDeferred
async def test_004_and_005_advertise_the_modes_there_are_and_each_user_mode_can_be_had(daemon):
    alice = await member(daemon, "alice")
    assert await alice.hear("myinfo") == ("myinfo", "chatserv", "chatserv-0.1", "iow", "biklmnostv", "bklov")
    await alice.sync()  # past 005
    assert alice.supported.getFeature("PREFIX") == {"o": ("@", 0), "v": ("+", 1)}
    assert alice.supported.getFeature("CHANMODES") == {
        "addressModes": "b", "param": "k", "setParam": "l", "noParam": "imnst"}
    client = await raw(daemon, "bob")
    client.send(b"MODE bob", b"MODE bob +w-i+o", b"MODE bob", b"MODE bob +x")
    assert [await client.receive() for _ in range(4)] == [
        b":chatserv 221 bob +i",
        b":bob!u@chatserv MODE bob +w-i",  # +o comes from OPER only (see the operator test)
        b":chatserv 221 bob +w",
        b":chatserv 501 bob :Unknown MODE flag"]
    client.send(b"MODE alice", b"MODE nobody")
    assert [await client.receive() for _ in range(2)] == [
        b":chatserv 502 bob :Cant change mode for other users",
        b":chatserv 401 bob nobody :No such nick/channel"]


# channel modes


@pytest_twisted.ensureDeferred
async def test_invite_only_channels_let_in_whom_an_operator_invites(daemon):
    alice, bob = await operator_and_member(daemon, "#club", "i")
    carol = await member(daemon, "carol")
    carol.join("#club")
    assert await carol.numeric("473") == ["#club", "Cannot join channel (+i)"]
    bob.invite("carol", "#club")
    assert await bob.numeric("482") == ["#club", "You're not channel operator"]
    carol.invite("bob", "#club")
    assert await carol.numeric("442") == ["#club", "You're not on that channel"]
    alice.invite("bob", "#club")
    assert await alice.numeric("443") == ["bob", "#club", "is already on channel"]
    alice.invite("carol", "#club")
    assert await alice.numeric("341") == ["carol", "#club"]
    assert await carol.numeric("INVITE") == ["#club"]
    await joined(carol, "#club")
    assert (await bob.hear("userJoined"))[1] == "carol"
    carol.leave("#club")
    await carol.hear("left")
    carol.join("#club")  # an invitation is good for one join
    assert await carol.numeric("473") == ["#club", "Cannot join channel (+i)"]
    rooms = await logged_in(daemon, "dave")  # the rooms port is refused in its own words
    assert await rooms.call(5, ["club", "dave"]) == error("This room is invite-only.")


@pytest_twisted.ensureDeferred
async def test_keys_limits_and_bans_refuse_joins_as_the_irc_package_names_them(daemon):
    alice = await member(daemon, "alice")
    for channel in ("#vault", "#tiny", "#barred"):
        await joined(alice, channel)
    alice.mode("#vault", True, "k", user="sesame")
    alice.mode("#tiny", True, "l", limit=1)
    alice.mode("#barred", True, "b", mask="carol")
    assert [(await alice.hear("mode"))[3:] for _ in range(3)] == [
        ("+k", ("sesame",)), ("+l", ("1",)), ("+b", ("carol!*@*",))]
    alice.sendLine("MODE #vault +k :has space")
    assert await alice.numeric("525") == ["#vault", "Key is not well-formed"]
    alice.sendLine("MODE #tiny +l many")
    assert await alice.numeric("696") == ["#tiny", "l", "many", "The limit is a number of members"]
    alice.sendLine("MODE #tiny +l \u00b2")  # str.isdigit takes it, int() does not
    assert await alice.numeric("696") == ["#tiny", "l", "\u00b2", "The limit is a number of members"]
    port = daemon.port("irc")

    def jaraco_carol():
        heard = []
        client_reactor = irc.client.Reactor()
        connection = client_reactor.server()
        for kind in ("badchannelkey", "channelisfull", "bannedfromchan", "join"):
            client_reactor.add_global_handler(
                kind, lambda c, e: heard.append((e.type, e.target, e.arguments[:1])))

        def welcomed(c, e):
            for channel in ("#vault", "#tiny", "#barred"):
                c.join(channel)
            c.join("#vault", "sesame")

        client_reactor.add_global_handler("welcome", welcomed)
        connection.connect("127.0.0.1", port, "carol")
        deadline = time.monotonic() + TIMEOUT
        while len(heard) < 4 and time.monotonic() < deadline:
            client_reactor.process_once(0.05)
        connection.disconnect("done")
        return heard

    assert await threads.deferToThread(jaraco_carol) == [
        ("badchannelkey", "carol", ["#vault"]), ("channelisfull", "carol", ["#tiny"]),
        ("bannedfromchan", "carol", ["#barred"]), ("join", "#vault", [])]
    rooms = await logged_in(daemon, "dave")
    assert await rooms.call(5, ["vault", "dave"]) == error("This room needs a key.")
    assert await rooms.call(5, ["tiny", "dave"]) == error("This room is full.")


@pytest_twisted.ensureDeferred
async def test_bans_are_listed_keep_banned_members_quiet_and_can_be_lifted(daemon):
    alice, bob = await operator_and_member(daemon, "#b")
    alice.mode("#b", True, "b", mask="*!*@*.example")
    alice.sendLine("MODE #b +b b?b")
    assert (await bob.hear("mode"))[3:] == ("+b", ("*!*@*.example",))
    assert (await bob.hear("mode"))[3:] == ("+b", ("b?b!*@*",))
    bob.msg("#b", "can I speak?")
    assert await bob.numeric("404") == ["#b", "Cannot send to channel"]
    client = await raw(daemon, "carol")
    client.send(b"MODE #b +b", b"JOIN #b")  # anyone may see the list; a host mask matches no one here
    lines = await until(client, b" 366 ")
    ban = daemon.chat.room("b").bans
    assert lines[:3] == [
        b":chatserv 367 carol #b *!*@*.example alice %d" % int(ban["*!*@*.example"].set_at),
        b":chatserv 367 carol #b b?b!*@* alice %d" % int(ban["b?b!*@*"].set_at),
        b":chatserv 368 carol #b :End of channel ban list"]
    alice.mode("#b", False, "b", mask="B?B!*@*")
    assert (await bob.hear("mode"))[3:] == ("-b", ("B?B!*@*",))
    bob.msg("#b", "thanks")
    assert await alice.hear("privmsg") == ("privmsg", "bob", "#b", "thanks")
    alice.sendLine("MODE #b +bb bob erin")
    alice.kick("#b", "bob")
    await bob.hear("kickedFrom")
    bob.join("#b")
    assert await bob.numeric("474") == ["#b", "Cannot join channel (+b)"]
    rooms = await logged_in(daemon, "erin")
    assert await rooms.call(5, ["b", "erin"]) == error("You are banned from this room.")


@pytest_twisted.ensureDeferred
async def test_moderated_channels_hear_operators_and_voiced_members_shown_with_prefixes(daemon):
    alice, bob = await operator_and_member(daemon, "#m", "m")
    bob.msg("#m", "hello?")
    assert await bob.numeric("404") == ["#m", "Cannot send to channel"]
    alice.mode("#m", True, "vv", user="bob alice")
    assert await bob.hear("mode") == ("mode", "alice", "#m", "+vv", ("bob", "alice"))
    bob.msg("#m", "now I can")
    assert await alice.hear("privmsg") == ("privmsg", "bob", "#m", "now I can")
    plain = await raw(daemon, "carol")
    full = await raw(daemon, "dave", "multi-prefix userhost-in-names")
    plain.send(b"NAMES #m")
    assert (await until(plain, b" 353 "))[-1] == b":chatserv 353 carol = #m :@alice +bob"
    full.send(b"JOIN #m")
    assert (await until(full, b" 353 "))[-1] == (
        b":chatserv 353 dave = #m :@+alice!alice@chatserv +bob!bob@chatserv dave!u@chatserv")
    full.send(b"WHO #m")
    assert (await until(full, b" 315 "))[-4:-1] == [
        b":chatserv 352 dave #m alice chatserv chatserv alice H@+ :0 alice the bot",
        b":chatserv 352 dave #m bob chatserv chatserv bob H+ :0 bob the bot",
        b":chatserv 352 dave #m u chatserv chatserv dave H :0 U"]
    alice.mode("#m", False, "v", user="bob")
    await bob.hear("mode")
    bob.msg("#m", "again?")
    assert await bob.numeric("404") == ["#m", "Cannot send to channel"]


@pytest_twisted.ensureDeferred
async def test_secret_channels_are_hidden_from_those_outside(daemon):
    alice = await joined(await joined(await member(daemon, "alice"), "#hidden"), "#open")
    alice.mode("#hidden", True, "s")
    await alice.hear("mode")
    outsider = await raw(daemon, "carol")
    outsider.send(b"LIST", b"NAMES #hidden", b"WHOIS alice", b"WHO #hidden", b"TOPIC #hidden")
    lines = await until(outsider, b" 442 ")
    assert [line for line in lines if b"#hidden" in line] == [
        b":chatserv 366 carol #hidden :End of /NAMES list",
        b":chatserv 315 carol #hidden :End of WHO list",
        b":chatserv 442 carol #hidden :You're not on that channel"]
    assert b":chatserv 319 carol alice :@#open" in lines
    insider = await raw(daemon, "dave")
    insider.send(b"JOIN #hidden", b"WHOIS alice")
    lines = await until(insider, b" 318 ")
    assert b":chatserv 353 dave @ #hidden :@alice dave" in lines
    assert b":chatserv 319 dave alice :@#hidden @#open" in lines
    rooms = await logged_in(daemon, "erin")
    assert "hidden" not in (await rooms.call(4, ["erin", None]))[1]


@pytest_twisted.ensureDeferred
async def test_no_external_messages_can_be_turned_off(daemon):
    alice = await joined(await member(daemon, "alice"), "#open")
    outsider = await member(daemon, "bob")
    outsider.msg("#open", "knock knock")
    assert await outsider.numeric("404") == ["#open", "Cannot send to channel"]
    alice.mode("#open", False, "n")
    await alice.hear("mode")
    outsider.msg("#open", "from outside")
    assert await alice.hear("privmsg") == ("privmsg", "bob", "#open", "from outside")


@pytest_twisted.ensureDeferred
async def test_settings_roles_bans_and_the_topic_setter_are_stored(store_db):
    store = open_store(store_db, reactor)

    async def started(store):
        chat = ChatService(store, cheap_hasher(threads=True), reactor)
        chat.startService()
        return await chat.when_ready()

    chat = await started(store)
    alice, bob = await chat.register("alice", "pw"), await chat.register("bob", "pw")
    await chat.join_room(alice, "kept", create=True)
    await chat.join_room(bob, "kept")
    await chat.change_room(alice, "kept", [
        RoomChange("invite_only"), RoomChange("key", "k3y"), RoomChange("limit", 9), RoomChange("moderated"),
        RoomChange("secret"), RoomChange("no_external", False), RoomChange("topic_locked", False),
        RoomChange("voice", user=bob), RoomChange("operator", user=bob), RoomChange("ban", mask="eve!*@*")])
    await chat.set_topic(bob, "kept", "stored")
    await chat.stopService()
    chat = await started(store if store_db == "memory" else open_store(store_db, reactor))
    room = chat.room("kept")
    assert (room.invite_only, room.key, room.limit, room.moderated, room.secret, room.no_external,
            room.topic_locked) == (True, "k3y", 9, True, True, False, False)
    assert (room.topic, room.topic_by, room.founder) == ("stored", "bob", alice.id)
    assert room.operators == room.voiced == {bob.id}
    assert list(room.bans) == ["eve!*@*"] and room.bans["eve!*@*"].set_by == "alice"
    await chat.leave_room(bob, "kept")  # leaving ends a member's roles, for good
    await chat.stopService()
    chat = await started(store if store_db == "memory" else open_store(store_db, reactor))
    assert chat.room("kept").operators == chat.room("kept").voiced == set()
    await chat.stopService()


# operators


@pytest_twisted.ensureDeferred
async def test_server_operators_act_in_any_room_kill_and_send_wallops(opered):
    daemon = opered
    bob = await joined(await member(daemon, "bob"), "#lobby")
    watcher = await raw(daemon, "watcher")
    watcher.send(b"MODE watcher +w", b"JOIN #lobby")
    await until(watcher, b" 366 ")
    root = await raw(daemon, "root")
    root.send(b"OPER nobody sesame", b"OPER root wrong", b"KILL bob :x", b"TOPIC #lobby :x")
    assert [await root.receive() for _ in range(4)] == [
        b":chatserv 491 root :No O-lines for your host",
        b":chatserv 464 root :Password incorrect",
        b":chatserv 481 root :Permission Denied- You're not an IRC operator",
        b":chatserv 442 root #lobby :You're not on that channel"]
    root.send(b"OPER root sesame")
    assert [await root.receive() for _ in range(2)] == [
        b":chatserv 381 root :You are now an IRC operator", b":root!u@chatserv MODE root +o"]
    root.send(b"MODE #lobby +m")  # from outside the room
    assert await root.receive() == b":root!u@chatserv MODE #lobby +m"
    root.send(b"JOIN #lobby", b"TOPIC #lobby :the lobby has an operator", b"MODE #lobby +o bob")
    assert await bob.hear("topic") == ("topic", "root", "#lobby", "the lobby has an operator")
    assert await bob.hear("mode") == ("mode", "root", "#lobby", "+o", ("bob",))
    bob.whois("root")
    assert await bob.numeric("313") == ["root", "is an IRC operator"]
    root.send(b"WALLOPS :maintenance at noon")
    assert (await until(watcher, b"WALLOPS"))[-1] == b":root!u@chatserv WALLOPS :maintenance at noon"
    root.send(b"KILL bob :flooding")
    assert (await until(watcher, b"QUIT"))[-1] == b":bob!bob@chatserv QUIT :Killed (root (flooding))"
    assert daemon.chat.sessions_of(daemon.chat.user_or_guest("watcher"))  # only bob went
    root.send(b"MODE root -o", b"KILL watcher :x")
    assert (await until(root, b" 481 "))[-2:] == [
        b":root!u@chatserv MODE root -o",
        b":chatserv 481 root :Permission Denied- You're not an IRC operator"]
    keeper = await raw(daemon, "keeper")  # declared by its argon2 hash
    keeper.send(b"OPER keeper letmein")
    assert await keeper.receive() == b":chatserv 381 keeper :You are now an IRC operator"


@pytest_twisted.ensureDeferred
async def test_a_killed_client_is_told_why(opered):
    bob = await raw(opered, "bob")
    root = await raw(opered, "root")
    root.send(b"OPER root sesame", b"KILL bob :flooding")
    assert (await until(bob, b"ERROR"))[-1] == b"ERROR :Closing Link: chatserv (Killed (root (flooding)))"
    await bob.wait_closed()


# server queries


@pytest_twisted.ensureDeferred
async def test_lusers_version_time_and_info(daemon):
    await joined(await member(daemon, "alice"), "#one")
    await raw(daemon, "bob")
    carol = await member(daemon, "carol")
    carol.sendLine("LUSERS")
    assert await carol.numeric("251") == ["There are 0 users and 3 invisible on 1 servers"]
    assert await carol.numeric("254") == [daemon.chat.room_count()]
    assert await carol.numeric("255") == ["I have 3 clients and 0 servers"]
    assert await carol.numeric("265") == ["3", "3", "Current local users 3, max 3"]
    assert await carol.numeric("266") == ["3", "3", "Current global users 3, max 3"]
    client = await raw(daemon, "dave")
    client.send(b"VERSION", b"TIME", b"INFO", b"VERSION elsewhere.example")
    lines = await until(client, b" 402 ")
    assert lines[0] == (b":chatserv 351 dave chatserv-0.1 chatserv "
                        b":chatserv: IRC and five other chat protocols over one service")
    assert lines[1].startswith(b":chatserv 005 dave ")
    time_line = next(line for line in lines if b" 391 " in line)
    assert time_line.startswith(b":chatserv 391 dave chatserv ")
    assert abs(int(time_line.split()[4]) - time.time()) < 3600
    info = [line for line in lines if b" 371 " in line or b" 374 " in line]
    assert info[0].startswith(b":chatserv 371 dave :chatserv-0.1: ")
    assert info[-1] == b":chatserv 374 dave :End of INFO list"
    assert lines[-1] == b":chatserv 402 dave elsewhere.example :No such server"


@pytest_twisted.ensureDeferred
async def test_whowas_remembers_who_left(daemon):
    gone = await raw(daemon, "gone")
    gone.send(b"QUIT")
    await gone.wait_closed()
    client = await raw(daemon, "asker")
    client.send(b"WHOWAS gone", b"WHOWAS never", "WHOWAS gone \u00b2".encode(), b"WHOWAS")
    lines = await until(client, b" 431 ")
    assert lines[0] == b":chatserv 314 asker gone u chatserv * :U"
    assert lines[1].startswith(b":chatserv 312 asker gone chatserv :")
    assert lines[5:7] == lines[0:2]  # a count int() cannot read is no count: all of them
    del lines[5:8]
    assert lines[2:] == [b":chatserv 369 asker gone :End of WHOWAS",
                         b":chatserv 406 asker never :There was no such nickname",
                         b":chatserv 369 asker never :End of WHOWAS",
                         b":chatserv 431 asker :No nickname given"]


@pytest_twisted.ensureDeferred
async def test_who_with_masks_and_whox(daemon):
    await joined(await member(daemon, "alice"), "#w")
    bobby = await member(daemon, "bobby")
    bobby.mode("bobby", False, "i")
    await bobby.sync()
    await member(daemon, "hidden")  # +i and sharing no channel: left out of mask searches
    await daemon.chat.register("carl", "pw")
    client = await raw(daemon, "carl", before=[b"PASS pw"])
    client.send(b"JOIN #w", b"WHO b*", b"WHO hidden", b"WHO *", b"WHO #w %tcnuhfar,42", b"WHO #w %n")
    lines = await until(client, b" 315 carl #w ")
    lines += await until(client, b" 315 carl #w ")
    who = [line for line in lines if b" 352 " in line or b" 315 " in line or b" 354 " in line]
    assert who == [
        b":chatserv 352 carl * bobby chatserv chatserv bobby H :0 bobby the bot",
        b":chatserv 315 carl b* :End of WHO list",
        b":chatserv 352 carl * hidden chatserv chatserv hidden H :0 hidden the bot",
        b":chatserv 315 carl hidden :End of WHO list",
        b":chatserv 352 carl * alice chatserv chatserv alice H :0 alice the bot",
        b":chatserv 352 carl * bobby chatserv chatserv bobby H :0 bobby the bot",
        b":chatserv 352 carl * u chatserv chatserv carl H :0 U",
        b":chatserv 315 carl * :End of WHO list",
        b":chatserv 354 carl 42 #w alice chatserv alice H@ 0 :alice the bot",
        b":chatserv 354 carl 42 #w u chatserv carl H carl :U",
        b":chatserv 315 carl #w :End of WHO list",
        b":chatserv 354 carl alice",
        b":chatserv 354 carl carl",
        b":chatserv 315 carl #w :End of WHO list"]


# the pieces


def test_ban_masks_are_completed_and_match_names_not_hosts():
    assert [ban_mask(m) for m in ("bob", "bob!x", "x@host", "*!*@*", "a!b@c")] == [
        "bob!*@*", "bob!x@*", "*!x@host", "*!*@*", "a!b@c"]
    assert RoomBan("B?B!*@*", "op", 0).matches("bob") and not RoomBan("b?b!*@*", "op", 0).matches("bobby")
    assert RoomBan("*!*@*", "op", 0).matches("anyone")
    assert not RoomBan("*!*@*.example", "op", 0).matches("anyone")  # every host here is the server's
    assert RoomBan("[x]!*@*", "op", 0).matches("[x]") and not RoomBan("[x]!*@*", "op", 0).matches("x")


def test_many_mode_changes_are_split_to_fit_a_line():
    def nick_of(user):
        return user.username

    changes = [RoomChange("ban", mask="m" * 98 + f"!{n}@*") for n in range(6)]
    lines = mode_lines("op!op@chatserv", "#c", changes, nick_of).split(b"\r\n")[:-1]
    assert len(lines) == 2 and all(len(line) <= 510 for line in lines)
    masks = [word for line in lines for word in line.split()[4:]]
    assert masks == [change.mask.encode() for change in changes]
    assert mode_lines("s", "#c", [RoomChange("moderated"), RoomChange("key", ""), RoomChange("limit", 5),
                                  RoomChange("secret", False)], nick_of) == b":s MODE #c +m-k+l-s * 5\r\n"


@pytest_twisted.ensureDeferred
async def test_oper_guesses_meet_the_login_throttle_across_connections():
    clock = [1000.0]
    throttle = LoginThrottle(lambda: clock[0], Limits(login_attempts=3))
    book = OperatorBook(InstantHasher(), throttle, [("root", "sesame")])
    assert await book.check("nobody", "x", "10.0.0.1") is None
    assert [await book.check("root", "guess", "10.0.0.1") for _ in range(3)] == [False] * 3
    with pytest.raises(errors.RateLimited):  # locked out, the right password too, whatever the connection
        await book.check("root", "sesame", "10.0.0.1")
    assert await book.check("root", "sesame", "10.0.0.2")  # another address is not
    clock[0] += 1.5
    assert await book.check("root", "sesame", "10.0.0.1")


def test_irc_oper_may_be_given_many_times_and_is_listed_in_help():
    options = Options()
    options.parseOptions(["--irc-oper", "root:sesame", "--irc-oper=keeper:$argon2id$v=19$m=8,t=1,p=1$x"])
    assert options.config(IRCConfig).opers == (("root", "sesame"), ("keeper", "$argon2id$v=19$m=8,t=1,p=1$x"))
    assert Options().config(IRCConfig).opers == ()
    with pytest.raises(usage.UsageError, match="--irc-oper: wants NAME:PASSWORD"):
        Options().parseOptions(["--irc-oper", "no-colon"])
    assert "--irc-oper=" in str(Options())
