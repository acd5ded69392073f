"""IRCv3 ``labeled-response``: what a command with a ``label`` tag draws comes back labeled.

Everything the client is sent while the command runs (its replies, its echo, its own JOIN)
is collected: nothing becomes an ``ACK``, one line carries the label, several go in a
``labeled-response`` batch whose opening line carries it. Messages sent before are
delivered first, so no earlier echo lands in the batch; lines for other events reach the
client as usual, outside it.
"""

from __future__ import annotations

from twisted.internet import defer

from chatserv.protocols.irc.message import escape_tag, serialise


class LabelsMixin:
    _captured: list | None = None  # lines written while a labeled command runs

    def capture(self, data: bytes) -> bool:
        """Keep ``data`` for the labeled response being built; False when none is."""
        if self._captured is None:
            return False
        self._captured.append(data)
        return True

    async def labeled(self, label: str, run):
        """Run the command (``run()``) and answer with what it wrote, labeled."""
        await self.settled()
        self._captured = []
        try:
            result = run()
            if isinstance(result, defer.Deferred) or hasattr(result, "__await__"):
                await result
            await self.settled()  # an echo-message echo is part of the answer
        finally:
            captured, self._captured = self._captured, None
        self.send(self.label_lines(label, b"".join(captured).split(b"\r\n")[:-1]))

    def label_lines(self, label: str, lines: list[bytes]) -> bytes:
        tag = f"label={escape_tag(label)}"
        if not lines:
            return serialise("ACK", prefix=self.server, tags={"label": label})
        if len(lines) == 1 or "batch" not in self.caps:
            return _tagged(lines[0], tag) + b"".join(line + b"\r\n" for line in lines[1:])
        self._batches += 1
        reference = str(self._batches)
        opening = serialise("BATCH", "+" + reference, "labeled-response", prefix=self.server,
                            tags={"label": label})
        inner = b"".join(_tagged(line, f"batch={reference}") for line in lines)
        return opening + inner + serialise("BATCH", "-" + reference, prefix=self.server)


def _tagged(line: bytes, tag: str) -> bytes:
    """``line`` (without CR LF) with one more tag, and CR LF."""
    if line.startswith(b"@"):
        return b"@" + tag.encode() + b";" + line[1:] + b"\r\n"
    return b"@" + tag.encode() + b" " + line + b"\r\n"
