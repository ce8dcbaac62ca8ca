"""Sizes people type: 4096, "64KiB", "1MiB", "2M"."""

from __future__ import annotations

import re

_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2,
          "mib": 1024**2, "g": 1024**3, "gb": 1024**3, "gib": 1024**3}


def parse_size(text: str | int) -> int:
    """Bytes from an int or a string with an optional binary unit; ValueError says what was wrong."""
    if isinstance(text, bool):
        raise ValueError(f"expected a size in bytes such as 65536 or '64KiB', got {text!r}")
    if isinstance(text, int):
        if text <= 0:
            raise ValueError(f"expected a positive size, got {text}")
        return text
    m = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"expected a size in bytes such as 65536 or '64KiB', got {text!r}")
    value = int(m.group(1)) * _UNITS[m.group(2).lower()]
    if value <= 0:
        raise ValueError(f"expected a positive size, got {text!r}")
    return value


def format_size(n: int) -> str:
    for unit, div in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= div and n % div == 0:
            return f"{n // div}{unit}"
    return f"{n}B"
