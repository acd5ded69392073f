"""``--workers N``: N processes on one machine serving the same listening ports.

Python runs one core per process; workers are nodes of one cluster (the shared store and the
Redis bus make them one server) that share the ports: each listens with ``SO_REUSEPORT``, and
the kernel spreads new connections among them. The process started by ``twistd`` is worker 0;
it starts the others as ``twistd -n chatserv`` with the same options (``--worker K``, a node
name of their own), their logs on its output, restarts one that dies, and stops them when it
stops.
"""

from __future__ import annotations

import os
import signal
import socket
import sys

from twisted.application import service
from twisted.internet import defer, protocol, stdio, tcp
from twisted.logger import Logger

log = Logger()

_WORKER_MAIN = "import os; os.setpgrp()\nfrom twisted.scripts.twistd import run; run()"
RESTART_DELAY = 1.0  # seconds before a worker that died is started again


class _SharedPort(tcp.Port):
    def createInternetSocket(self):
        sock = super().createInternetSocket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        return sock


class SharedPortEndpoint:
    """A TCP server endpoint whose port other processes may listen on too."""

    def __init__(self, reactor, port: int, interface: str, backlog: int):
        self.reactor, self.port, self.interface, self.backlog = reactor, port, interface, backlog

    def listen(self, factory):
        return defer.execute(self._listen, factory)

    def _listen(self, factory):
        port = _SharedPort(self.port, factory, self.backlog, self.interface, self.reactor)
        port.startListening()
        return port


def check_shareable(option: str, text: str) -> None:
    """ValueError unless several workers can listen on this port endpoint: ``tcp:`` with a
    fixed port number."""
    kind, _, rest = text.partition(":")
    port = rest.split(":", 1)[0]
    if kind != "tcp" or not port.isdigit() or int(port) == 0:
        raise ValueError(f"--workers shares tcp: endpoints with a fixed port number, not --{option} "
                         f"{text} (put TLS in the load balancer in front)")


def shared(endpoint, reactor) -> SharedPortEndpoint:
    """A ``tcp:`` endpoint (``check_shareable``) as one several workers listen on."""
    return SharedPortEndpoint(reactor, endpoint._port, endpoint._interface, endpoint._backlog)


class _ParentGone(protocol.Protocol):
    """Worker 0 holds the other end of a worker's stdin: when it ends (killed, say), so does
    the worker."""

    def __init__(self, reactor):
        self.reactor = reactor

    def connectionLost(self, reason):
        log.warn("chatserv worker: worker 0 is gone: stopping")
        if self.reactor.running:
            self.reactor.stop()


class ParentWatch(service.Service):
    """In workers 1 to N-1: stop when worker 0 ends."""

    def __init__(self, reactor):
        self.reactor = reactor

    def startService(self):
        super().startService()
        stdio.StandardIO(_ParentGone(self.reactor), reactor=self.reactor)


class _Worker(protocol.ProcessProtocol):
    def __init__(self, workers: Workers, number: int):
        self.workers, self.number = workers, number
        self.ended = defer.Deferred()

    def processEnded(self, reason):
        self.ended.callback(None)
        self.workers._ended(self, reason.value.exitCode)


class Workers(service.Service):
    """Worker 0's children: workers 1 to N-1."""

    def __init__(self, reactor, count: int, node_name: str, argv: list[str] | None = None):
        self.reactor = reactor
        self.count = count
        self.node_name = node_name
        self.argv = list(sys.argv if argv is None else argv)
        self._running: dict[int, _Worker] = {}

    def startService(self):
        super().startService()
        for number in range(1, self.count):
            self._start(number)

    def _command(self, number: int) -> list[str]:
        """twistd's own options, then chatserv's as given, then this worker's own."""
        plugin = self.argv.index("chatserv") if "chatserv" in self.argv else len(self.argv)
        # Its own process group: a signal to worker 0's group (a terminal's ^C) reaches worker
        # 0, which stops the others once each.
        return [sys.executable, "-c", _WORKER_MAIN,
                "--nodaemon", "--pidfile=", "chatserv", *self.argv[plugin + 1:],
                f"--worker={number}", f"--node-name={self.node_name}-{number}"]

    def _start(self, number: int):
        worker = self._running[number] = _Worker(self, number)
        self.reactor.spawnProcess(worker, sys.executable, self._command(number), env=dict(os.environ),
                                  childFDs={0: "w", 1: 1, 2: 2})

    def _ended(self, worker: _Worker, status):
        if self._running.get(worker.number) is not worker:
            return
        del self._running[worker.number]
        if self.running:
            log.warn("chatserv worker {number} ended (status {status}): starting it again",
                     number=worker.number, status=status)
            self.reactor.callLater(RESTART_DELAY, self._restart, worker.number)

    def _restart(self, number: int):
        if self.running and number not in self._running:
            self._start(number)

    def stopService(self):
        super().stopService()
        workers = list(self._running.values())
        for worker in workers:
            try:
                worker.transport.signalProcess(signal.SIGTERM)
            except OSError:
                pass  # ended already
        return defer.DeferredList([worker.ended for worker in workers])
