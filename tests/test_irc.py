"""IRC end to end, with real IRC clients: Twisted's IRCClient, the ``irc`` package, raw lines."""

import base64
import json
import time

import irc.client
import pytest_twisted
from twisted.internet import defer, endpoints, reactor, threads
from twisted.logger import globalLogPublisher
from twisted.words.protocols import irc as words

from tests.support import TIMEOUT, connect


class Bot(words.IRCClient):
    """Twisted's IRC client, with what it hears in a queue."""

    def __init__(self, nickname, password=None):
        self.nickname = nickname
        self.password = password
        self.realname = f"{nickname} the bot"
        self.heard = defer.DeferredQueue()
        self.signed_on = defer.Deferred()

    def signedOn(self):
        self.signed_on.callback(self)

    def privmsg(self, user, channel, message):
        self.heard.put(("privmsg", user.split("!")[0], channel, message))

    def action(self, user, channel, data):
        self.heard.put(("action", user.split("!")[0], channel, data))

    def noticed(self, user, channel, message):
        self.heard.put(("notice", user.split("!")[0], channel, message))

    def joined(self, channel):
        self.heard.put(("joined", channel))

    def left(self, channel):
        self.heard.put(("left", channel))

    def userJoined(self, user, channel):
        self.heard.put(("userJoined", user, channel))

    def userLeft(self, user, channel):
        self.heard.put(("userLeft", user, channel))

    def userQuit(self, user, message):
        self.heard.put(("userQuit", user, message))

    def userKicked(self, kickee, channel, kicker, message):
        self.heard.put(("userKicked", kickee, channel, kicker))

    def kickedFrom(self, channel, kicker, message):
        self.heard.put(("kickedFrom", channel, kicker))

    def topicUpdated(self, user, channel, topic):
        self.heard.put(("topic", user, channel, topic))

    def modeChanged(self, user, channel, granted, modes, args):
        self.heard.put(("mode", user.split("!")[0], channel, ("+" if granted else "-") + modes, args))

    def nickChanged(self, nick):
        super().nickChanged(nick)
        self.heard.put(("nick", nick))

    def irc_RPL_NAMREPLY(self, prefix, params):
        self.heard.put(("names", params[2], sorted(params[3].split())))

    def irc_unknown(self, prefix, command, params):
        self.heard.put(("numeric", words.symbolic_to_numeric.get(command, command), params[1:]))

    async def numeric(self, code):
        """The parameters of the next numeric reply with that code."""
        while (event := await self.hear("numeric"))[1] != code:
            pass
        return event[2]

    async def sync(self):
        """Wait until the server has answered everything sent so far."""
        self.sendLine("PING sync")
        while await self.hear("numeric") != ("numeric", "PONG", ["sync"]):
            pass

    async def hear(self, kind):
        """The next event of that kind (others are skipped); fails after TIMEOUT seconds."""
        while True:
            event = await self.heard.get().addTimeout(TIMEOUT, reactor)
            if event[0] == kind:
                return event


async def bot(daemon, nickname, password=None) -> Bot:
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", daemon.port("irc"))
    client = await endpoints.connectProtocol(endpoint, Bot(nickname, password))
    return await client.signed_on.addTimeout(TIMEOUT, reactor)


async def until(client, needle: bytes) -> list[bytes]:
    """Lines from a raw client up to and including the first that contains ``needle``."""
    lines = []
    while True:
        lines.append(await client.receive())
        if needle in lines[-1]:
            return lines


async def raw(daemon, nick, caps="", before=()):
    """A raw client that has registered (after ``before`` lines) and read the MOTD."""
    client = await connect(daemon.port("irc"))
    lines = [b"CAP LS 302", *before, b"NICK " + nick.encode(), b"USER u 0 * :U"]
    if caps:
        lines.insert(1, b"CAP REQ :" + caps.encode())
    client.send(*lines, b"CAP END")
    await until(client, b" 376 ")
    return client


