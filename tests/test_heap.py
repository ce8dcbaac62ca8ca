"""The range allocator: first fit, coalescing, refusing double frees."""

from __future__ import annotations

import random

import pytest

from protocol.heap import LINE, HeapFull, RangeAllocator


def test_lowest_freed_range_is_reused_first() -> None:
    h = RangeAllocator("vram", 8 * LINE)
    a, b, _ = h.alloc(2 * LINE), h.alloc(2 * LINE), h.alloc(2 * LINE)
    h.free(b, 2 * LINE)
    assert h.alloc(2 * LINE) == b, "a freed range goes to the next allocation at once"
    h.free(a, 2 * LINE)
    assert h.alloc(LINE) == a


def test_full_heap_refuses_with_a_clear_error() -> None:
    h = RangeAllocator("vram", 2 * LINE)
    h.alloc(2 * LINE)
    assert not h.can_fit(LINE)
    with pytest.raises(HeapFull, match="vram"):
        h.alloc(LINE)


def test_double_free_and_out_of_range_are_refused() -> None:
    h = RangeAllocator("sys", 4 * LINE)
    a = h.alloc(2 * LINE)
    h.free(a, 2 * LINE)
    with pytest.raises(ValueError, match="double free"):
        h.free(a, 2 * LINE)
    with pytest.raises(ValueError, match="outside"):
        h.free(4 * LINE, LINE)


def test_random_alloc_free_keeps_the_books_straight() -> None:
    rng = random.Random(5)
    h = RangeAllocator("sys", 64 * LINE)
    live: dict[int, int] = {}
    for _ in range(2000):
        if live and rng.random() < 0.5:
            off = rng.choice(list(live))
            h.free(off, live.pop(off))
        else:
            size = rng.randint(1, 6) * LINE
            try:
                off = h.alloc(size)
            except HeapFull:
                continue
            assert all(off + size <= o or o + s <= off for o, s in live.items()), "overlap"
            live[off] = size
        assert h.used_bytes == sum(live.values())
    for off, size in live.items():
        h.free(off, size)
    assert h.free_bytes == 64 * LINE and h.alloc(64 * LINE) == 0, "everything coalesced back"
