"""A real irssi, driven in tmux, against the IRC port: connect, register, join, talk to a user on
the salted port, reconnect without duplicated history, and /quit with a reason others see.

Debian's irssi and tmux (``make peers`` installs them); skipped, saying so, when either is missing.
"""

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from tests.support import TIMEOUT, Daemon, connect
from tests.test_irc import bot

pytestmark = pytest.mark.skipif(not (shutil.which("irssi") and shutil.which("tmux")),
                                reason="irssi and tmux are needed (make peers installs them)")

IRSSI_CONFIG = """
settings = {
  core = { real_name = "Alice Irssi"; user_name = "alice"; nick = "alice"; };
  "irc/core" = { cmd_queue_speed = "0msec"; cmds_max_at_once = "100"; };
  "fe-common/core" = { autolog = "yes"; autolog_path = "%s/$0.log"; };
};
"""


class Irssi:
    """irssi in a tmux session of its own (a private tmux server), read through its logs."""

    def __init__(self, home: Path):
        self.home = home
        self.logs = home / "logs"
        self.logs.mkdir(parents=True)
        (home / "config").write_text(IRSSI_CONFIG % self.logs)
        self.tmux = ["tmux", "-S", str(home / "tmux.sock")]
        subprocess.run([*self.tmux, "new-session", "-d", "-s", "irssi", "-x", "200", "-y", "50",
                        f"irssi --home={home} -n alice -!"], check=True)

    def type(self, text: str):
        subprocess.run([*self.tmux, "send-keys", "-t", "irssi", "-l", text], check=True)
        subprocess.run([*self.tmux, "send-keys", "-t", "irssi", "Enter"], check=True)

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def everything(self) -> str:
        """The screen and every log (a notice may land in another window)."""
        return self.screen() + "".join(p.read_text(errors="replace") for p in sorted(self.logs.iterdir()))

    def screen(self) -> str:
        done = subprocess.run([*self.tmux, "capture-pane", "-p", "-J", "-S", "-", "-t", "irssi"],
                              capture_output=True, check=True)
        return done.stdout.decode(errors="replace")

    async def until(self, read, text: str, count: int = 1) -> str:
        """What ``read()`` shows once ``text`` is in it ``count`` times; fails after TIMEOUT."""
        deadline = time.monotonic() + TIMEOUT
        while (seen := read()).count(text) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"irssi never showed {text!r}; screen:\n{self.screen()}")
            await task.deferLater(reactor, 0.05, lambda: None)
        return seen

    def stop(self):
        subprocess.run([*self.tmux, "kill-server"], check=False)


@pytest_twisted.ensureDeferred
async def test_irssi_registers_talks_to_the_salted_port_reconnects_and_quits(tmp_path):
    daemon = await Daemon(str(tmp_path / "chat.sqlite3")).start()
    irssi = Irssi(tmp_path / "irssi")
    try:
        port = daemon.port("irc")
        erin = await connect(daemon.port("salted"))
        erin.send(json.dumps({"user": "erin", "type": "guest"}).encode())
        assert json.loads(await erin.receive()) == {"type": "login", "success": "true"}
        watcher = await bot(daemon, "watcher")
        watcher.join("#lobby")
        await watcher.hear("joined")

        irssi.type(f"/connect 127.0.0.1 {port}")
        await irssi.until(irssi.screen, "Welcome to the chatserv IRC network alice")
        irssi.type("/msg NickServ REGISTER s3cret")
        await irssi.until(irssi.everything, "Account alice created; you are logged in")
        irssi.type("/join #lobby")
        await irssi.until(irssi.screen, "#lobby: Total of 3 nicks")  # alice, erin and the watcher
        erin.send(json.dumps({"user": "erin", "type": "message", "message": "hi from salted"}).encode())
        await irssi.until(lambda: irssi.log("#lobby"), "erin> hi from salted")
        irssi.type("hello erin, from irssi")
        while (event := json.loads(await erin.receive())).get("from") != "alice":
            pass
        assert event == {"type": "message", "from": "alice", "message": "hello erin, from irssi"}

        irssi.type("/disconnect")
        assert (await watcher.hear("userQuit"))[1] == "alice"
        erin.send(json.dumps({"user": "erin", "type": "message", "message": "while you were away"}).encode())
        await watcher.hear("privmsg")
        irssi.type(f"/connect 127.0.0.1 {port} s3cret alice")  # PASS logs the account in
        lobby = await irssi.until(lambda: irssi.log("#lobby"), "End of replay")
        assert lobby.count("while you were away") == 1
        assert lobby.count("hi from salted") == 1  # seen before: not replayed
        assert lobby.count("hello erin, from irssi") == 1
        assert "Replay: 1 message sent at " in lobby

        irssi.type("/quit see you later")
        assert await watcher.hear("userQuit") == ("userQuit", "alice", "Quit: see you later")
    finally:
        irssi.stop()
        await daemon.stop()
