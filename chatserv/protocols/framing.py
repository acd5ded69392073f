"""Shared framing: turn a byte stream into bounded frames, and frames back into bytes.

A framer's ``feed`` returns the complete frames found so far; a frame that breaks the rules
comes back as a ``FrameError`` in its place, so the protocol can answer it in order.
"""

from __future__ import annotations

import re

import attrs


@attrs.frozen
class FrameError:
    """A frame that could not be taken. ``fatal``: the stream cannot be resynchronised."""

    reason: str
    fatal: bool = False


class LineFramer:
    """Lines ending in LF (a CR before it is dropped), at most ``max_length`` bytes each.

    An overlong line is reported once and skipped up to its end; the stream goes on.
    """

    __slots__ = ("max_length", "newline", "_buffer", "_skipping")  # one per connection

    def __init__(self, max_length: int, newline: bytes = b"\n"):
        self.max_length = max_length
        self.newline = newline
        self._buffer = b""
        self._skipping = False

    def encode(self, payload: bytes) -> bytes:
        return payload + self.newline

    def feed(self, data: bytes) -> list:
        frames: list = []
        buffer = self._buffer + data
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            if self._skipping:
                self._skipping = False
            elif end - start > self.max_length:
                frames.append(FrameError("line too long"))
            else:
                line = buffer[start:end]
                frames.append(line[:-1] if line.endswith(b"\r") else line)
            start = end + 1
        rest = buffer[start:]
        if len(rest) > self.max_length:
            if not self._skipping:
                frames.append(FrameError("line too long"))
            self._skipping = True
            rest = b""
        self._buffer = rest
        return frames

    @property
    def partial(self) -> bytes:
        """The bytes received after the last newline."""
        return self._buffer

    def take_rest(self) -> bytes:
        """Remove and return the unterminated rest (a client that never ends its line)."""
        rest, self._buffer = self._buffer, b""
        return rest


class LengthPrefixFramer:
    """Frames led by a fixed-width, zero-padded decimal length (seed 000's C++ client).

    A frame longer than ``max_length`` is reported once and its payload skipped as it arrives
    (nothing of it is kept); the stream goes on. A header that is not digits cannot be skipped
    safely: it is reported as fatal.
    """

    def __init__(self, max_length: int, width: int = 10):
        self.max_length = max_length
        self.width = width
        self._buffer = b""
        self._broken = False
        self._skipping = 0  # bytes of an overlong payload still to discard

    def encode(self, payload: bytes) -> bytes:
        return b"%0*d" % (self.width, len(payload)) + payload

    def feed(self, data: bytes) -> list:
        if self._broken:
            return []
        if self._skipping:
            skipped = min(self._skipping, len(data))
            self._skipping -= skipped
            data = data[skipped:]
        self._buffer += data
        frames: list = []
        while len(self._buffer) >= self.width:
            header = self._buffer[: self.width]
            if not header.isdigit():
                return self._break(frames, "bad length header")
            length = int(header)
            if length > self.max_length:
                frames.append(FrameError("frame too long"))
                skipped = min(length, len(self._buffer) - self.width)
                self._skipping = length - skipped
                self._buffer = self._buffer[self.width + skipped :]
                continue
            end = self.width + length
            if len(self._buffer) < end:
                break
            frames.append(self._buffer[self.width : end])
            self._buffer = self._buffer[end:]
        return frames

    def _break(self, frames, reason):
        self._broken = True
        self._buffer = b""
        frames.append(FrameError(reason, fatal=True))
        return frames


# The bytes that matter when finding where a Python literal ends. UTF-8 never uses them inside a
# multi-byte character, so the scan runs on bytes.
_NESTED_SPECIAL = re.compile(rb"""[][(){}'"#]""")
_TOP_SPECIAL = re.compile(rb"""[][(){}'"#\s]""")
_STRING_SPECIAL = {
    b"'": re.compile(rb"[\\\n']"),
    b'"': re.compile(rb'[\\\n"]'),
    b"'''": re.compile(rb"[\\']"),
    b'"""': re.compile(rb'[\\"]'),
}
_WHITESPACE = frozenset(b" \t\n\r\x0b\x0c")
_OPENERS = frozenset(b"([{")
_CLOSERS = frozenset(b")]}")


