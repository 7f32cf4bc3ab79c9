"""--kv-cache-memory values: byte sizes with decimal or binary units, or a fraction of memory."""

from __future__ import annotations

import pytest
from ziggurat_core.engine.config import parse_memory_size


@pytest.mark.parametrize("value, expected", [
    ("4GiB", 4 * 2**30), ("512MB", 512 * 10**6), ("2g", 2 * 10**9), ("1.5GiB", 3 * 2**29),
    ("3 MiB", 3 * 2**20), (" 1tb ", 10**12), ("100k", 100_000), ("2KiB", 2048), ("5b", 5),
    ("7B", 7), ("1073741824", 2**30), (2**30, 2**30),
    ("0.5", 0.5), (0.25, 0.25), ("1.0", 1.0), (1.0, 1.0), (2.5, 2),
])
def test_accepted_sizes(value: int | float | str, expected: int | float) -> None:
    parsed = parse_memory_size(value)
    assert parsed == expected
    assert type(parsed) is type(expected)  # a float is a fraction, an int a byte count


@pytest.mark.parametrize("value", ["lots", "5 parsecs", "", "-1", "0", "0.0", 0, -0.5, True])
def test_rejected_sizes(value: int | float | str) -> None:
    with pytest.raises(ValueError, match="memory size"):
        parse_memory_size(value)
