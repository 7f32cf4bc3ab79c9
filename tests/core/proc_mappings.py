"""What Linux says about this process's memory mappings (/proc/self/smaps), for the tests of the
kernels' huge-page memory (cpu_kernels/cache_memory.py, cpu_kernels/weight_memory.py)."""

from __future__ import annotations

from pathlib import Path

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def mapping_of(address: int) -> dict[str, str]:
    """The /proc/self/smaps fields of the mapping holding `address` (empty where none does)."""
    fields: dict[str, str] = {}
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if not head.endswith(":") and "-" in head:  # a mapping's first line: start-end ...
            start, end = (int(part, 16) for part in head.split("-"))
            inside = start <= address < end
            if inside:
                fields["Range"] = head
        elif inside:
            name, _, value = line.partition(":")
            fields[name] = value.strip()
    return fields
