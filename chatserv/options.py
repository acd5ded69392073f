"""Options declared once: a typed attrs config class per part, and the twistd options made from it.

Every ``twistd chatserv`` option other than the port endpoints (``chatserv.tap.PORTS``) is a
field of a config class, and nothing else states its name, default or help:

- a protocol's options: its config class, next to its factory, named by the factory's
  ``config_class`` (``IRCConfig`` beside ``IRCFactory``); the factory reads
  ``self.config.flood_rate``;
- the limits every port enforces: ``chatserv.limits.Limits``;
- the password hashing cost: ``chatserv.credentials.HashCost``;
- the daemon's own (store, shutdown grace, ban file): ``chatserv.tap.DaemonConfig``.

Adding an option is one declaration in the right class::

    @attrs.frozen
    class IRCConfig:
        option_prefix: ClassVar[str] = "irc-"

        flood_rate: float = option(5.0, "IRC: commands per second once the burst is spent (0: no limit)")
        network: str = option("chatserv", "IRC: the network name clients show")

``--irc-flood-rate`` is ``option_prefix`` and the field's name with ``-`` for ``_``; its value
is read from the command line with the default's type (``coerce=`` for anything else: a
checked string, a list; it raises ValueError for a bad value). ``name=`` keeps an older
option whose name does not follow the prefix (``--alive-timeout``). ``repeat=True`` makes an
option that may be given many times (``--irc-oper a:x --irc-oper b:y``): its field holds the
tuple of ``coerce(value)`` of each, in order, and its default is ``()``. A plain attrs field
(``max_rooms: int = 100_000``) is an option too, with its name spelled out as help: give it
``option(...)`` for a real help line. ``tap.Options`` lists every declared option in
``--help``; ``from_options`` makes a config from parsed options, or from a test's dict of
just the options it sets (the rest take their declared defaults).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import attrs

_OPTION = "chatserv.option"


@attrs.frozen
class _Declared:
    help: str
    name: str
    coerce: Callable | None
    repeat: bool = False


def option(default, help: str, *, name: str = "", coerce: Callable | None = None, repeat: bool = False):
    """An attrs field that is also a twistd option (see the module docstring)."""
    return attrs.field(default=default, metadata={_OPTION: _Declared(help, name, coerce, repeat)})


@attrs.frozen
class Option:
    """One twistd option as a config class declares it."""

    name: str
    field: str
    default: object
    help: str
    coerce: Callable | None
    repeat: bool = False

    def parameter(self) -> list:
        """The row ``usage.Options.optParameters`` takes."""
        row = [self.name, None, self.default, self.help]
        return row + [self.coerce] if self.coerce is not None else row


def options_of(config_class) -> list[Option]:
    """The options a config class declares, in field order."""
    prefix = getattr(config_class, "option_prefix", "")
    found = []
    for field in attrs.fields(config_class):
        declared = field.metadata.get(_OPTION)
        name = (declared.name if declared else "") or prefix + field.name.replace("_", "-")
        help_text = declared.help if declared else field.name.replace("_", " ")
        coerce = declared.coerce if declared else None
        repeat = bool(declared and declared.repeat)
        if coerce is None and field.default is not None:
            coerce = str if repeat else type(field.default)
        found.append(Option(name, field.name, field.default, help_text, coerce, repeat))
    return found


def from_options(config_class, options: Mapping):
    """A ``config_class`` from parsed options: each field from its option where given, else its
    declared default."""
    given = {o.field: tuple(options[o.name]) if o.repeat else options[o.name]
             for o in options_of(config_class) if o.name in options}
    return config_class(**given)
