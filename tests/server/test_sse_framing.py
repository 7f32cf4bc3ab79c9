"""An SSE event's data stays one line for every reader, whatever text a model generates."""

from __future__ import annotations

import json

from ziggurat_core.protocol.errors import ErrorDetail, ErrorResponse
from ziggurat_server.sse import sse_event

# Every character `str.splitlines` breaks at (httpx's `aiter_lines` splits the same way).
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def test_generated_line_separators_do_not_split_the_event() -> None:
    text = f"a{LINE_BREAKS}b"
    payload = ErrorResponse(error=ErrorDetail(message=text, type="t", param=None, code=None))
    data = sse_event(payload)
    assert data.splitlines() == [data]
    assert json.loads(data)["error"]["message"] == text
