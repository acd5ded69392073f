"""What every part of the domain shares: the text the store can keep, Deferred-returning
coroutines, and what a sink is."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from zope.interface import Interface

from chatserv import errors
from chatserv.text import NOT_UNICODE, encodable


def keepable(text: str, what: str) -> str:
    """``text`` if the store can keep it (UTF-8 can encode it), else errors.Invalid. Every port
    refuses such text as it decodes it: this is the last line of defence."""
    if not encodable(text):
        raise errors.Invalid(f"{what}: {NOT_UNICODE}")
    return text


class ISink(Interface):
    def deliver(event):
        """Render ``event`` on this session's wire (must not raise)."""


def deferred(method):
    """Run an ``async def`` service method as a Deferred, the currency of Twisted callers."""

    def wrapper(*args, **kwargs):
        return Deferred.fromCoroutine(method(*args, **kwargs))

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper
