"""IRC messaging, registration and history (issue 16): real clients, raw lines where bytes matter."""


import datetime
import time

import pytest
import pytest_twisted
from twisted.internet import defer, endpoints, reactor

from chatserv.protocols.irc import numerics as N
from tests.support import TIMEOUT, Daemon, connect
from tests.test_irc import Bot, last_param, plain, raw, until


class Watcher(Bot):
    """Twisted's IRCClient that also reports renames."""

    def userRenamed(self, oldname, newname):
        self.heard.put(("renamed", oldname, newname))


async def watcher(daemon, nickname, channel="", password=None) -> Watcher:
    """Twisted's client, signed on (and on ``channel``, its JOIN answered)."""
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", daemon.port("irc"))
    client = await endpoints.connectProtocol(endpoint, Watcher(nickname, password))
    await client.signed_on.addTimeout(TIMEOUT, reactor)
    if channel:
        client.join(channel)
        await client.hear("joined")
    return client


class Ticking:
    """A service clock one second further on at each reading: every message has its own time
    tag, whatever the machine's speed."""

    def __init__(self):
        self.now = time.time()

    def seconds(self):
        self.now += 1
        return self.now


async def joined(daemon, nick, channel, caps="", before=()):
    """A raw client on ``channel``, its JOIN answered."""
    client = await raw(daemon, nick, caps, before)
    client.send(b"JOIN " + channel.encode())
    await until(client, b" 366 ")
    return client


@pytest_twisted.async_yield_fixture
async def configured(request, tmp_path):
    """A daemon started with the test's ``OPTIONS`` (see its parametrize)."""
    running = await Daemon(str(tmp_path / "chat.sqlite3"), request.param).start()
    yield running
    await running.stop()


# bugs 2, 3: every target, and the quit reason


@pytest_twisted.ensureDeferred
async def test_a_bad_target_does_not_stop_the_others_and_a_fifth_gets_407(daemon):
    sender = await raw(daemon, "sender")
    receivers = [await watcher(daemon, f"mt{n}") for n in range(2, 6)]
    sender.send(b"PRIVMSG nosuchnick,mt2,MT2,mt3,mt4,mt5 :hi")  # MT2 is mt2 again: once is enough
    assert await until(sender, b" 407 ") == [
        b":chatserv 401 sender nosuchnick :No such nick/channel",
        b":chatserv 407 sender mt5 :Too many targets: this one and those after it got nothing"]
    for receiver in receivers[:3]:
        assert await receiver.hear("privmsg") == ("privmsg", "sender", receiver.nickname, "hi")
    sender.send(b"NOTICE nosuchnick,mt2,mt3,mt4,mt5 :quiet")  # a NOTICE never draws an error
    sender.send(b"PING done")
    assert await until(sender, b"PONG") == [b":chatserv PONG chatserv done"]
    assert await receivers[0].hear("notice") == ("notice", "sender", "mt2", "quiet")
    await receivers[3].sync()
    assert [event for event in receivers[3].heard.pending if event[0] in ("privmsg", "notice")] == []


@pytest_twisted.ensureDeferred
async def test_others_see_the_quit_reason(daemon):
    stays = await watcher(daemon, "stays", "#q")
    leaves = await joined(daemon, "leaves", "#q")
    leaves.send(b"QUIT :gone fishing")
    assert await until(leaves, b"ERROR") == [b"ERROR :Closing Link: chatserv (Quit: gone fishing)"]
    assert await stays.hear("userQuit") == ("userQuit", "leaves", "Quit: gone fishing")


# bugs 5, 18: nick changes


@pytest_twisted.ensureDeferred
async def test_nick_changes_after_registration_and_an_account_keeps_its_account(daemon):
    await daemon.chat.register("alice", "pw")
    await daemon.chat.register("carol", "pw")
    bob = await watcher(daemon, "bob", "#n")
    alice = await joined(daemon, "alice", "#n", before=[b"PASS pw"])
    guest = await joined(daemon, "gina", "#n")

    guest.send(b"NICK gina2")  # a guest is renamed
    assert await until(guest, b"NICK") == [b":gina!u@chatserv NICK gina2"]
    assert await bob.hear("renamed") == ("renamed", "gina", "gina2")
    alice.send(b"NICK ally")  # an account takes a free nick and stays the account
    assert (await until(alice, b"NICK ally"))[-2:] == [b":gina!u@chatserv NICK gina2",
                                                     b":alice!u@chatserv NICK ally"]
    assert await bob.hear("renamed") == ("renamed", "alice", "ally")
    bob.msg("ally", "to the new nick")
    assert (await until(alice, b"to the new nick"))[-1] == b":bob!bob@chatserv PRIVMSG ally :to the new nick"
    bob.whois("ally")
    assert await bob.numeric("330") == ["ally", "alice", "is logged in as"]
    alice.send(b"PRIVMSG #n :still alice")
    await bob.hear("privmsg")
    history = await daemon.chat.room_history(daemon.chat.user("alice"), "n")
    assert [(m.sender_id, m.body) for m in history] == [(daemon.chat.user("alice").id, "still alice")]

    guest.send(b"NICK carol", b"NICK ally", b"NICK 9x", b"NICK")  # never a SASL numeric
    assert [line for line in await until(guest, b" 431 ") if line.startswith(b":chatserv ")] == [
        b":chatserv 433 gina2 carol :Nickname is another account's name",
        b":chatserv 433 gina2 ally :Nickname is already in use",
        b":chatserv 432 gina2 9x :Erroneous nickname",
        b":chatserv 431 gina2 :No nickname given"]
    alice.send(b"NICK alice")  # back to the account's own name
    assert (await until(alice, b"NICK"))[-1] == b":ally!u@chatserv NICK alice"
    alice.send(b"QUIT")
    await alice.wait_closed()
    await bob.hear("userQuit")
    guest.send(b"NICK ally")  # free again once its taker left
    assert (await until(guest, b"NICK ally"))[-1] == b":gina2!u@chatserv NICK ally"


@pytest_twisted.ensureDeferred
async def test_identify_shows_everyone_a_nick_change(daemon):
    await daemon.chat.register("alice", "pw")
    bob = await watcher(daemon, "bob", "#i")
    alice = await watcher(daemon, "alice")  # 433: the client falls back to alice_
    assert alice.nickname == "alice_"
    alice.join("#i")
    assert await bob.hear("userJoined") == ("userJoined", "alice_", "#i")
    alice.msg("NickServ", "IDENTIFY alice pw")
    assert await alice.hear("nick") == ("nick", "alice")
    assert await bob.hear("renamed") == ("renamed", "alice_", "alice")
    bob.msg("#i", "welcome back")
    await alice.hear("privmsg")
    bob.sendLine("NAMES #i")
    assert await bob.hear("names") == ("names", "#i", ["@bob", "alice"])
    kinds = [event[0] for event in bob.heard.pending]
    assert "userQuit" not in kinds and "userJoined" not in kinds


# bug 7: USER


@pytest_twisted.ensureDeferred
async def test_user_gives_the_username_and_real_name_whois_and_who_show(daemon):
    client = await connect(daemon.port("irc"))
    client.send(b"NICK foo", b"USER username * * :")
    assert await client.receive() == b":chatserv 461 foo USER :Not enough parameters"
    client.send(b"USER ~user-name 0 * :Real Name Here")
    await until(client, b" 376 ")
    client.send(b"JOIN #u")
    await until(client, b" 366 ")
    client.send(b"WHOIS foo", b"WHO #u")
    lines = await until(client, b" 315 ")
    assert b":chatserv 311 foo foo ~user-name chatserv * :Real Name Here" in lines
    assert b":chatserv 352 foo #u ~user-name chatserv chatserv foo H@ :0 Real Name Here" in lines


# bug 8: one line per message


@pytest_twisted.ensureDeferred
async def test_a_message_that_fit_on_the_way_in_is_relayed_as_one_line_with_its_msgid(daemon):
    receiver = await joined(daemon, "receiver", "#long", "message-tags")
    sender = await joined(daemon, "a" * 30, "#long")
    text = "é " + "x" * (510 - len("PRIVMSG #long :") - 3)
    sent = b"PRIVMSG #long :" + text.encode()
    assert len(sent) == 510  # the longest line a client may send
    sender.send(sent)
    relayed = (await until(receiver, b"PRIVMSG"))[-1]
    assert relayed.startswith(b"@msgid=")
    body = relayed.split(b" ", 1)[1]
    assert len(body) == 510 and text.encode().startswith(last_param(body))
    receiver.send(b"PING sync")
    assert await until(receiver, b"PONG") == [b":chatserv PONG chatserv sync"]  # nothing else came


# bug 9: SASL


@pytest_twisted.ensureDeferred
async def test_an_oversized_sasl_payload_gets_904_and_sasl_works_again(daemon):
    await daemon.chat.register("jilles", "sesame")
    client = await connect(daemon.port("irc"))
    client.send(b"CAP LS 302", b"CAP REQ :sasl", b"NICK jilles", b"USER u 0 * :U", b"AUTHENTICATE PLAIN")
    assert (await until(client, b"AUTHENTICATE"))[-1] == b"AUTHENTICATE +"
    client.send(*[b"AUTHENTICATE " + b"A" * 400] * 5, b"AUTHENTICATE " + b"A" * 10)
    assert await client.receive() == b":chatserv 904 jilles :SASL authentication failed"
    client.send(b"AUTHENTICATE " + b"B" * 401)
    assert await client.receive() == b":chatserv 905 jilles :SASL message too long"
    client.send(b"AUTHENTICATE PLAIN")  # back to normal: a new attempt starts
    assert await client.receive() == b"AUTHENTICATE +"
    client.send(b"AUTHENTICATE " + plain("jilles", "sesame"))
    assert (await until(client, b" 903 "))[-1] == b":chatserv 903 jilles :SASL authentication successful"


# bug 10: client-only tags


@pytest_twisted.ensureDeferred
async def test_client_only_tags_reach_clients_that_take_them_and_big_tags_get_417(daemon):
    tagged = await joined(daemon, "tagged", "#t", "message-tags")
    plain_client = await joined(daemon, "plain", "#t")
    sender = await joined(daemon, "sender", "#t", "message-tags echo-message")
    sender.send(b"@+draft/reply=1;+draft/react=x;label=notforthem PRIVMSG #t :hi")
    echo = (await until(sender, b"PRIVMSG"))[-1]
    assert echo.startswith(b"@msgid=")
    assert b";+draft/reply=1;+draft/react=x :sender!u@chatserv PRIVMSG" in echo
    relayed = (await until(tagged, b"PRIVMSG"))[-1]
    assert relayed.split(b" ", 1)[0] == echo.split(b" ", 1)[0]
    assert (await until(plain_client, b"PRIVMSG"))[-1] == b":sender!u@chatserv PRIVMSG #t hi"
    sender.send(b"@+draft/react=y;cat=dog TAGMSG #t")  # cat is not a client-only tag: not relayed
    relayed = (await until(tagged, b"TAGMSG"))[-1]
    assert relayed.startswith(b"@+draft/react=y;msgid=t")
    assert relayed.endswith(b" :sender!u@chatserv TAGMSG #t")
    assert (await until(sender, b"TAGMSG"))[-1] == relayed  # the echo has the same msgid
    sender.send(b"@+big=" + b"a" * 4096 + b" PRIVMSG #t :too much")
    assert await sender.receive() == b":chatserv 417 sender :Input line was too long"
    sender.send(b"PRIVMSG #t :after")
    assert last_param((await until(tagged, b"PRIVMSG"))[-1]) == b"after"  # the big one went nowhere


# bug 12: CASEMAPPING=ascii


