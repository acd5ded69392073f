"""Options declared once (chatserv.options): a field of a typed config class is a twistd option."""

from __future__ import annotations

from typing import ClassVar

import attrs
import pytest
from twisted.python import usage

from chatserv.options import from_options, option, options_of
from chatserv.protocols.salted import check_version
from chatserv.tap import Options, config_classes


@attrs.frozen
class Example:
    option_prefix: ClassVar[str] = "example-"

    rate: float = option(1.5, "example: a rate")
    version: str = option("", "example: a checked text", coerce=check_version)
    legacy: int = option(7, "example: an older name", name="old-name")
    plain: int = 3


class ExampleOptions(usage.Options):
    optParameters = [o.parameter() for o in options_of(Example)]


def test_one_declaration_gives_the_option_its_default_help_type_and_typed_value():
    assert [(o.name, o.default, o.help) for o in options_of(Example)] == [
        ("example-rate", 1.5, "example: a rate"), ("example-version", "", "example: a checked text"),
        ("old-name", 7, "example: an older name"), ("example-plain", 3, "plain")]
    parsed = ExampleOptions()
    parsed.parseOptions(["--example-rate", "2", "--old-name", "9", "--example-version", "1.2"])
    assert from_options(Example, parsed) == Example(rate=2.0, version="1.2", legacy=9, plain=3)
    with pytest.raises(usage.UsageError):
        ExampleOptions().parseOptions(["--example-version", "soon"])
    with pytest.raises(usage.UsageError):
        ExampleOptions().parseOptions(["--example-plain", "many"])


def test_a_config_made_from_some_options_takes_the_declared_defaults_for_the_rest():
    assert from_options(Example, {"example-plain": 4}) == Example(plain=4)
    assert from_options(Example, {}) == Example()


def test_twistd_help_lists_every_declared_option_once_with_its_declared_default():
    rows = [row[0] for row in Options.optParameters]
    assert len(rows) == len(set(rows))
    defaults = Options()
    for config_class in config_classes():
        for declared in options_of(config_class):
            assert defaults[declared.name] == declared.default
        assert defaults.config(config_class) == config_class()
