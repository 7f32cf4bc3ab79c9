"""A Server-Sent Events decoder that does no I/O: bytes in, events out.

It follows the WHATWG event-stream rules: lines end in LF, CRLF or CR (a CR at the end of one
network chunk and an LF at the start of the next are one line ending); lines starting with ':' are
comments; `data` lines of one event are joined with '\\n'; a blank line dispatches the event; an
event without data is dropped; an unterminated event at the end of the stream is dropped. UTF-8
characters split across chunks are decoded correctly.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass

BYTE_ORDER_MARK = "\ufeff"


@dataclass(frozen=True)
class ServerSentEvent:
    data: str
    event: str = "message"
    id: str | None = None
    retry_ms: int | None = None


class SSEDecoder:
    """Feed it network chunks with `feed`; call `flush` once at the end of the stream."""

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending_text = ""  # text after the last complete line
        self._at_stream_start = True
        self._data_lines: list[str] = []
        self._event_type = ""
        self._last_event_id: str | None = None
        self._retry_ms: int | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Decode one chunk; returns the events it completed (possibly none)."""
        text = self._utf8.decode(chunk)
        if self._at_stream_start and text:
            self._at_stream_start = False
            text = text.removeprefix(BYTE_ORDER_MARK)
        return self._consume(self._pending_text + text, final=False)

    def flush(self) -> list[ServerSentEvent]:
        """End of stream: finish the last line; an event never ended by a blank line is dropped."""
        text = self._pending_text + self._utf8.decode(b"", final=True)
        events = self._consume(text, final=True)
        self._data_lines = []
        self._event_type = ""
        return events

    def _consume(self, text: str, *, final: bool) -> list[ServerSentEvent]:
        events: list[ServerSentEvent] = []
        if "\r" not in text:  # the common case: LF-only lines, split in one pass
            *lines, remainder = text.split("\n")
            for line in lines:
                event = self._process_line(line)
                if event is not None:
                    events.append(event)
            return self._finish(remainder, final, events)
        start = 0
        length = len(text)
        while start < length:
            newline = _find_line_end(text, start)
            if newline is None:
                break
            end, next_start = newline
            if text[end] == "\r" and next_start == length and not final:
                # A CR at the very end may be the first half of a CRLF split across chunks.
                break
            event = self._process_line(text[start:end])
            if event is not None:
                events.append(event)
            start = next_start
        return self._finish(text[start:], final, events)

    def _finish(
        self, remainder: str, final: bool, events: list[ServerSentEvent]
    ) -> list[ServerSentEvent]:
        if final and remainder:
            # The last line of the stream had no line ending: it is still a line.
            self._process_line(remainder.rstrip("\r"))
            remainder = ""
        self._pending_text = remainder
        return events

    def _process_line(self, line: str) -> ServerSentEvent | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None  # comment, often a keep-alive
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data_lines.append(value)
        elif field == "event":
            self._event_type = value
        elif field == "id" and "\0" not in value:
            self._last_event_id = value
        elif field == "retry" and value.isascii() and value.isdigit():
            self._retry_ms = int(value)
        # Unknown fields are ignored, as the spec requires.
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        if not self._data_lines:
            self._event_type = ""
            return None
        event = ServerSentEvent(
            data="\n".join(self._data_lines),
            event=self._event_type or "message",
            id=self._last_event_id,
            retry_ms=self._retry_ms,
        )
        self._data_lines = []
        self._event_type = ""
        return event


def _find_line_end(text: str, start: int) -> tuple[int, int] | None:
    """(index of the line terminator, index after it) for the first line ending at or after start."""
    lf = text.find("\n", start)
    cr = text.find("\r", start)
    if cr == -1 and lf == -1:
        return None
    if cr == -1 or (lf != -1 and lf < cr):
        return lf, lf + 1
    if cr + 1 < len(text) and text[cr + 1] == "\n":
        return cr, cr + 2
    return cr, cr + 1