@pytest_twisted.ensureDeferred
async def test_channel_names_compare_as_casemapping_ascii_says(daemon):
    client = await joined(daemon, "cm", "#Stra\u00dfe")
    client.send(b"JOIN #STRASSE")  # a different channel under ascii casemapping: really joined
    assert (await until(client, b" 366 "))[0] == b":cm!u@chatserv JOIN #STRASSE"
    client.send("JOIN #STRA\u00dfE".encode(), b"JOIN #strasse", b"PING done")  # the same two channels again
    assert await until(client, b"PONG") == [b":chatserv PONG chatserv done"]
    assert sorted(r.name for r in daemon.chat.rooms_of(daemon.chat.user_or_guest("CM"))) == [
        "STRASSE", "Stra\u00dfe"]


# bug 13: echoed input and the blocked numeric


@pytest_twisted.ensureDeferred
async def test_client_input_in_numerics_cannot_shift_parameters_and_a_block_is_not_404(daemon):
    alice = await daemon.chat.register("alice", "pw")
    await daemon.chat.register("bob", "pw")
    await daemon.chat.block(alice, "bob")
    client = await raw(daemon, "bob", before=[b"PASS pw"])
    client.send(b"WHOIS :a b", b"JOIN ::#a b", b"PRIVMSG alice :hello")
    assert await until(client, b" 531 ") == [
        b":chatserv 401 bob * :No such nick/channel",
        b":chatserv 318 bob * :End of /WHOIS list",
        b":chatserv 403 bob * :No such channel",
        b":chatserv 531 bob alice :You are not permitted to send private messages to this user"]


def test_word_fields_of_a_numeric_never_carry_a_space():
    assert N.ERR_NOSUCHNICK.params(target="a b") == "* :No such nick/channel"
    assert N.ERR_NOSUCHNICK.params(target=":x") == "* :No such nick/channel"
    assert N.RPL_AWAY.params(target="bob", text="out to lunch") == "bob :out to lunch"


# bug 16 and the options


NAMED = ("--irc-server-name", "irc.example.org", "--irc-network", "ExampleNet")


@pytest.mark.parametrize("configured", [NAMED], indirect=True)
@pytest_twisted.ensureDeferred
async def test_the_server_and_network_names_are_options(configured):
    client = await connect(configured.port("irc"))
    client.send(b"NICK n", b"USER u 0 * :U")
    lines = await until(client, b" 376 ")
    assert lines[0] == b":irc.example.org 001 n :Welcome to the ExampleNet IRC network n!u@chatserv"
    assert any(b" NETWORK=ExampleNet " in line for line in lines)
    assert all(line.startswith(b":irc.example.org ") for line in lines)
    client.send(b"PING x")
    assert await client.receive() == b":irc.example.org PONG irc.example.org x"


@pytest.mark.parametrize("configured", [("--irc-password", "letmein")], indirect=True)
@pytest_twisted.ensureDeferred
async def test_a_connection_password_and_accounts_still_log_in(configured):
    await configured.chat.register("alice", "pw")
    without = await connect(configured.port("irc"))
    without.send(b"NICK n", b"USER u 0 * :U")
    assert await until(without, b"ERROR") == [
        b":chatserv 464 n :This server needs a password: PASS <password> before NICK and USER",
        b"ERROR :Closing Link: chatserv (Bad password)"]
    wrong = await connect(configured.port("irc"))
    wrong.send(b"PASS pw", b"NICK alice", b"USER u 0 * :U")  # an account's password is not it
    assert await until(wrong, b"ERROR") == [b":chatserv 464 alice :Password incorrect",
                                            b"ERROR :Closing Link: chatserv (Bad password)"]
    with_sasl = await connect(configured.port("irc"))
    with_sasl.send(b"PASS letmein", b"CAP REQ :sasl", b"NICK ally", b"USER u 0 * :U", b"AUTHENTICATE PLAIN",
                   b"AUTHENTICATE " + plain("alice", "pw"), b"CAP END")
    assert (await until(with_sasl, b" 001 "))[-2:] == [
        b":chatserv 903 ally :SASL authentication successful",
        b":chatserv 001 ally :Welcome to the chatserv IRC network ally!u@chatserv"]
    with_sasl.send(b"QUIT")
    await with_sasl.wait_closed()
    guest = await watcher(configured, "guest", password="letmein")  # Twisted's client sends PASS
    guest.msg("NickServ", "IDENTIFY alice pw")
    assert await guest.hear("nick") == ("nick", "alice")


# bug 17 and history for clients that hide server-time


def texts(lines, command=b"PRIVMSG") -> list[bytes]:
    return [last_param(line) for line in lines if f" {command.decode()} ".encode() in line]


@pytest_twisted.ensureDeferred
async def test_a_replay_is_framed_and_an_account_gets_only_what_it_missed(daemon):
    daemon.chat.clock = Ticking()
    await daemon.chat.register("alice", "pw")
    bob = await watcher(daemon, "bob", "#r")
    for text in ("one", "two"):
        bob.msg("#r", text)
    await bob.sync()
    alice = await raw(daemon, "alice", before=[b"PASS pw"])  # irssi-like: no server-time shown
    alice.send(b"JOIN #r")
    first = await until(alice, b"End of replay")
    assert [line.split(b"] ", 1)[1] for line in first if b" PRIVMSG " in line] == [b"one", b"two"]
    one, two = (time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(m.sent_at))
                for m in await daemon.chat.room_history(daemon.chat.user("alice"), "r"))
    period = f"{one} to {two[11:] if one[:10] == two[:10] else two}"
    assert f":chatserv NOTICE #r :Replay: 2 messages sent from {period} UTC".encode() in first
    assert first[-1] == b":chatserv NOTICE #r :End of replay: live messages follow"
    alice.send(b"PRIVMSG #r :mine", b"QUIT")
    await alice.wait_closed()
    bob.msg("#r", "while you were out")
    await bob.sync()

    back = await raw(daemon, "alice", before=[b"PASS pw"])  # the account rejoins #r at login
    again = await until(back, b"End of replay")
    assert [line.split(b"] ", 1)[1] for line in again if b" PRIVMSG " in line] == [b"while you were out"]
    assert b"Replay: 1 message sent at " in [line for line in again if b"Replay:" in line][0]
    back.send(b"QUIT")
    await back.wait_closed()

    quiet = await raw(daemon, "alice", before=[b"PASS pw"])  # nothing new: no replay, no notices
    quiet.send(b"PING done")
    assert not [line for line in await until(quiet, b"PONG") if b"NOTICE #r" in line or b"PRIVMSG" in line]


@pytest_twisted.ensureDeferred
async def test_clients_that_fetch_history_get_no_automatic_replay(daemon):
    bob = await watcher(daemon, "bob", "#f")
    bob.msg("#f", "old news")
    await bob.sync()
    for cap in ("draft/chathistory", "znc.in/playback"):
        client = await raw(daemon, cap.split("/")[0].replace(".", ""), cap + " batch server-time")
        client.send(b"JOIN #f", b"PING done")
        assert texts(await until(client, b"PONG")) == []
    lounge = await raw(daemon, "lounge", "draft/chathistory batch server-time message-tags")
    lounge.send(b"JOIN #f", b"CHATHISTORY LATEST #f * 10")
    assert texts(await until(lounge, b"BATCH -")) == [b"old news"]