class LiteralFramer:
    """Python literals sent back to back with no delimiter (seed 003's client sends ``str([...])``).

    A frame ends where its brackets balance again, or where its top-level string closes; a bare
    top-level token (``666``) ends at whitespace. Strings of every quote style are followed
    (single, double, triple; a backslash always takes the next byte, which holds for raw strings
    too) and so are comments, so brackets inside them do not count. Prefixes (``r``, ``b``,
    ``u``, ``rb``...) are just letters before the quote. A single-quoted string still open at a
    line end is broken, as Python says: it comes back as an error, which resynchronises typed
    input. A frame longer than ``max_length`` is reported once and scanned to its end, keeping
    nothing. Only the frame's extent is decided here: ``ast.literal_eval`` decides what it holds.
    """

    def __init__(self, max_length: int):
        self.max_length = max_length
        self._buffer = b""
        self._scanned = 0  # bytes of the buffer already scanned
        self._start: int | None = None  # where the current frame begins; None between frames
        self._depth = 0
        self._quote = b""  # the quote that closes the string being scanned; b"" outside strings
        self._comment = False
        self._skipping = False  # the current frame is too long: scan to its end, keep nothing

    def encode(self, payload: bytes) -> bytes:
        """Nothing to add: a reply is a literal too, delimited the same way."""
        return payload

    @property
    def buffered(self) -> int:
        """Bytes held for an unfinished frame: at most ``max_length``, or the two quotes
        that may begin a triple-quoted string, should the bound be smaller."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list:
        frames: list = []
        buffer = self._buffer + data
        scanned = self._scan(buffer, self._scanned, frames)
        if self._start is not None and not self._skipping and len(buffer) - self._start > self.max_length:
            frames.append(FrameError("request too long"))
            self._skipping = True
        if self._start is None or self._skipping:
            keep = scanned
        else:
            keep, self._start = self._start, 0
        self._buffer = buffer[keep:]
        self._scanned = scanned - keep
        return frames

    def _scan(self, buffer: bytes, at: int, frames: list) -> int:
        """Scan from ``at``; return where scanning stopped (the end, or a byte that needs the next)."""
        end = len(buffer)
        while at < end:
            if self._comment:
                newline = buffer.find(b"\n", at)
                if newline < 0:
                    return end
                self._comment = False
                at = newline
            elif self._quote:
                found = _STRING_SPECIAL[self._quote].search(buffer, at)
                if found is None:
                    return end
                at = found.start()
                if buffer[at] == 0x5C:  # a backslash takes the next byte, whatever it is
                    if at + 1 == end:
                        return at
                    at += 2
                elif buffer[at] == 0x0A:
                    self._fail(frames, "unterminated string")
                    at += 1
                elif buffer.startswith(self._quote, at):
                    at += len(self._quote)
                    self._quote = b""
                    if self._depth == 0:
                        self._end_frame(buffer, at, frames)
                elif self._quote.startswith(buffer[at:]):
                    return at  # perhaps a closing triple quote, cut short
                else:
                    at += 1
            else:
                found = (_TOP_SPECIAL if self._depth == 0 else _NESTED_SPECIAL).search(buffer, at)
                stop = found.start() if found else end
                if stop > at and self._start is None:
                    self._start = at  # a bare token: a number, a name, a string prefix
                if found is None:
                    return end
                at = stop
                byte = buffer[at]
                if byte in _WHITESPACE:  # only searched for at the top level
                    if self._start is not None:
                        self._end_frame(buffer, at, frames)
                    at += 1
                    continue
                if byte == 0x23:  # '#': a comment runs to the line end
                    if self._depth == 0 and self._start is not None:
                        self._end_frame(buffer, at, frames)
                    self._comment = True
                    at += 1
                    continue
                if self._start is None:
                    self._start = at
                if byte in _OPENERS:
                    self._depth += 1
                    at += 1
                elif byte in _CLOSERS:
                    at += 1
                    self._depth -= 1
                    if self._depth <= 0:
                        self._depth = 0
                        self._end_frame(buffer, at, frames)
                else:
                    triple = buffer[at : at + 1] * 3
                    if end - at < 3 and triple.startswith(buffer[at:]):
                        return at  # '' may be an empty string or the start of '''
                    self._quote = triple if buffer.startswith(triple, at) else triple[:1]
                    at += len(self._quote)
        return at

    def _end_frame(self, buffer: bytes, at: int, frames: list):
        start, self._start = self._start, None
        if self._skipping:
            self._skipping = False
        elif at - start > self.max_length:
            frames.append(FrameError("request too long"))
        else:
            frames.append(buffer[start:at])

    def _fail(self, frames: list, reason: str):
        if not self._skipping:
            frames.append(FrameError(reason))
        self._start = None
        self._depth = 0
        self._quote = b""
        self._skipping = False
