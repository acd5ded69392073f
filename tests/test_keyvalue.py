"""The seed 001 key:value codec, against the real client's own lines."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatserv.protocols import keyvalue


def test_the_real_clients_lines():
    assert keyvalue.parse("password:pw:port:5679:type:auth:username:alice") == {
        "password": "pw", "port": "5679", "type": "auth", "username": "alice"}
    assert keyvalue.parse(r"msg:hi\: there:from:alice:type:broadcast") == {
        "msg": "hi: there", "from": "alice", "type": "broadcast"}


def test_escapes_backslash_and_colon():
    assert keyvalue.escape(r"a:b\c") == r"a\:b\\c"
    assert keyvalue.serialise({"msg": r"C:\dir", "type": "message"}) == r"msg:C\:\\dir:type:message"
    assert keyvalue.serialise([("b", "1"), ("a", "2")]) == "b:1:a:2"


def test_decodes_as_the_java_decoder_does():
    assert keyvalue.parse("") == {}
    assert keyvalue.parse("type") == {}  # a key without a value is dropped
    assert keyvalue.parse("type:online:extra") == {"type": "online"}
    assert keyvalue.parse("msg:") == {"msg": ""}
    assert keyvalue.parse("a:1:a:2") == {"a": "2"}  # the last value wins
    assert keyvalue.parse(r"k\x:v") == {"kx": "v"}  # an escape makes any character literal


def test_a_dangling_escape_is_refused():
    with pytest.raises(keyvalue.DecodeError):
        keyvalue.parse("type:online\\")


@settings(deadline=None)
@given(st.dictionaries(st.text(), st.text()))
def test_serialise_then_parse_gives_the_same_pairs(pairs):
    assert keyvalue.parse(keyvalue.serialise(pairs)) == pairs


def test_line_breaks_are_escaped_so_a_push_stays_one_line():
    assert keyvalue.serialise({"msg": "one\ntwo\r\nthree"}) == r"msg:one\ntwo\r\nthree"
    assert keyvalue.parse(r"msg:one\ntwo\r\nthree") == {"msg": "one\ntwo\r\nthree"}
    assert keyvalue.parse(r"msg:C\\new") == {"msg": r"C\new"}  # an escaped backslash, then an n
