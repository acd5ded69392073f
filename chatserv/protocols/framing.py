"""Shared framing: turn a byte stream into bounded frames, and frames back into bytes.

A framer's ``feed`` returns the complete frames found so far; a frame that breaks the rules
comes back as a ``FrameError`` in its place, so the protocol can answer it in order.
"""

from __future__ import annotations

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

    A header that is not digits, or a length over ``max_length``, cannot be skipped
    safely: it is reported as fatal.
    """

    def __init__(self, max_length: int, width: int = 10):
        self.max_length = max_length
        self.width = width
        self._buffer = b""
        self._broken = False

    def encode(self, payload: bytes) -> bytes:
        return b"%0*d" % (self.width, len(payload)) + payload

    def feed(self, data: bytes) -> list:
        if self._broken:
            return []
        self._buffer += data
        frames: list = []
        while len(self._buffer) >= self.width:
            header = self._buffer[: self.width]
            if not header.isdigit():
                return self._break(frames, "bad length header")
            length = int(header)
            if length > self.max_length:
                return self._break(frames, "frame too long")
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
