"""chatserv: one Twisted daemon serving several chat protocols over one service and one store."""

__version__ = "0.1.0"
