"""The real ``twistd -n chatserv`` process: defaults, one log line per port, restart, SIGTERM."""

import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from twisted.internet import defer
from twisted.internet.protocol import ServerFactory
from twisted.internet.testing import MemoryReactorClock

from chatserv.credentials import password_digest
from chatserv.tap import PORTS, Options, PortService
from tests.support import ROOT, TIMEOUT, Twistd
from tests.test_durability import JsonLines


def test_defaults_are_the_documented_ones():
    options = Options()
    options.parseOptions([])
    assert options["db"] == "chatserv.sqlite3"
    assert options["skype"] == "tcp:5001" and options["skype-framed"] == "tcp:4000"
    assert options.limits().max_line == 8192
    irc = options["irc-flood-burst"], options["irc-flood-rate"], options["irc-ping-interval"]
    assert irc == (20, 5, 120)  # as README says


def test_ports_hold_a_burst_of_connects_unless_the_endpoint_says_otherwise():
    """Twisted's listen backlog of 50 drops connects when thousands arrive at once."""
    reactor = MemoryReactorClock()
    chat = SimpleNamespace(when_ready=lambda: defer.succeed(None))
    irc = next(p for p in PORTS if p.option == "irc")
    for endpoint, backlog in [("tcp:6667", 1024), ("tcp:6668:backlog=7:interface=127.0.0.1", 7)]:
        PortService(chat, irc, endpoint, ServerFactory(), reactor).startService()
        assert reactor.tcpServers[-1][2] == backlog


def talk(port, *lines: bytes) -> list[bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"".join(line + b"\n" for line in lines))
        sock.shutdown(socket.SHUT_WR)
        return b"".join(iter(lambda: sock.recv(4096), b"")).splitlines()


def test_twistd_serves_logs_one_line_per_port_and_keeps_data(tmp_path):
    daemon = Twistd(tmp_path)
    try:
        assert talk(daemon.ports["skype"], b"CREATE alice pw", b"SEARCH alice", b"EXIT") == [
            b"200 OK", b"201 id:1,username:alice,password:,online:true,address:127.0.0.1", b"201 Goodbye"]
        waiting = socket.create_connection(("127.0.0.1", daemon.ports["skype"]), timeout=TIMEOUT)
        waiting.sendall(b"PING\n")
        assert waiting.recv(100) == b"200 OK\n"
    finally:
        log = daemon.stop()
    assert waiting.recv(100) == b"201 Goodbye\n" and waiting.recv(100) == b""
    assert len(re.findall(r"starting on \d+", log)) == len(PORTS)
    assert "Traceback" not in log and "pw" not in log.replace("--pidfile", "")
    assert (tmp_path / "chatserv.sqlite3").exists()

    daemon = Twistd(tmp_path)
    try:
        assert talk(daemon.ports["skype"], b"LOGIN alice pw", b"EXIT") == [b"200 OK", b"201 Goodbye"]
    finally:
        daemon.stop()


def run_twistd(cwd, *args) -> subprocess.CompletedProcess:
    """``twistd -n chatserv`` with every port off but those ``args`` name, run to its end."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
         "chatserv", *[f"--{p.option}=none" for p in PORTS], *args],
        cwd=cwd, env=env, capture_output=True, timeout=TIMEOUT, text=True,
    )


def salted_login(port, name, password) -> bool:
    client = JsonLines(port)
    client.send(user=name, type="salt")
    salt = client.receive_type("salt")["salt"]
    client.send(user=name, type="login", password=password_digest(salt, password))
    return client.receive_type("login")["success"] == "true"


def test_twistd_keeps_its_data_in_postgresql(tmp_path, postgresql_url):
    daemon = Twistd(tmp_path, "--db", postgresql_url)
    try:
        assert talk(daemon.ports["skype"], b"CREATE alice pw", b"EXIT") == [b"200 OK", b"201 Goodbye"]
        assert salted_login(daemon.ports["salted"], "alice", "pw")
    finally:
        log = daemon.stop()
    assert "Traceback" not in log and not (tmp_path / "chatserv.sqlite3").exists()

    daemon = Twistd(tmp_path, "--db", postgresql_url)
    try:
        assert salted_login(daemon.ports["salted"], "alice", "pw")
        assert not salted_login(daemon.ports["salted"], "alice", "wrong")
        assert talk(daemon.ports["skype"], b"LOGIN alice pw", b"EXIT") == [b"200 OK", b"201 Goodbye"]
    finally:
        daemon.stop()


@pytest.mark.parametrize("engine", ["postgresql", "sqlite"])
def test_a_store_that_cannot_open_is_one_line_and_a_failure_status(tmp_path, unused_port, engine):
    """A supervisor sees the failure and an operator reads why, in one line; no port listens."""
    db = (f"postgresql://chat@127.0.0.1:{unused_port}/chat" if engine == "postgresql"
          else str(tmp_path / "missing-dir" / "chat.sqlite3"))
    done = run_twistd(tmp_path, "--db", db, "--skype=tcp:0:interface=127.0.0.1")
    said = [line for line in done.stdout.splitlines() if "cannot open the store" in line]
    assert len(said) == 1, done.stdout
    assert ("is unreachable: connection failed" if engine == "postgresql" else "unable to open") in said[0]
    assert done.returncode == 1, done.stdout + done.stderr
    assert "starting on" not in done.stdout and "cannot listen" not in done.stdout
    assert "Main loop terminated" in done.stdout and "Traceback" not in done.stdout + done.stderr


def test_a_busy_port_is_reported_and_ends_the_daemon_with_a_failure_status(tmp_path):
    """A supervisor sees the failure: twistd exits non-zero, after a clean shutdown."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run_twistd(tmp_path, "--db", "memory", f"--skype=tcp:{port}:interface=127.0.0.1")
    assert "cannot listen" in done.stdout and "Address already in use" in done.stdout
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Main loop terminated" in done.stdout and "Traceback" not in done.stdout + done.stderr


def test_the_installed_plugin_is_found_without_warnings(tmp_path):
    twistd = Path(sys.executable).with_name("twistd")
    if not twistd.exists():
        pytest.skip("twistd is not installed in this environment (make test installs it)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([str(twistd), "--help"], cwd=tmp_path, env=env, capture_output=True,
                          timeout=TIMEOUT, text=True)
    assert "chatserv" in done.stdout
    assert "Unable to write to plugin cache" not in done.stdout + done.stderr
