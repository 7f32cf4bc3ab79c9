"""The SSE decoder on its own: bytes in, events out, no I/O."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from ziggurat import ServerSentEvent, SSEDecoder


def decode_all(*chunks: bytes) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    events.extend(decoder.flush())
    return events


def datas(events: list[ServerSentEvent]) -> list[str]:
    return [event.data for event in events]


def test_single_event() -> None:
    assert decode_all(b'data: {"a": 1}\n\n') == [ServerSentEvent(data='{"a": 1}')]


def test_event_is_only_dispatched_by_the_blank_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: one\n") == []
    assert decoder.feed(b"\n") == [ServerSentEvent(data="one")]


def test_event_split_across_chunks_at_every_byte() -> None:
    body = b"data: hello\n\ndata: world\n\n"
    chunks = [body[i : i + 1] for i in range(len(body))]
    assert datas(decode_all(*chunks)) == ["hello", "world"]


def test_multibyte_utf8_split_across_chunks() -> None:
    body = "data: héllo 🌍\n\n".encode()
    split_inside_emoji = body.index("🌍".encode()) + 2
    events = decode_all(body[:split_inside_emoji], body[split_inside_emoji:])
    assert datas(events) == ["héllo 🌍"]


def test_comments_are_ignored() -> None:
    body = b": keep-alive\n\n:another comment\ndata: x\n: inside an event\n\n"
    assert datas(decode_all(body)) == ["x"]


def test_multi_line_data_is_joined_with_newlines() -> None:
    body = b"data: first\ndata: second\ndata:\ndata: fourth\n\n"
    assert datas(decode_all(body)) == ["first\nsecond\n\nfourth"]


def test_only_one_leading_space_is_stripped() -> None:
    assert datas(decode_all(b"data:  two spaces\ndata:none\n\n")) == [" two spaces\nnone"]


def test_crlf_and_cr_line_endings() -> None:
    assert datas(decode_all(b"data: a\r\n\r\ndata: b\r\rdata: c\n\n")) == ["a", "b", "c"]


def test_crlf_split_between_chunks_is_one_line_ending() -> None:
    # A split "\r" | "\n" must not be read as two line endings (which would end the event early).
    events = decode_all(b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n")
    assert datas(events) == ["a\nb"]


def test_event_names_including_error() -> None:
    body = b'event: error\ndata: {"error": {"message": "boom"}}\n\ndata: plain\n\n'
    events = decode_all(body)
    assert [(event.event, event.data) for event in events] == [
        ("error", '{"error": {"message": "boom"}}'),
        ("message", "plain"),
    ]


def test_event_name_does_not_leak_into_the_next_event() -> None:
    events = decode_all(b"event: ping\ndata: 1\n\ndata: 2\n\n")
    assert [event.event for event in events] == ["ping", "message"]


def test_event_without_data_is_not_dispatched() -> None:
    events = decode_all(b"event: ping\n\ndata: after\n\n")
    assert [(event.event, event.data) for event in events] == [("message", "after")]


def test_done_marker_is_an_ordinary_event_for_the_decoder() -> None:
    assert datas(decode_all(b"data: 1\n\ndata: [DONE]\n\n")) == ["1", "[DONE]"]


def test_id_and_retry_fields() -> None:
    events = decode_all(b"id: 7\nretry: 1500\ndata: x\n\nretry: soon\ndata: y\n\n")
    assert [(event.id, event.retry_ms) for event in events] == [("7", 1500), ("7", 1500)]


def test_field_without_colon_and_unknown_fields() -> None:
    # "data" alone is a data line with an empty value; unknown fields are ignored.
    events = decode_all(b"data\ndata: x\nfoo: bar\n\n")
    assert datas(events) == ["\nx"]


def test_unterminated_event_at_end_of_stream_is_dropped() -> None:
    assert datas(decode_all(b"data: complete\n\ndata: cut off")) == ["complete"]
    assert datas(decode_all(b"data: complete\n\ndata: no blank line\n")) == ["complete"]


def test_byte_order_mark_at_start_is_ignored() -> None:
    assert datas(decode_all(b"\xef\xbb\xbfdata: x\n\n")) == ["x"]


def test_feed_returns_events_as_soon_as_complete() -> None:
    decoder = SSEDecoder()
    assert datas(decoder.feed(b"data: 1\n\ndata: 2\n\ndata: 3")) == ["1", "2"]
    assert datas(decoder.feed(b"\n\n")) == ["3"]
    assert decoder.flush() == []


EVENT_TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"),
    max_size=20,
)


@settings(max_examples=60, deadline=None)
@given(
    payloads=st.lists(EVENT_TEXT, min_size=1, max_size=5),
    line_ending=st.sampled_from(["\n", "\r\n", "\r"]),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
)
def test_any_chunking_gives_the_same_events(
    payloads: list[str], line_ending: str, cuts: list[int]
) -> None:
    body = "".join(f"data: {payload}{line_ending}{line_ending}" for payload in payloads).encode()
    points = sorted({cut % (len(body) + 1) for cut in cuts})
    chunks = [
        body[start:end] for start, end in zip([0, *points], [*points, len(body)], strict=True)
    ]
    # Only the one space after "data:" is stripped, so every payload comes back verbatim.
    assert datas(decode_all(*chunks)) == payloads
