"""The layers keep to DESIGN.md: what protocol and web modules may not do, read off their syntax trees."""

from __future__ import annotations

import ast

import attrs

from chatserv.model import Room, User
from tests.support import ROOT

SOURCE = ROOT / "chatserv"
TEXT_OPS = (ast.Eq, ast.NotEq, ast.In, ast.NotIn)


def port_modules():
    """Every module that speaks a wire: the protocols and the web port."""
    return sorted([*(SOURCE / "protocols").rglob("*.py"), *(SOURCE / "web").rglob("*.py")])


def is_error_text(node) -> bool:
    """``exc.message``, ``exc.args`` or ``str(exc)``: an error's words rather than its type."""
    if isinstance(node, ast.Attribute):
        return node.attr in ("message", "args")
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("str", "repr")


def test_no_port_maps_an_error_by_its_text():
    """Errors are told apart by type in each port's one ErrorTable, never by comparing or
    looking up their message (which the domain may reword at any time)."""
    found = []
    for path in port_modules():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Compare) and any(isinstance(op, TEXT_OPS) for op in node.ops):
                suspects = [node.left, *node.comparators]
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("get", "pop"):
                suspects = node.args[:1]
            elif isinstance(node, ast.Subscript):
                suspects = [node.slice]
            else:
                continue
            if any(is_error_text(side) for side in suspects):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert found == []


MUTABLE = {"members", "topic", "public_key"}  # what changes on a model object after it is made


def test_ports_ask_the_service_and_never_touch_model_internals():
    """Protocols and the web port ask (``is_member``, ``members``, ``topic``...) and never read
    a room's member set or a changing field, nor set any field of a user or room: what the
    service holds today, a store or another node may hold tomorrow."""
    fields = {f.name for model in (User, Room) for f in attrs.fields(model)}
    found = []
    for path in port_modules():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Attribute) or ast.unparse(node.value).endswith("service"):
                continue  # asking the service (service.members(room)) is the way
            own = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            written = isinstance(node.ctx, ast.Store | ast.Del) and node.attr in fields and not own
            if node.attr in MUTABLE or written:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert found == []


def test_the_web_port_shares_wire_helpers_with_the_protocols_and_imports_none_of_theirs():
    """BadRequest, ErrorTable, json_object, the request queue, the send queue and deadlines are
    in chatserv.wire, for every port: chatserv.web takes nothing from chatserv.protocols."""
    found = []
    for path in sorted((SOURCE / "web").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            found += [f"{path.relative_to(ROOT)}:{node.lineno}: {name}" for name in names
                      if name.startswith("chatserv.protocols")]
    assert found == []


def test_no_option_is_read_by_its_name_outside_its_declaration():
    """Each option is declared once, in a typed config class (chatserv.options), and code reads
    the config: an ``options["irc-flood-rate"]`` or ``options.get("alive-timeout", 60)`` would
    be a second place for its name and default."""
    found = []
    for path in sorted(SOURCE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Subscript):
                holder, key = node.value, node.slice
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
                holder, key = (node.func.value, node.args[0]) if node.func.attr == "get" else (None, None)
            else:
                continue
            if (holder is not None and ast.unparse(holder).endswith("options")
                    and isinstance(key, ast.Constant) and isinstance(key.value, str)):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert found == []


def test_the_web_port_logs_in_through_the_one_login_path():
    """REST and Socket.IO sessions come from ``ChatService.log_in`` (its throttle, its admit
    and attached steps): no web module attaches a session itself."""
    found = [f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}"
             for path in sorted((SOURCE / "web").rglob("*.py"))
             for node in ast.walk(ast.parse(path.read_text(), str(path)))
             if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "attach"]
    assert found == []
