"""The shared framers: any split of a stream gives the same frames; nothing unbounded is kept."""

from hypothesis import given
from hypothesis import strategies as st

from chatserv.protocols.framing import FrameError, LengthPrefixFramer, LineFramer


def feed_in_pieces(framer, data: bytes, cuts: list[int]):
    frames, start = [], 0
    for cut in sorted(c % (len(data) + 1) for c in cuts) + [len(data)]:
        frames += framer.feed(data[start:cut])
        start = max(start, cut)
    return frames


lines = st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=20)


@given(lines, st.lists(st.integers(min_value=0), max_size=10))
def test_line_framing_ignores_how_bytes_arrive(payloads, cuts):
    framer = LineFramer(64)
    stream = b"".join(framer.encode(p) for p in payloads)
    expected = [p[:-1] if p.endswith(b"\r") else p for p in payloads]
    assert feed_in_pieces(framer, stream, cuts) == expected


def test_an_overlong_line_is_reported_once_and_skipped():
    framer = LineFramer(8)
    assert framer.feed(b"0123456789") == [FrameError("line too long")]
    assert framer.feed(b"more of it") == []
    assert framer.feed(b"end\r\nok\r\n") == [b"ok"]
    assert framer.feed(b"123456789\nfine\n") == [FrameError("line too long"), b"fine"]


@given(st.lists(st.binary(max_size=50), max_size=20), st.lists(st.integers(min_value=0), max_size=10))
def test_length_prefix_framing_ignores_how_bytes_arrive(payloads, cuts):
    framer = LengthPrefixFramer(64)
    stream = b"".join(framer.encode(p) for p in payloads)
    assert feed_in_pieces(framer, stream, cuts) == payloads


def test_length_prefix_encoding_is_ten_zero_padded_digits():
    assert LengthPrefixFramer(64).encode(b"LOGIN alice pw") == b"0000000014LOGIN alice pw"


def test_an_overlong_frame_is_reported_once_and_skipped():
    """A valid header over the bound: the payload is dropped as it comes, the next frame is read."""
    framer = LengthPrefixFramer(8)
    assert framer.feed(b"0000000012hello") == [FrameError("frame too long")]
    assert framer.feed(b", world") == []
    assert framer.feed(b"0000000004PING") == [b"PING"]
    assert framer.feed(b"0000000009123456789" + b"0000000002ok") == [FrameError("frame too long"), b"ok"]


@given(st.lists(st.binary(max_size=50), max_size=20), st.lists(st.integers(min_value=0), max_size=10))
def test_overlong_frames_are_skipped_however_bytes_arrive(payloads, cuts):
    framer = LengthPrefixFramer(25)
    stream = b"".join(framer.encode(p) for p in payloads)
    expected = [p if len(p) <= 25 else FrameError("frame too long") for p in payloads]
    assert feed_in_pieces(framer, stream, cuts) == expected


@given(st.binary(max_size=200))
def test_length_prefix_garbage_never_raises_and_breaks_at_most_once(data):
    framer = LengthPrefixFramer(64)
    frames = framer.feed(data) + framer.feed(data)
    errors = [f for f in frames if isinstance(f, FrameError)]
    fatal = [i for i, f in enumerate(frames) if isinstance(f, FrameError) and f.fatal]
    assert fatal in ([], [len(frames) - 1])  # nothing is read after the stream broke
    assert all(not e.fatal or e.reason == "bad length header" for e in errors)
    assert all(len(f) <= 64 for f in frames if isinstance(f, bytes))
