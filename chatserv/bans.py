"""The IP ban list a person edits while the daemon runs: a text file, one address a line.

The daemon keeps bans in memory (``ChatService.bans``), so a second process writing the
database would go unnoticed. Instead the file named by ``--ban-file`` *is* the ban list:
the daemon re-reads it every few seconds and, when it changed, bans the addresses it lists
and lifts the bans it no longer lists, writing both through to the store so they outlive the
file. A missing file is first written from the stored list, so nothing is lifted by
pointing at a new path. ``python -m chatserv.admin`` edits the file for you.
"""

from __future__ import annotations

import ipaddress
import os
import tempfile

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

log = Logger()

HEADER = "# chatserv IP bans: one address per line; '#' starts a comment. Applied while running.\n"


def normalise(address: str) -> str:
    """One spelling per address (``::0001`` -> ``::1``, ``::ffff:10.0.0.1`` -> ``10.0.0.1``).

    ValueError when it is no IP address.
    """
    parsed = ipaddress.ip_address(address.strip())
    return str(getattr(parsed, "ipv4_mapped", None) or parsed)


def ban_key(host: str) -> str:
    """A peer's address as the ban list names it (a dual-stack listener sees IPv4 as mapped)."""
    try:
        return normalise(host)
    except ValueError:
        return host


def parse_addresses(text: str) -> tuple[set[str], list[str]]:
    """The addresses a ban file lists, and the lines that are no address."""
    addresses, bad = set(), []
    for line in text.splitlines():
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        try:
            addresses.add(normalise(entry))
        except ValueError:
            bad.append(entry)
    return addresses, bad


def write_addresses(path: str, addresses) -> None:
    _replace(path, HEADER + "".join(f"{a}\n" for a in sorted(addresses)))


def edit_ban_file(path: str, address: str, banned: bool) -> bool:
    """Add or remove one address, keeping the other lines and comments; True if it changed.

    The file must exist: the daemon writes the stored bans into a new one, and a file made
    before that would lift every stored ban it does not list.
    """
    address = normalise(address)
    with open(path, encoding="utf-8") as source:
        lines = source.read().splitlines()
    kept = [line for line in lines if parse_addresses(line)[0] != {address}]
    if banned:
        kept.append(address)
    if kept == lines:
        return False
    _replace(path, "".join(f"{line}\n" for line in kept))
    return True


def _replace(path: str, text: str) -> None:
    """Replace the file atomically, so the daemon never reads half of it."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=".bans-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


class BanFile(service.Service):
    """Keeps ``chat.bans`` (and the store) equal to the addresses in ``path``."""

    def __init__(self, chat, path: str, clock, interval: float = 2.0):
        self.chat = chat
        self.path = path
        self.interval = interval
        self._seen: bytes | None = None
        self._checking = False
        self._settled: list[defer.Deferred] = []
        self._loop = task.LoopingCall(self.check)
        self._loop.clock = clock

    def startService(self):
        super().startService()
        ready = self.chat.when_ready()
        ready.addCallbacks(self._start_looking, lambda _: None)  # the service logs a failed start

    def _start_looking(self, _):
        if self.running and not self._loop.running:
            self._loop.start(self.interval, now=True)

    def stopService(self):
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    def check(self) -> defer.Deferred:
        """Apply the file if it changed since the last look; never stops the loop on failure."""
        self._checking = True
        d = defer.maybeDeferred(self._apply)
        d.addErrback(lambda f: log.error("cannot apply the ban file {path}: {why}", path=self.path,
                                         why=f.getErrorMessage()))
        d.addBoth(self._checked)
        return d

    def _checked(self, _):
        self._checking = False
        settled, self._settled = self._settled, []
        for waiter in settled:
            waiter.callback(None)

    def settled(self) -> defer.Deferred:
        """Fires once the look under way (if any) has applied the file and its store writes landed:
        until then the loop does not look again, so a caller that changed the file waits here."""
        if not self._checking:
            return defer.succeed(None)
        waiter = defer.Deferred()
        self._settled.append(waiter)
        return waiter

    @defer.inlineCallbacks
    def _apply(self):
        try:
            with open(self.path, "rb") as source:
                content = source.read()
        except FileNotFoundError:
            write_addresses(self.path, self.chat.bans)
            log.info("wrote the current bans to the new ban file {path}", path=self.path)
            return
        if content == self._seen:
            return
        listed, bad = parse_addresses(content.decode("utf-8", "replace"))
        for entry in bad:
            log.warn("ban file {path}: not an IP address: {entry!r}", path=self.path, entry=entry)
        added, lifted = listed - self.chat.bans, self.chat.bans - listed
        # All at once: the daemon honours them at this instant, the store commits them together.
        yield defer.gatherResults([self.chat.ban(a) for a in added] + [self.chat.unban(a) for a in lifted],
                                  consumeErrors=True)
        self._seen = content
        if added or lifted:
            log.info("ban file {path}: banned {added}, lifted {lifted}", path=self.path,
                     added=" ".join(sorted(added)) or "-", lifted=" ".join(sorted(lifted)) or "-")