def last_param(line: bytes) -> bytes:
    """The text of a message line (its last parameter)."""
    head, colon, trailing = line.partition(b" :") if not line.startswith(b"@") else (
        line.split(b" ", 1)[1].partition(b" :"))
    return trailing if colon else head.rsplit(b" ", 1)[1]


def plain(login: str, password: str) -> bytes:
    return base64.b64encode(f"\0{login}\0{password}".encode())


@pytest_twisted.ensureDeferred
async def test_irc_clients_register_join_talk_replay_and_part(daemon):
    alice = await bot(daemon, "alice")
    alice.msg("NickServ", "REGISTER pw")
    assert (await alice.hear("notice"))[3] == "Account alice created; you are logged in"
    alice.join("#talk")
    await alice.hear("joined")
    bob = await bot(daemon, "bob")
    bob.join("#talk")
    assert await bob.hear("names") == ("names", "#talk", ["@alice", "bob"])
    assert await alice.hear("userJoined") == ("userJoined", "bob", "#talk")
    alice.msg("#talk", "hello bob")
    assert await bob.hear("privmsg") == ("privmsg", "alice", "#talk", "hello bob")
    bob.msg("#talk", "hi alice")
    assert await alice.hear("privmsg") == ("privmsg", "bob", "#talk", "hi alice")
    bob.msg("alice", "psst")
    assert await alice.hear("privmsg") == ("privmsg", "bob", "alice", "psst")
    bob.describe("#talk", "waves")  # CTCP ACTION: stored as an action, shown as one
    assert await alice.hear("action") == ("action", "bob", "#talk", "waves")
    bob.ctcpMakeQuery("alice", [("VERSION", None)])  # other CTCP queries go nowhere
    await bob.sync()
    assert [m.body for m in await daemon.chat.inbox(daemon.chat.user("alice"))] == ["psst"]

    carol = await raw(daemon, "carol", "server-time batch message-tags")
    carol.send(b"JOIN #talk")
    replay = await until(carol, b"BATCH -")
    batch = [line for line in replay if b"batch=" in line]
    assert [last_param(line) for line in batch] == [b"hello bob", b"hi alice", b"\x01ACTION waves\x01"]
    assert batch[0].startswith(b"@batch=1;time=20") and b";msgid=" in batch[0]
    assert replay[0] == b":carol!u@chatserv JOIN #talk"

    dave = await bot(daemon, "dave")  # no server-time
    dave.join("#talk")
    replayed = await dave.hear("privmsg")  # the time is written in front of the text
    assert replayed[1:3] == ("alice", "#talk") and replayed[3].endswith("] hello bob")
    assert replayed[3].startswith("[20")

    bob.sendLine("JOIN 0")  # leaves every channel
    assert await bob.hear("left") == ("left", "#talk")
    assert await alice.hear("userLeft") == ("userLeft", "bob", "#talk")
    dave.quit("bye")
    assert await alice.hear("userQuit") == ("userQuit", "dave", "Quit: bye")  # the reason reaches others
    carol.send(b"QUIT")
    seen = await until(carol, b"ERROR")
    assert seen[-1] == b"ERROR :Closing Link: chatserv (Quit)"
    assert seen.index(b":bob!bob@chatserv PART #talk") < seen.index(b":dave!dave@chatserv QUIT :Quit: bye")


@pytest_twisted.ensureDeferred
async def test_pass_login_rejoins_rooms_and_delivers_what_waited(daemon):
    alice = await daemon.chat.register("alice", "pw")
    await daemon.chat.join_room(alice, "den", create=True)
    bob = await bot(daemon, "bob")
    bob.msg("alice", "while you were out")
    await bob.sync()
    client = await connect(daemon.port("irc"))
    client.send(b"PASS pw", b"NICK alice", b"USER a 0 * :A")
    lines = await until(client, b"while you were out")
    assert b":alice!a@chatserv JOIN #den" in lines
    assert b":chatserv 353 alice = #den :@alice" in lines
    assert lines[-1].startswith(b":bob!bob@chatserv PRIVMSG alice :[20")
    wrong = await connect(daemon.port("irc"))
    wrong.send(b"PASS nope", b"NICK alice", b"USER a 0 * :A")
    assert await until(wrong, b"ERROR") == [b":chatserv 464 alice :Password incorrect",
                                            b"ERROR :Closing Link: chatserv (Bad password)"]
    await wrong.wait_closed()


@pytest_twisted.ensureDeferred
async def test_a_registered_nick_needs_its_password_then_nickserv_identify(daemon):
    await daemon.chat.register("alice", "pw")
    alice = await bot(daemon, "alice")  # 433: IRCClient, like irssi, tries alice_
    assert alice.nickname == "alice_"
    alice.join("#guests")
    await alice.hear("joined")
    alice.msg("NickServ", "IDENTIFY alice wrong")
    assert (await alice.hear("notice"))[3] == "Invalid account name or password"
    alice.msg("NickServ", "IDENTIFY alice pw")
    assert (await alice.hear("notice"))[3] == "You are now logged in as alice"
    assert await alice.hear("nick") == ("nick", "alice")
    alice.msg("#guests", "still here")
    await alice.sync()
    history = await daemon.chat.room_history(daemon.chat.user("alice"), "guests")
    assert [(m.sender_name, m.body) for m in history] == [("alice", "still here")]
    assert [r.name for r in daemon.chat.rooms_of(daemon.chat.user("alice"))] == ["guests"]
    assert daemon.chat.is_operator(daemon.chat.user("alice"), daemon.chat.room("guests"))


@pytest_twisted.ensureDeferred
async def test_operators_topic_mode_and_kick(daemon):
    alice = await bot(daemon, "alice")
    alice.join("#ops")
    await alice.hear("joined")
    bob = await bot(daemon, "bob")
    bob.join("#ops")
    await alice.hear("userJoined")
    bob.topic("#ops", "mine")
    assert await bob.numeric("482") == ["#ops", "You're not channel operator"]
    alice.topic("#ops", "welcome")
    assert await bob.hear("topic") == ("topic", "alice", "#ops", "welcome")
    alice.mode("#ops", True, "o", user="bob")
    assert await bob.hear("mode") == ("mode", "alice", "#ops", "+o", ("bob",))
    bob.kick("#ops", "alice", "out")
    assert await alice.hear("kickedFrom") == ("kickedFrom", "#ops", "bob")
    assert daemon.chat.room("ops").members == {daemon.chat.user_or_guest("bob").id}


@pytest_twisted.ensureDeferred
async def test_the_irc_package_logs_in_with_sasl_and_chats(daemon):
    await daemon.chat.register("alice", "pw")
    bob = await bot(daemon, "bob")
    bob.join("#jar")
    await bob.hear("joined")
    port = daemon.port("irc")

    def jaraco_alice():
        heard = []
        client_reactor = irc.client.Reactor()
        connection = client_reactor.server()
        client_reactor.add_global_handler("welcome", lambda c, e: c.join("#jar"))
        client_reactor.add_global_handler(
            "join", lambda c, e: c.privmsg("#jar", "from jaraco") if e.source.nick == "alice" else None)
        client_reactor.add_global_handler("pubmsg",
                                          lambda c, e: heard.append((e.source.nick, e.arguments[0])))
        connection.connect("127.0.0.1", port, "alice", password="pw", sasl_login="alice")
        deadline = time.monotonic() + TIMEOUT
        while not heard and time.monotonic() < deadline:
            client_reactor.process_once(0.05)
        connection.disconnect("done")
        return heard

    heard = threads.deferToThread(jaraco_alice)
    assert await bob.hear("privmsg") == ("privmsg", "alice", "#jar", "from jaraco")
    bob.msg("#jar", "hello jaraco")
    assert await heard == [("bob", "hello jaraco")]


@pytest_twisted.ensureDeferred
async def test_cap_sasl_and_the_register_command(daemon):
    client = await connect(daemon.port("irc"))
    client.send(b"CAP LS 302")
    offered = set((await client.receive()).split(b" :", 1)[1].split())
    assert {b"sasl=PLAIN", b"server-time", b"message-tags", b"echo-message", b"multi-prefix", b"batch",
            b"draft/chathistory", b"draft/account-registration=before-connect,custom-account-name",
            b"labeled-response", b"znc.in/playback"} <= offered
    client.send(b"REGISTER alice * pw")
    assert await until(client, b" 900 ") == [
        b":chatserv REGISTER SUCCESS alice :Account created",
        b":chatserv 900 * alice!alice@chatserv alice :You are now logged in as alice"]
    client.send(b"NICK whatever", b"USER u 0 * :U", b"CAP END")  # an account keeps a free nick it asks for
    assert (await until(client, b" 001 "))[-1] == (
        b":chatserv 001 whatever :Welcome to the chatserv IRC network whatever!u@chatserv")
    isupport = b" ".join(line for line in await until(client, b" 376 ") if b" 005 " in line).split()
    for token in (b"CHANTYPES=#", b"PREFIX=(ov)@+", b"NICKLEN=32", b"CHANNELLEN=51", b"CASEMAPPING=ascii",
                  b"CHATHISTORY=50", b"NETWORK=chatserv"):
        assert token in isupport
    client.send(b"REGISTER bob * pw")
    assert (await until(client, b"FAIL"))[-1:] == [b":chatserv FAIL REGISTER ALREADY_AUTHENTICATED bob "
                                            b":You are already logged in"]

    other = await connect(daemon.port("irc"))
    other.send(b"CAP LS 302", b"CAP REQ :sasl server-time", b"NICK a2", b"USER u 0 * :U")
    assert (await until(other, b"ACK"))[-1] == b":chatserv CAP * ACK :sasl server-time"
    other.send(b"AUTHENTICATE PLAIN")
    assert await other.receive() == b"AUTHENTICATE +"
    other.send(b"AUTHENTICATE " + plain("alice", "wrong"))
    assert await other.receive() == b":chatserv 904 a2 :SASL authentication failed"
    other.send(b"AUTHENTICATE PLAIN", b"AUTHENTICATE " + plain("alice", "pw"))
    assert await until(other, b" 903 ") == [
        b"AUTHENTICATE +", b":chatserv 900 a2 a2!u@chatserv alice :You are now logged in as alice",
        b":chatserv 903 a2 :SASL authentication successful"]
    other.send(b"CAP END")  # alice is online already, as "whatever": every connection of hers is
    assert (await until(other, b" 001 "))[-1].startswith(b":chatserv 001 whatever ")

    late = await raw(daemon, "late", "sasl")  # a guest may log in after registration too
    late.send(b"AUTHENTICATE PLAIN", b"AUTHENTICATE " + plain("alice", "pw"))
    assert await until(late, b" 903 ") == [
        b"AUTHENTICATE +", b":late!u@chatserv NICK whatever",
        b":chatserv 900 whatever whatever!u@chatserv alice :You are now logged in as alice",
        b":chatserv 903 whatever :SASL authentication successful"]


