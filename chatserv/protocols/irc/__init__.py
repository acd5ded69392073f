"""IRC (RFC 1459/2812 with the IRCv3 basics) over the shared chat service: see connection.py."""

from chatserv.protocols.irc.connection import IRCConnection, IRCFactory

__all__ = ["IRCConnection", "IRCFactory"]
