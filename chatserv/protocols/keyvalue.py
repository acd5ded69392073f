"""Seed 001's ``key:value`` codec, as the real Java chat-room client writes it.

Keys and values alternate, joined by ``:``; a ``\\`` makes the next character literal, so
``msg:hi\\: there:type:broadcast`` is ``{"msg": "hi: there", "type": "broadcast"}``. Keys come
in any order. Decoding follows the client's own decoder: a repeated key keeps its last value,
and a trailing key without a value is dropped. A dangling ``\\`` at the end, which that decoder
would crash on, is refused.

One addition: a line break in a value is written ``\\n`` (``\\r`` for a carriage return), so a
push is always one line for a client that reads lines (most versions of the Java client read
with ``readLine``). Read back here, they are line breaks again; the Java decoder, which makes
the character after ``\\`` literal, shows an ``n`` in their place: a body it shows a little
wrong, rather than a push cut in two. The Java client never writes ``\\n`` itself (it escapes
its own backslashes), so its requests decode as before.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

DELIMITER = ":"
ESCAPE = "\\"
_LINE_BREAKS = {"n": "\n", "r": "\r"}  # ESCAPE + letter: a line break that keeps a line one line


class DecodeError(ValueError):
    """The text is not key:value (a dangling escape at the end)."""


def escape(text: str) -> str:
    text = text.replace(ESCAPE, ESCAPE * 2).replace(DELIMITER, ESCAPE + DELIMITER)
    if "\n" in text or "\r" in text:
        text = text.replace("\n", ESCAPE + "n").replace("\r", ESCAPE + "r")
    return text


def serialise(pairs: Mapping[str, str] | Iterable[tuple[str, str]]) -> str:
    """``key:value:key:value`` with both sides escaped, in the order given."""
    items = pairs.items() if isinstance(pairs, Mapping) else pairs
    return DELIMITER.join(escape(key) + DELIMITER + escape(value) for key, value in items)


def parse(text: str) -> dict[str, str]:
    """The pairs of one line."""
    parts: list[str] = []
    current: list[str] = []
    chars = iter(text)
    for char in chars:
        if char == ESCAPE:
            literal = next(chars, None)
            if literal is None:
                raise DecodeError("dangling escape")
            current.append(_LINE_BREAKS.get(literal, literal))
        elif char == DELIMITER:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return dict(zip(parts[0::2], parts[1::2], strict=False))
