"""What the bytes say: stamping and verifying 64-byte lines in a heap segment, at memory speed.

A line is 16 little-endian uint32 words: [buffer, line, writer, seq, payload * 12]. A write
stamps every line it covers; a read checks words 0 and 1 of every line it covers. A line whose
buffer or index is wrong was written by someone who had no business writing there (a stale
write), or is being read by someone who has no business reading there (a stale read).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LINE = 64
WORDS = LINE // 4
MAX_SAMPLES = 8


@dataclass
class Corruption:
    lines: int                      # bad lines seen
    line: int                       # first bad line (index within the buffer)
    found: tuple[int, int, int, int]  # its (buffer, line, writer, seq)
    samples: list[dict]             # up to MAX_SAMPLES more


class HeapView:
    """numpy view of a heap segment as lines. Drop it (release()) before closing the segment."""

    def __init__(self, name: str, buf: memoryview, size: int) -> None:
        self.name = name
        self.size = size
        self.lines: np.ndarray | None = np.ndarray((size // LINE, WORDS), dtype="<u4", buffer=buf)

    def release(self) -> None:
        self.lines = None

    def rows(self, offset: int, nbytes: int) -> np.ndarray:
        assert self.lines is not None, f"heap {self.name} view released"
        first = offset // LINE
        return self.lines[first:first + nbytes // LINE]


_index_cache: dict[int, np.ndarray] = {}


def _line_indices(n: int) -> np.ndarray:
    idx = _index_cache.get(n)
    if idx is None:
        idx = _index_cache[n] = np.arange(n, dtype="<u4")
    return idx


# The fast paths view each line as 8 little-endian uint64 words: word 0 is (buffer | line << 32),
# word 1 is (writer | seq << 32), words 2..7 are (seq | seq << 32). A stamp builds BLOCK lines in
# a scratch block that stays in the L2 cache, then writes them with one contiguous copy; writing
# the columns of the heap one by one instead touches every line of the heap four times, which
# ran at about 0.35x memcpy (deploy/bench). Services are single-threaded, so one scratch block
# per process is enough.
BLOCK = 2048                                   # lines: 128 KiB
SMALL = 1024                                   # lines: 64 KiB, a DMA chunk of a 256 KiB buffer is ~43
_scratch = np.empty((BLOCK, WORDS // 2), dtype="<u8")
_shifted = np.arange(BLOCK, dtype="<u8") << np.uint64(32)   # line index i in word 0's high half
_U32 = 0xFFFFFFFF


def _shifted_indices(n: int) -> np.ndarray:
    global _shifted
    if _shifted.shape[0] < n:
        _shifted = np.arange(n, dtype="<u8") << np.uint64(32)
    return _shifted[:n]


def stamp(rows: np.ndarray, buffer: int, first_line: int, writer: int, seq: int) -> None:
    """Stamp rows as lines first_line.. of `buffer`, written by `writer` in job `seq`."""
    n = rows.shape[0]
    if not rows.flags.c_contiguous:
        rows[:, 0] = buffer
        np.add(_line_indices(n), first_line, out=rows[:, 1], casting="unsafe")
        rows[:, 2] = writer
        rows[:, 3:] = seq
        return
    out = rows.view("<u8")
    seq &= _U32
    pair = seq | (seq << 32)
    head = (buffer & _U32) | (first_line << 32)
    if n <= SMALL:
        # A chunk this small stays in the cache whatever the order: three column writes cost
        # less than building it in the scratch block first (numpy's per-call overhead dominates).
        np.add(_shifted_indices(n), np.uint64(head), out=out[:, 0])
        out[:, 1] = (writer & _U32) | (seq << 32)
        out[:, 2:] = pair
        return
    m0 = min(BLOCK, n)
    _scratch[:m0, 1] = (writer & _U32) | (seq << 32)
    _scratch[:m0, 2:] = pair
    for s in range(0, n, BLOCK):
        m = min(BLOCK, n - s)
        np.add(_shifted[:m], np.uint64(head + (s << 32)), out=_scratch[:m, 0])
        out[s:s + m] = _scratch[:m]


def verify(rows: np.ndarray, buffer: int, first_line: int) -> Corruption | None:
    """Check every row belongs to `buffer` at its line index; None when all do."""
    n = rows.shape[0]
    # Read each line's stamp once: another process may write it while we look, and the verdict
    # and what we report as found must be the same bytes.
    if rows.flags.c_contiguous:
        snap = np.array(rows.view("<u8")[:, :2], copy=True)   # words 0..3 of every line
        ne = snap[:, 0] != _shifted_indices(n) + np.uint64((buffer & _U32) | (first_line << 32))
        if not ne.any():
            return None
        bad = np.flatnonzero(ne)
        head = snap.view("<u4")
    else:
        head = np.array(rows[:, :4], copy=True)
        expected32 = _line_indices(n) + np.uint32(first_line)
        bad = np.flatnonzero((head[:, 0] != buffer) | (head[:, 1] != expected32))
        if bad.size == 0:
            return None
    first = int(bad[0])
    found = tuple(int(x) for x in head[first])
    samples = [{"line": first_line + int(i), "found": [int(x) for x in head[int(i)]]}
               for i in bad[1:1 + MAX_SAMPLES]]
    return Corruption(int(bad.size), first_line + first, found, samples)  # type: ignore[arg-type]


def copy(dst: np.ndarray, src: np.ndarray) -> None:
    np.copyto(dst, src)


def census(rows: np.ndarray, first_line: int = 0) -> tuple[list[list[int]], int]:
    """What a range holds: the distinct (buffer, writer, seq) stamps with their line counts, and
    how many lines carry a line index other than their position (misplaced)."""
    head = np.array(rows[:, :4], copy=True)
    if head.shape[0] <= SMALL_CENSUS:
        return _census_small(head.tolist(), first_line)
    misplaced = int(np.count_nonzero(head[:, 1] != _line_indices(head.shape[0]) + np.uint32(first_line)))
    if head.shape[0] == 0:
        return [], misplaced
    # Runs of equal stamps (a write covers consecutive lines), then the runs tallied: a few dozen
    # runs per buffer where np.unique(axis=0) sorted every line (10 ms per 256 KiB buffer).
    keys = head[:, [0, 2, 3]]
    starts = np.concatenate(([0], np.flatnonzero(np.any(keys[1:] != keys[:-1], axis=1)) + 1))
    lengths = np.diff(np.append(starts, keys.shape[0]))
    tally: dict[tuple[int, int, int], int] = {}
    for k, c in zip(keys[starts].tolist(), lengths.tolist()):
        key = (k[0], k[1], k[2])
        tally[key] = tally.get(key, 0) + c
    return [[*k, c] for k, c in sorted(tally.items())], misplaced


# A buffer of a few KiB (the schedule search's) is a few dozen lines: read as Python ints, the same
# census costs a tenth of the numpy calls' fixed overhead. The same result, line for line.
SMALL_CENSUS = 256


def _census_small(head: list[list[int]], first_line: int) -> tuple[list[list[int]], int]:
    misplaced = 0
    tally: dict[tuple[int, int, int], int] = {}
    for i, (b, line, w, q) in enumerate(head):
        if line != (i + first_line) & _U32:
            misplaced += 1
        key = (b, w, q)
        tally[key] = tally.get(key, 0) + 1
    return [[*k, c] for k, c in sorted(tally.items())], misplaced