@pytest_twisted.ensureDeferred
async def test_znc_playback_plays_what_came_after_a_time(daemon):
    daemon.chat.clock = Ticking()
    await daemon.chat.register("alice", "pw")
    bob = await watcher(daemon, "bob", "#z")
    alice = await raw(daemon, "alice", "znc.in/playback server-time batch", [b"PASS pw"])
    alice.send(b"JOIN #z")
    await until(alice, b" 366 ")
    bob.msg("#z", "first")
    first = (await until(alice, b"first"))[-1]
    seen = first.split(b"time=")[1].split(b" ")[0].decode()
    bob.msg("#z", "second")
    bob.msg("alice", "privately")
    await until(alice, b"privately")
    moment = datetime_seconds(seen)
    alice.send(f"PRIVMSG *playback :PLAY * {moment}".encode(), b"PING played")
    played = await until(alice, b"PONG")
    assert texts(played) == [b"second", b"privately"]
    assert played[0].endswith(b" BATCH +1 chathistory #z")
    assert played[3].endswith(b" BATCH +2 chathistory bob")
    alice.send(b"PRIVMSG *playback :PLAY #z 0", b"PRIVMSG *playback :LIST")
    assert texts(await until(alice, b"BATCH -")) == [b"first", b"second"]
    listed = await until(alice, b"*playback!znc@znc.in PRIVMSG alice :bob ")
    assert [last_param(line).split(b" ")[0] for line in listed if b"*playback!" in line] == [b"#z", b"bob"]


def datetime_seconds(stamp: str) -> float:
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


@pytest_twisted.ensureDeferred
async def test_a_live_line_during_a_replay_comes_once_after_it(daemon):
    """The join-time replay is fetched while lines still arrive: a line that lands meanwhile is
    shown live, after the replay, and not replayed as well (the old flaky lobby test)."""
    await daemon.chat.register("dave", "pw")
    dave_user = daemon.chat.user("dave")
    await daemon.chat.join_room(dave_user, "lobby")
    other = await daemon.chat.register("other", "pw")
    await daemon.chat.join_room(other, "lobby")
    await daemon.chat.send_room(other, "lobby", "before dave")
    store, gate, real = daemon.chat.store, defer.Deferred(), daemon.chat.store.message_range

    def held_read(*args, **kwargs):
        return gate.addCallback(lambda _: real(*args, **kwargs))

    store.message_range = held_read
    try:
        dave = await connect(daemon.port("irc"))
        dave.send(b"PASS pw", b"NICK dave", b"USER d 0 * :D")
        await until(dave, b" 366 ")
        await daemon.chat.send_room(other, "lobby", "live during the replay")
        gate.callback(None)
        lines = await until(dave, b"live during the replay")
    finally:
        store.message_range = real
    assert [last_param(line).split(b"] ", 1)[-1] for line in lines if b" PRIVMSG " in line] == [
        b"before dave", b"live during the replay"]
    assert lines[-2] == b":chatserv NOTICE #lobby :End of replay: live messages follow"
    dave.send(b"PING done")
    assert texts(await until(dave, b"PONG")) == []


# CHATHISTORY AROUND, BETWEEN, TARGETS


@pytest_twisted.ensureDeferred
async def test_chathistory_around_between_and_targets(daemon):
    daemon.chat.clock = Ticking()
    await daemon.chat.register("alice", "pw")
    caps = "draft/chathistory batch server-time message-tags echo-message"
    alice = await joined(daemon, "alice", "#h", caps, [b"PASS pw"])
    echoes = []
    for n in range(10):
        alice.send(b"PRIVMSG #h :m%d" % n)
        echoes.append((await until(alice, b"PRIVMSG"))[-1])
    ids = [line.split(b"msgid=")[1].split(b";")[0].split(b" ")[0] for line in echoes]
    stamps = [line.split(b"time=")[1].split(b";")[0].split(b" ")[0] for line in echoes]

    async def history(request):
        alice.send(request)
        return texts(await until(alice, b"BATCH -"))

    assert await history(b"CHATHISTORY AROUND #h msgid=%s 1" % ids[7]) == [b"m7"]
    assert await history(b"CHATHISTORY AROUND #h msgid=%s 3" % ids[7]) == [b"m6", b"m7", b"m8"]
    assert b"m7" in await history(b"CHATHISTORY AROUND #h timestamp=%s 3" % stamps[7])
    middle = [b"m%d" % n for n in range(1, 9)]
    assert await history(b"CHATHISTORY BETWEEN #h msgid=%s msgid=%s 20" % (ids[0], ids[9])) == middle
    assert await history(b"CHATHISTORY BETWEEN #h msgid=%s msgid=%s 20" % (ids[9], ids[0])) == middle
    assert await history(b"CHATHISTORY BETWEEN #h msgid=%s msgid=%s 3" % (ids[0], ids[9])) == middle[:3]
    assert await history(b"CHATHISTORY BETWEEN #h msgid=%s msgid=%s 3" % (ids[9], ids[0])) == middle[-3:]
    bob = await raw(daemon, "bob")
    bob.send(b"PRIVMSG alice :psst")
    await until(alice, b"psst")
    alice.send(b"CHATHISTORY TARGETS timestamp=2000-01-01T00:00:00.000Z timestamp=2999-01-01T00:00:00Z 10")
    targets = await until(alice, b"BATCH -")
    assert targets[0].endswith(b" draft/chathistory-targets")
    assert [line.split(b" ")[4] for line in targets[1:-1]] == [b"#h", b"bob"]
    assert targets[1].startswith(b"@batch=") and b"CHATHISTORY TARGETS #h 20" in targets[1]