@pytest_twisted.ensureDeferred
async def test_chathistory_for_rooms_and_direct_messages(daemon):
    await daemon.chat.register("alice", "pw")
    alice = await raw(daemon, "alice", "server-time message-tags batch echo-message", [b"PASS pw"])
    alice.send(b"JOIN #h")
    await until(alice, b" 366 ")
    for n in range(5):
        alice.send(b"PRIVMSG #h :m%d" % n)
    echoes = [await alice.receive() for _ in range(5)]
    ids = [line.split(b"msgid=")[1].split(b" ")[0] for line in echoes]

    async def history(request):
        alice.send(request)
        lines = await until(alice, b"BATCH -")
        return [last_param(line) for line in lines if b"PRIVMSG" in line]

    assert await history(b"CHATHISTORY LATEST #h * 3") == [b"m2", b"m3", b"m4"]
    assert await history(b"CHATHISTORY BEFORE #h msgid=" + ids[2] + b" 10") == [b"m0", b"m1"]
    assert await history(b"CHATHISTORY AFTER #h msgid=" + ids[1] + b" 2") == [b"m2", b"m3"]
    assert await history(b"CHATHISTORY LATEST #h msgid=" + ids[2] + b" 10") == [b"m3", b"m4"]
    times = [line.split(b"time=")[1].split(b";")[0] for line in echoes]
    assert await history(b"CHATHISTORY BEFORE #h timestamp=2000-01-01T00:00:00.000Z 10") == []
    assert await history(b"CHATHISTORY AFTER #h timestamp=2000-01-01T00:00:00.000Z 2") == [b"m0", b"m1"]
    assert await history(b"CHATHISTORY BEFORE #h timestamp=2999-01-01T00:00:00.000Z 1") == [b"m4"]
    assert times[0].endswith(b"Z")
    bob = await raw(daemon, "bob", "message-tags")
    bob.send(b"@+typing=active TAGMSG alice", b"@+typing=done;+other=x TAGMSG alice", b"TAGMSG nobody")
    assert [await alice.receive() for _ in range(2)] == [
        b"@+typing=active;msgid=t1 :bob!u@chatserv TAGMSG alice",
        b"@+typing=done;+other=x;msgid=t2 :bob!u@chatserv TAGMSG alice"]
    bob.send(b"PRIVMSG alice :direct one")
    await until(alice, b"direct one")
    assert await history(b"CHATHISTORY LATEST bob * 10") == [b"direct one"]
    alice.send(b"CHATHISTORY LATEST #nowhere * 10", b"CHATHISTORY LATEST #h yesterday 10",
               b"CHATHISTORY TARGETS a b 10")
    assert [await alice.receive() for _ in range(3)] == [
        b":chatserv FAIL CHATHISTORY INVALID_TARGET LATEST #nowhere :No such channel or nick, or you may not "
        b"read it",
        b":chatserv FAIL CHATHISTORY INVALID_MSGREFTYPE LATEST yesterday :References are msgid=<id> or "
        b"timestamp=<ISO 8601>, or * for LATEST",
        b":chatserv FAIL CHATHISTORY INVALID_PARAMS TARGETS :Invalid parameters"]


@pytest_twisted.ensureDeferred
async def test_across_protocols_with_the_skype_port(daemon):
    skype = await connect(daemon.port("skype"))
    assert await skype.request(b"CREATE carol pw") == b"200 OK"
    carol = daemon.chat.user("carol")
    await daemon.chat.join_room(carol, "cross", create=True)
    bob = await bot(daemon, "bob")
    bob.join("#cross")
    assert await bob.hear("names") == ("names", "#cross", ["@carol", "bob"])
    await daemon.chat.send_room(carol, "cross", "from the other port")
    assert await bob.hear("privmsg") == ("privmsg", "carol", "#cross", "from the other port")
    bob.msg("carol", "to the skype user")
    await bob.sync()
    bob.whois("carol")
    assert await bob.numeric("312") == ["carol", "chatserv", "connected with skype"]
    inbox = await daemon.chat.inbox(carol)
    assert [(m.sender_name, m.body) for m in inbox] == [("bob", "to the skype user")]
    assert await skype.request(b"EXIT") == b"201 Goodbye"
    assert (await bob.hear("userQuit"))[1] == "carol"


@pytest_twisted.ensureDeferred
async def test_bad_input_gets_numerics_and_harms_no_one(daemon):
    failures = []

    def observe(event):
        if "log_failure" in event:
            failures.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        client = await connect(daemon.port("irc"))
        client.send(b"JOIN #x", b"FROB")
        assert [await client.receive() for _ in range(2)] == [b":chatserv 451 * :You have not registered"] * 2
        client.send(b"NICK 1bad", b"NICK", b"USER u")
        assert [await client.receive() for _ in range(3)] == [
            b":chatserv 432 * 1bad :Erroneous nickname", b":chatserv 431 * :No nickname given",
            b":chatserv 461 * USER :Not enough parameters"]
        bob = await bot(daemon, "bob")
        bob.join("#bad")
        await bob.hear("joined")
        client.send(b"NICK bob", b"USER u 0 * :U")
        assert await client.receive() == b":chatserv 433 bob bob :Nickname is already in use"
        client.send(b"NICK mallory")
        await until(client, b" 376 ")
        client.send(b"JOIN #bad")
        await until(client, b" 366 ")

        async def answers(*lines, count=None):
            client.send(*lines)
            return [await client.receive() for _ in range(count or len(lines))]

        too_long = [b":chatserv 417 mallory :Input line was too long"]
        assert await answers(b"PRIVMSG #bad :" + b"x" * 600) == too_long
        assert await answers(b"PRIVMSG #bad :" + b"x" * 9000) == too_long
        assert await answers(b"PING a\rPING b", count=2) == [b":chatserv PONG chatserv a",
                                                            b":chatserv PONG chatserv b"]
        assert await answers(b"PRIVMSG #bad :a\x00b") == [
            b":chatserv 400 mallory * :Line contains a NUL byte"]
        latin1 = b"PRIVMSG #bad :caf\xe9"
        assert await answers(latin1, b":bob!bob@chatserv PRIVMSG #bad :spoofed", count=1) == [
            b":chatserv FAIL PRIVMSG INVALID_UTF8 :Message rejected: this network takes UTF-8 only "
            b"(UTF8ONLY)"]
        # the Latin-1 line went nowhere
        assert await bob.hear("privmsg") == ("privmsg", "mallory", "#bad", "spoofed")
        assert await answers(
            b"MODE #bad +z", b"KICK #bad bob", b"TOPIC #bad :mine", b"JOIN bad", b"PRIVMSG #nochan :x",
            b"PRIVMSG #bad", b"PRIVMSG nobody :x", b"PART #lobby", b"NICK bob", b"USER a b c d",
            b"CHATHISTORY x", b"CAP FOO", b"PRIVMSG", b"MODE bob +i", b"MODE mallory +Z", b"WHOIS nobody",
            b"KICK #bad nobody", b"MODE #bad +o", b"FROB x", count=20) == [
            b":chatserv 472 mallory z :is unknown mode char to me",
            b":chatserv 482 mallory #bad :You're not channel operator",
            b":chatserv 482 mallory #bad :You're not channel operator",
            b":chatserv 403 mallory bad :No such channel",
            b":chatserv 403 mallory #nochan :No such channel",
            b":chatserv 412 mallory :No text to send",
            b":chatserv 401 mallory nobody :No such nick/channel",
            b":chatserv 442 mallory #lobby :You're not on that channel",
            b":chatserv 433 mallory bob :Nickname is already in use",
            b":chatserv 462 mallory :You may not reregister",
            b":chatserv 461 mallory CHATHISTORY :Not enough parameters",
            b":chatserv 410 mallory FOO :Invalid CAP command",
            b":chatserv 411 mallory :No recipient given (PRIVMSG)",
            b":chatserv 502 mallory :Cant change mode for other users",
            b":chatserv 501 mallory :Unknown MODE flag",
            b":chatserv 401 mallory nobody :No such nick/channel",
            b":chatserv 318 mallory nobody :End of /WHOIS list",
            b":chatserv 482 mallory #bad :You're not channel operator",
            b":chatserv 461 mallory MODE :Not enough parameters",
            b":chatserv 421 mallory FROB :Unknown command"]
        bob.msg("#bad", "still fine")
        assert (await until(client, b"still fine"))[-1] == b":bob!bob@chatserv PRIVMSG #bad :still fine"
    finally:
        globalLogPublisher.removeObserver(observe)
    assert failures == []


