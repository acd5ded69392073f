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

from chatserv.tap import PORTS, Options, PortService
from tests.support import ROOT, TIMEOUT, Twistd


def test_defaults_are_the_documented_ones():
    options = Options()
    options.parseOptions([])
    assert options["db"] == "chatserv.sqlite3"
    assert options["skype"] == "tcp:5001" and options["skype-framed"] == "tcp:4000"
    assert options.limits().max_line == 8192


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


def test_a_busy_port_is_reported_and_ends_the_daemon_with_a_failure_status(tmp_path):
    """A supervisor sees the failure: twistd exits non-zero, after a clean shutdown."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        done = subprocess.run(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
             "chatserv", "--db", "memory", *[f"--{p.option}=none" for p in PORTS],
             f"--skype=tcp:{port}:interface=127.0.0.1"],
            cwd=tmp_path, env=env, capture_output=True, timeout=TIMEOUT, text=True,
        )
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
