"""IRC lines with IRCv3 message tags: parsing, serialising, and the bounds around both.

A line is at most 512 bytes with its CR LF, plus tags (IRCv3: a client sends at most 4094
bytes of tag data, a server up to 8191 bytes with the ``@`` and the space). Input is UTF-8:
a line that is not is marked (``Line.valid_utf8``) and decoded with replacement characters;
a client-sent prefix is read and ignored. Server lines never pass 512 bytes: the last
parameter is cut at a character boundary when it must be.
"""

from __future__ import annotations

import datetime
import fnmatch

import attrs

from chatserv.protocols.framing import FrameError, LineFramer

MAX_LINE = 512  # bytes, CR LF included (RFC 1459)
MAX_TAGS = 8191  # bytes of "@tags " the server may send (IRCv3 message-tags)
MAX_CLIENT_TAGS = 4094  # bytes of tag data a client may send, without the "@" and the space

_TAG_ESCAPES = {";": "\\:", " ": "\\s", "\\": "\\\\", "\r": "\\r", "\n": "\\n"}
_TAG_UNESCAPES = {":": ";", "s": " ", "\\": "\\", "r": "\r", "n": "\n"}


class LineTooLong(Exception):
    """The body (512 bytes) or the tags (8191 bytes) of a line are over the limit."""


class IRCFramer(LineFramer):
    """Lines end in LF or CRLF; a bare CR also ends a line, and empty lines are dropped."""

    __slots__ = ()

    def __init__(self):
        super().__init__(MAX_TAGS + MAX_LINE, newline=b"\r\n")

    def feed(self, data: bytes) -> list:
        frames: list = []
        for frame in super().feed(data):
            if isinstance(frame, FrameError):
                frames.append(frame)
            else:
                frames.extend(part for part in frame.split(b"\r") if part.strip(b" "))
        return frames


@attrs.frozen
class Line:
    command: str
    params: tuple[str, ...] = ()
    tags: dict = attrs.field(factory=dict)
    valid_utf8: bool = True  # False: invalid bytes were replaced with U+FFFD

    def param(self, index: int, default: str = "") -> str:
        return self.params[index] if index < len(self.params) else default

    @property
    def client_tags(self) -> dict:
        """The client-only tags (``+name``), which may be relayed to other clients."""
        return {key: value for key, value in self.tags.items() if key.startswith("+")}


def parse(frame: bytes) -> Line:
    """One line from a client; a NUL byte makes it invalid (ValueError)."""
    if b"\x00" in frame:
        raise ValueError("line contains a NUL byte")
    tags = {}
    valid = True
    if frame.startswith(b"@"):
        raw_tags, _, frame = frame.partition(b" ")
        if len(raw_tags) - 1 > MAX_CLIENT_TAGS:
            raise LineTooLong()
        tag_text, valid = _decode(raw_tags[1:])
        tags = _parse_tags(tag_text)
    frame = frame.lstrip(b" ")
    if len(frame) > MAX_LINE - 2:
        raise LineTooLong()
    text, valid_body = _decode(frame)
    valid = valid and valid_body
    if text.startswith(":"):
        text = text.partition(" ")[2].lstrip(" ")  # the client's prefix means nothing
    text, colon, trailing = text.partition(" :")
    words = text.split()
    if not words:
        return Line("", (), tags)
    params = words[1:] + ([trailing] if colon else [])
    return Line(words[0].upper(), tuple(params), tags, valid)


def _decode(data: bytes) -> tuple[str, bool]:
    try:
        return data.decode("utf-8"), True
    except UnicodeDecodeError:
        return data.decode("utf-8", "replace"), False


def _parse_tags(raw: str) -> dict:
    tags = {}
    for item in raw.split(";"):
        key, _, value = item.partition("=")
        if key:
            tags[key] = _unescape(value)
    return tags


def _unescape(value: str) -> str:
    out, chars = [], iter(value)
    for char in chars:
        if char == "\\":
            following = next(chars, "")
            out.append(_TAG_UNESCAPES.get(following, following))
        else:
            out.append(char)
    return "".join(out)


def escape_tag(value: str) -> str:
    return "".join(_TAG_ESCAPES.get(char, char) for char in value)


def _clean(text: str) -> str:
    """A parameter never carries CR, LF or NUL: they would end or break the line."""
    if "\r" in text or "\n" in text or "\x00" in text:
        return text.replace("\r", " ").replace("\n", " ").replace("\x00", " ")
    return text


def serialise(command: str, *params: str, prefix: str = "", tags: dict | None = None) -> bytes:
    """One line, CR LF included; the last parameter is sent as a trailing one when it must be,
    and cut to keep the line (without its tags) within 512 bytes."""
    parts = [f":{prefix}"] if prefix else []
    parts.append(command)
    if params:
        parts.extend(_clean(p) for p in params[:-1])
        last = _clean(params[-1])
        parts.append(f":{last}" if not last or " " in last or last.startswith(":") else last)
    line = " ".join(parts).encode("utf-8", "replace")
    if len(line) > MAX_LINE - 2:
        line = fit(line, MAX_LINE - 2)
    if tags:
        line = tag_prefix(tags) + line
    return line + b"\r\n"


def tag_prefix(tags: dict) -> bytes:
    """``@key=value;... `` for a line, values escaped."""
    return ("@" + ";".join(f"{k}={escape_tag(v)}" if v else k for k, v in tags.items()) + " ").encode(
        "utf-8", "replace")


def fit(data: bytes, budget: int) -> bytes:
    """``data`` cut to at most ``budget`` bytes, never inside a UTF-8 sequence."""
    if len(data) <= budget:
        return data
    cut = budget
    while cut and (data[cut] & 0xC0) == 0x80:
        cut -= 1
    return data[:cut]


def split_text(text: str, budget: int) -> list[str]:
    """Split a body into lines of at most ``budget`` UTF-8 bytes each (at line breaks first)."""
    chunks = []
    for part in text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "").split("\n"):
        encoded = part.encode("utf-8")
        while len(encoded) > budget:
            cut = len(fit(encoded, budget))
            space = encoded.rfind(b" ", 0, cut)
            if space > budget // 2:
                cut = space + 1
            chunks.append(encoded[:cut].decode("utf-8"))
            encoded = encoded[cut:]
        if encoded:
            chunks.append(encoded.decode("utf-8"))
    return chunks or [" "]


def is_number(text: str) -> bool:
    """ASCII digits only (str.isdigit also takes superscripts, which int() refuses)."""
    return text.isascii() and text.isdigit()


def glob_match(pattern: str, text: str) -> bool:
    """IRC wildcards: ``*`` any run of characters, ``?`` one; nothing else is special.

    fnmatch's patterns never backtrack (its stars are atomic), whereas a regex of ``.*`` does,
    exponentially: ``*a*a*a...c`` against a long name held the reactor for hours."""
    return fnmatch.fnmatchcase(text, pattern.replace("[", "[[]"))


def server_time(seconds: float) -> str:
    """The IRCv3 ``time`` tag: UTC with milliseconds."""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


HOST = "chatserv"  # everyone's host part: addresses are never shown


def mask(nick: str, ident: str = "") -> str:
    return f"{nick}!{ident or nick}@{HOST}"


def raw_line(text: str) -> bytes:
    """A server-built line (numerics): cleaned of CR/LF/NUL and cut to 512 bytes."""
    return fit(_clean(text).encode("utf-8", "replace"), MAX_LINE - 2) + b"\r\n"
