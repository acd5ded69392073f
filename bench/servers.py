"""Start and stop the servers under test as real processes on loopback ports.

chatserv runs as ``twistd -n chatserv`` from a source tree (``PYTHONPATH``), with every
port but the ones a run needs turned off, so it never collides with other daemons on the
machine. The peers are Twisted's own IRC server (``bench/peers/twisted_words_server.py``)
and ngIRCd with flood penalties off.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
TWISTD = str(Path(PYTHON).with_name("twistd"))
PY_SPY = str(Path(PYTHON).with_name("py-spy"))
NGIRCD = shutil.which("ngircd") or "/usr/sbin/ngircd"
# The chatserv under test: this source tree, or another one (``CHATSERV_SOURCE``, e.g. an
# export of an older commit to compare with); never an installed copy.
SOURCE = Path(os.environ.get("CHATSERV_SOURCE", ROOT)).resolve()
if str(SOURCE) not in sys.path:
    sys.path.insert(0, str(SOURCE))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int | None) -> float:
    """User+system CPU seconds of a process (this one when ``pid`` is None)."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


class Server:
    """One server process; ``pid`` is the server itself, even when py-spy wraps it."""

    def __init__(self, name: str, argv: list[str], port: int, workdir: Path, *, env=None,
                 profile_to: Path | None = None, rate: int = 200, also_ports: list[int] = ()):
        self.name = name
        self.port = port
        self.also_ports = list(also_ports)
        self.workdir = workdir
        self.profile_to = profile_to
        if profile_to is not None:
            argv = [PY_SPY, "record", "--nonblocking", "--gil", "-r", str(rate), "-f", "raw",
                    "-o", str(profile_to), "--", *argv]
        self.argv = argv
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None
        self.log = workdir / f"{name}.log"

    def start(self, timeout: float = 30.0) -> Server:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(self.argv, cwd=self.workdir, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        for port in [self.port, *self.also_ports]:
            wait_port(port, timeout, self.proc)
        self.pid = self.proc.pid
        if self.profile_to is not None:
            self.pid = _children(self.proc.pid)[0]
        return self

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (or SIGINT under py-spy, which then writes its profile); kill after ``timeout``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        if self.profile_to is not None:
            os.kill(self.pid, signal.SIGTERM)  # the server stops; py-spy then writes and exits
        else:
            self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def chatserv_options(source: Path | None = None) -> set[str]:
    """The long options ``twistd chatserv`` of ``source`` (this tree by default) accepts: an
    older tree lacks some, and is measured without them."""
    return set(_of_tree(source, "[p[0] for p in __import__('chatserv.tap').tap.Options.optParameters]"))


def chatserv_ports(source: Path | None = None) -> list[str]:
    """The port options of ``source``'s ``twistd chatserv``."""
    return _of_tree(source, "[p.option for p in __import__('chatserv.tap').tap.PORTS]")


def _of_tree(source: Path | None, expression: str) -> list[str]:
    """A list of names from the chatserv of ``source``, asked in a process of its own."""
    done = subprocess.run([PYTHON, "-c", f"import json; print(json.dumps({expression}))"],
                          capture_output=True, text=True, check=True, timeout=60, cwd=str(source or SOURCE),
                          env=dict(os.environ, PYTHONPATH=str(source or SOURCE)))
    return json.loads(done.stdout)


def chatserv(workdir: Path, ports: dict[str, int], db: str, *, profile_to: Path | None = None,
             extra: list[str] = (), source: Path | None = None) -> Server:
    """``twistd -n chatserv`` listening only on ``ports`` ({option: port}), flood control off;
    ``source``: the tree to run (``SOURCE`` by default)."""
    accepted = chatserv_options(source)
    argv = [TWISTD, "-n", "--pidfile=", "--logfile=-", "chatserv", "--db", db]
    for option in chatserv_ports(source):
        if option in ports:
            argv += [f"--{option}", f"tcp:{ports[option]}:interface=127.0.0.1"]
        else:
            argv += [f"--{option}", "none"]
    argv += ["--messages-per-second", "0", "--idle-timeout", "3600", "--prelogin-timeout", "600"]
    # 0: unlimited. Every load-generator client comes from 127.0.0.1, so the per-address limits
    # (logins in flight included) would measure the limits, not the server.
    for limit in ("irc-flood-rate", "connections-per-ip", "max-connections", "logins-per-ip"):
        if limit in accepted:
            argv += [f"--{limit}", "0"]
    argv += list(extra)
    env = dict(os.environ, PYTHONPATH=str(source or SOURCE))
    first, *others = ports.values()
    return Server("chatserv", argv, first, workdir, env=env, profile_to=profile_to, also_ports=others)


def twisted_words(workdir: Path, port: int) -> Server:
    script = str(ROOT / "bench" / "peers" / "twisted_words_server.py")
    return Server("twisted-words", [PYTHON, script, str(port)], port, workdir)


NGIRCD_CONF = """\
# ngIRCd for the chatserv benchmark: loopback only, no DNS/ident/PAM lookups, no limits
# on connections per address or joins, and flood penalties off (MaxPenaltyTime = 0, so
# the one-second throttle ngIRCd applies to busy clients adds nothing).
[Global]
Name = bench.ngircd.local
Info = chatserv benchmark peer
AdminInfo1 = chatserv benchmark
AdminInfo2 = loopback
AdminEMail = bench@localhost
Listen = 127.0.0.1
Ports = {port}
MotdPhrase = bench
PidFile = {workdir}/ngircd.pid
[Limits]
MaxConnections = 0
MaxConnectionsIP = 0
MaxJoins = 0
MaxNickLength = 30
MaxPenaltyTime = 0
PingTimeout = 600
PongTimeout = 600
[Options]
DNS = no
Ident = no
PAM = no
"""


def ngircd(workdir: Path, port: int) -> Server:
    conf = workdir / "ngircd.conf"
    conf.write_text(NGIRCD_CONF.format(port=port, workdir=workdir))
    return Server("ngircd", [NGIRCD, "-n", "-f", str(conf)], port, workdir)