# labeled-response


@pytest_twisted.ensureDeferred
async def test_labeled_responses(daemon):
    client = await raw(daemon, "lab", "labeled-response batch echo-message")
    other = await raw(daemon, "other")
    client.send(b"@label=p1 PING x")
    assert await client.receive() == b"@label=p1 :chatserv PONG chatserv x"
    client.send(b"@label=p2 PONG x")
    assert await client.receive() == b"@label=p2 :chatserv ACK"
    client.send(b"@label=p3 FROB")
    assert await client.receive() == b"@label=p3 :chatserv 421 lab FROB :Unknown command"
    client.send(b"@label=p4 PRIVMSG other :hi")
    assert await client.receive() == b"@label=p4 :lab!u@chatserv PRIVMSG other hi"
    assert (await until(other, b"PRIVMSG"))[-1] == b":lab!u@chatserv PRIVMSG other hi"
    client.send(b"@label=p5 JOIN #lab")
    joined_lines = await until(client, b"BATCH -")
    assert joined_lines[0] == b"@label=p5 :chatserv BATCH +1 labeled-response"
    assert joined_lines[1] == b"@batch=1 :lab!u@chatserv JOIN #lab"
    assert all(line.startswith(b"@batch=1 ") for line in joined_lines[1:-1])
    client.send(b"@label=p6 PRIVMSG #lab :caf\xe9")
    assert await client.receive() == (b"@label=p6 :chatserv FAIL PRIVMSG INVALID_UTF8 :Message rejected: "
                                      b"this network takes UTF-8 only (UTF8ONLY)")


@pytest_twisted.ensureDeferred
async def test_odd_numbers_and_times_get_their_error_not_a_traceback(daemon):
    """Superscript digits pass str.isdigit and fail int(); ids past SQLite's integers and
    infinite times overflow: each gets a reply, and the daemon logs nothing (conftest)."""
    client = await joined(daemon, "odd", "#o", "draft/chathistory batch")
    client.send("CAP LS \u00b2".encode(), "CHATHISTORY LATEST #o * \u00b2".encode(),
                b"CHATHISTORY BEFORE #o msgid=99999999999999999999999 10",
                b"PRIVMSG *playback :PLAY * inf", b"PRIVMSG *playback :PLAY * 1e308", b"PING done")
    lines = await until(client, b"PONG")
    assert lines[0].startswith(b":chatserv CAP odd LS :")
    assert lines[1:] == [
        b":chatserv FAIL CHATHISTORY INVALID_PARAMS LATEST :Invalid parameters",
        b":chatserv FAIL CHATHISTORY INVALID_MSGREFTYPE BEFORE msgid=99999999999999999999999 :References are "
        b"msgid=<id> or timestamp=<ISO 8601>, or * for LATEST",
        b":*playback!znc@znc.in PRIVMSG odd :PLAY: times are seconds since 1970",
        b":*playback!znc@znc.in PRIVMSG odd :PLAY: times are seconds since 1970",
        b":chatserv PONG chatserv done"]
