"""LiteralFramer: Python literals back to back, delimited by bracket and quote balance alone."""

import ast
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatserv.protocols.framing import FrameError, LiteralFramer
from tests.test_framing import feed_in_pieces

TOO_LONG = FrameError("request too long")


def frames_of(data: bytes, max_length=1000) -> list:
    return LiteralFramer(max_length).feed(data)


@pytest.mark.parametrize("literal", [
    b"['login', ['alice', 'pw']]",
    b"[666, None]",
    b"['send_room_message', ['alice', 'r', 'brackets ] [ ( } inside']]",
    b"""["it's", 'say "hi"', 'escaped \\' quote ]', "escaped \\" quote ]", 'back\\\\']""",
    b"['''triple ' '' ] quotes''', \"\"\"and \"\" ] [ these\"\"\", '''line\nbreak''']",
    b"[r'raw \\' ] quote', R\"raw \\\\\", rb'x]', Rb'y', BR'z', u'u]', U'v', b'\\x00]', f'{1}']",
    b"[1, # a comment ] with [ brackets and 'quotes\n 2]",
    b"{'a': (1, [2, {3}]), 'b': None}",
    b"('tuple', 'not a list')",
    "['caf\u00e9 ]', '\u6f22\u5b57', '\U0001f600 [']".encode(),
    b"['line continuation \\\n inside a string']",
])
def test_one_literal_is_one_frame_however_it_arrives(literal):
    assert frames_of(literal) == [literal]
    for cut in range(len(literal) + 1):
        assert feed_in_pieces(LiteralFramer(1000), literal, [cut]) == [literal]
    assert feed_in_pieces(LiteralFramer(1000), literal, list(range(len(literal)))) == [literal]


def test_several_literals_in_one_segment_and_whitespace_between():
    data = b"[1, ['a', 'b']][2, ['a', 'b']]  \n\t[666, None]\r\n"
    assert frames_of(data) == [b"[1, ['a', 'b']]", b"[2, ['a', 'b']]", b"[666, None]"]


def test_top_level_strings_and_bare_tokens():
    assert frames_of(b"'a]' b\"x\" 666 None\n") == [b"'a]'", b'b"x"', b"666", b"None"]
    framer = LiteralFramer(100)
    assert framer.feed(b"666") == []  # a bare token ends only at whitespace
    assert framer.feed(b"7 ") == [b"6667"]
    assert framer.feed(b"''") == []  # an empty string, or the start of '''? the next byte says
    assert framer.feed(b" ") == [b"''"]


def test_a_comment_between_requests_is_skipped():
    assert frames_of(b"# hello [\n[1] 2# x\n") == [b"[1]", b"2"]


def test_an_expression_is_cut_into_frames_that_are_not_literals():
    frames = frames_of(b"__import__('os').system('x')[1]")
    assert frames == [b"__import__('os')", b".system('x')", b"[1]"]


def test_stray_closing_brackets_are_frames_of_their_own():
    assert frames_of(b"]['ok']x)") == [b"]", b"['ok']", b"x)"]


def test_a_line_end_in_a_single_quoted_string_is_an_error_that_resynchronises():
    assert frames_of(b"['login', ['alice\n[666, None]") == [FrameError("unterminated string"), b"[666, None]"]
    assert frames_of(b"['''a\n'''][1]") == [b"['''a\n''']", b"[1]"]


def test_a_literal_over_the_limit_is_reported_once_and_skipped_to_its_end():
    framer = LiteralFramer(20)
    assert framer.feed(b"['" + b"x" * 30) == [TOO_LONG]
    assert framer.feed(b"]" * 5 + b"x" * 1000) == []  # still inside the string: nothing kept
    assert framer.buffered <= 3
    assert framer.feed(b"'] ]\n[666, None]") == [b"]", b"[666, None]"]
    assert frames_of(b"[" + b"1," * 20 + b"][2]", max_length=20) == [TOO_LONG, b"[2]"]


