"""Text that every wire and the store can carry: what UTF-8 can encode.

Bytes read off a socket are decoded as UTF-8 and cannot hold a lone UTF-16 surrogate, but a
JSON ``\\ud800`` escape or a Python literal ``'\\ud800'`` can spell one, and no UTF-8 encoder
(SQLite's included) takes it. Every port refuses such input where it decodes it
(``json_object``, the seed 003 literal reader, Socket.IO events), with its own error reply;
the service checks the text it keeps again, as the last line of defence.
"""

from __future__ import annotations

NOT_UNICODE = "text must be valid Unicode"


class UnencodableText(ValueError):
    """Decoded input holds a string UTF-8 cannot encode (a lone surrogate)."""

    def __init__(self):
        super().__init__(NOT_UNICODE)


def encodable(text: str) -> bool:
    """Can ``text`` be encoded as UTF-8?"""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_decoded(value):
    """``value`` (a decoded JSON document or Python literal), if every string in it, keys
    included, is encodable; UnencodableText otherwise. Walks without recursion, however deep."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if not encodable(item):
                raise UnencodableText()
        elif isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            pending.extend(item)
    return value