@pytest_twisted.ensureDeferred
async def test_away_ison_list_names_who_and_a_stopping_daemon(daemon):
    alice = await raw(daemon, "alice")
    bob = await bot(daemon, "bob")
    bob.join("#look")
    await bob.hear("joined")
    bob.topic("#look", "a topic")
    await bob.hear("topic")
    bob.away("lunch")
    await bob.numeric("306")
    bob.mode("bob", False, "i")  # visible: WHO shows bob to those outside his channels
    await bob.sync()
    alice.send(b"ISON bob nobody alice", b"PRIVMSG bob :there?", b"LIST #look", b"NAMES #look", b"WHO #look",
               b"TOPIC #look")
    assert await until(alice, b" 332 ") == [
        b":chatserv 303 alice :bob alice",
        b":chatserv 301 alice bob :lunch",
        b":chatserv 321 alice Channel :Users  Name",
        b":chatserv 322 alice #look 1 :a topic",
        b":chatserv 323 alice :End of /LIST",
        b":chatserv 353 alice = #look :@bob",
        b":chatserv 366 alice #look :End of /NAMES list",
        b":chatserv 352 alice #look bob chatserv chatserv bob G@ :0 bob the bot",
        b":chatserv 315 alice #look :End of WHO list",
        b":chatserv 332 alice #look :a topic"]
    set_at = int(daemon.chat.room("look").topic_at)
    assert await alice.receive() == b":chatserv 333 alice #look bob %d" % set_at
    await daemon.stop()
    assert await until(alice, b"ERROR") == [b"ERROR :Closing Link: chatserv (server shutting down)"]
    await alice.wait_closed()


@pytest_twisted.ensureDeferred
async def test_passwords_never_reach_a_log_or_another_client(daemon):
    logged = []
    globalLogPublisher.addObserver(logged.append)
    try:
        watcher = await raw(daemon, "watcher")
        watcher.send(b"JOIN #lobby")
        await until(watcher, b" 366 ")
        guest = await raw(daemon, "guest", "sasl")
        guest.send(b"PRIVMSG NickServ :REGISTER s3cret-one", b"PRIVMSG NickServ :IDENTIFY guest s3cret-two")
        await until(guest, b"already logged in")
        other = await connect(daemon.port("irc"))
        other.send(b"CAP REQ :sasl", b"AUTHENTICATE PLAIN", b"AUTHENTICATE " + plain("guest", "s3cret-three"),
                   b"PASS s3cret-four", b"NICK x", b"USER u 0 * :U", b"CAP END")
        seen = await until(other, b" 376 ")
        watcher.send(b"PING done")
        seen += await until(watcher, b"PONG")
    finally:
        globalLogPublisher.removeObserver(logged.append)
    encoded = plain("guest", "s3cret-three").decode()
    assert not [line for line in seen if b"s3cret" in line or encoded.encode() in line]
    assert not [event for event in logged if "s3cret" in repr(event) or encoded in repr(event)]


@pytest_twisted.ensureDeferred
async def test_the_lobby_live_with_the_salted_port(daemon):
    erin = await connect(daemon.port("salted"))

    async def erin_hears(kind):
        """The next event of that kind from someone else (the salted port echoes erin's own)."""
        while (event := json.loads(await erin.receive()))["type"] != kind or "erin" in event.values():
            pass
        return event

    erin.send(json.dumps({"user": "erin", "type": "guest"}).encode())
    assert json.loads(await erin.receive()) == {"type": "login", "success": "true"}
    bob = await bot(daemon, "bob")
    bob.join("#lobby")
    assert "erin" in (await bob.hear("names"))[2]
    erin.send(json.dumps({"user": "erin", "type": "message", "message": "hi from the salted port"}).encode())
    assert await bob.hear("privmsg") == ("privmsg", "erin", "#lobby", "hi from the salted port")
    bob.msg("#lobby", "hi from IRC")
    assert await erin_hears("message") == {"type": "message", "from": "bob", "message": "hi from IRC"}
    bob.sendLine("@+typing=active TAGMSG #lobby")
    assert await erin_hears("typing") == {"type": "typing", "user": "bob", "status": "true"}