def test_unbalanced_brackets_wait_for_more_and_stay_bounded():
    framer = LiteralFramer(20)
    assert framer.feed(b"['login', ['a', 'b']") == []
    assert framer.buffered == 20
    assert framer.feed(b"[666, None]") == [TOO_LONG]
    assert framer.buffered == 0


# Python values, each with a literal for it written in one of the many ways Python allows.

def escaped(text: str, quote: str) -> str:
    body = text.replace("\\", "\\\\").replace(quote[0], "\\" + quote[0])
    return "".join(c if c >= " " or c == "\n" and len(quote) == 3 else f"\\x{ord(c):02x}" for c in body)


@st.composite
def strings(draw):
    text = draw(st.text(st.characters(blacklist_categories=("Cs",)), max_size=12))
    style = draw(st.sampled_from(["repr", "u", "double", "triple", "triple-double", "raw", "bytes"]))
    if style == "raw" and not any(c in text for c in "\\'\n\r\x00"):
        return text, "r'" + text + "'"
    if style == "bytes":
        data = text.encode()
        return data, repr(data)
    quote = {"double": '"', "triple": "'''", "triple-double": '"""'}.get(style, "'")
    source = repr(text) if style in ("repr", "raw") else quote + escaped(text, quote) + quote
    return text, ("u" + source if style == "u" else source)


scalars = st.one_of(
    st.none().map(lambda v: (v, "None")),
    st.booleans().map(lambda v: (v, repr(v))),
    st.integers().map(lambda v: (v, repr(v))),
    st.floats(allow_nan=False).filter(math.isfinite).map(lambda v: (v, repr(v))),
    strings(),
)


def containers(children):
    pairs = st.lists(children, max_size=4)
    return st.one_of(
        pairs.map(lambda items: ([v for v, _ in items], "[" + ", ".join(s for _, s in items) + "]")),
        pairs.map(lambda items: (tuple(v for v, _ in items), "(" + "".join(s + "," for _, s in items) + ")")),
        st.lists(st.tuples(strings(), children), max_size=3).map(lambda items: (
            {k: v for (k, _), (v, _) in items},
            "{" + ", ".join(f"{ks}: {vs}" for (_, ks), (_, vs) in items) + "}")),
    )


literals = containers(st.recursive(scalars, containers, max_leaves=12))
separators = st.sampled_from(["", "", " ", "\n", "\r\n\t", "  # note ] [ ' \"\n"])


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(literals, separators), max_size=6), st.lists(st.integers(min_value=0), max_size=12))
def test_any_split_of_a_stream_of_literals_gives_the_same_frames(items, cuts):
    stream = "".join(source + separator for (_, source), separator in items).encode()
    frames = feed_in_pieces(LiteralFramer(1 << 16), stream, cuts)
    assert frames == [source.encode() for (_, source), _ in items]
    for frame, ((value, _), _) in zip(frames, items, strict=True):
        assert ast.literal_eval(frame.decode()) == value


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=40), max_size=20), st.integers(min_value=1, max_value=64))
def test_garbage_never_raises_and_nothing_unbounded_is_kept(chunks, max_length):
    framer = LiteralFramer(max_length)
    for chunk in chunks:
        for frame in framer.feed(chunk):
            assert isinstance(frame, FrameError) or 0 < len(frame) <= max_length
        # Two quote bytes wait to be told from a triple quote's start, whatever the bound
        # (found with max_length 1 and the chunks '"', '"' by a 20-times-longer run).
        assert framer.buffered <= max(max_length, 2)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from([b"[", b"]", b"'", b'"', b"'''", b"\\", b"\n", b"#", b" ", b"x", b"("]),
                max_size=60), st.lists(st.integers(min_value=0), max_size=8))
def test_tricky_bytes_give_the_same_frames_however_they_arrive(parts, cuts):
    stream = b"".join(parts)
    assert feed_in_pieces(LiteralFramer(32), stream, cuts) == LiteralFramer(32).feed(stream)
