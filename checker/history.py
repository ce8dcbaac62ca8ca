"""Reading and merging a run's event files.

Rules:
- Every service writes `events/<service>.jsonl`, one JSON object per line, in `t_ns` order
  (its own monotonic clock). `merge_history` k-way merges them (heapq.merge, streaming: one line
  per file in memory) into one history ordered by `t_ns`. Ties are broken by file name, then by
  line number, so the merged order is deterministic and each service's own order is kept.
- Lines are copied byte for byte (only a missing final newline is added); nothing is re-serialised.
- A SIGKILLed service may leave a truncated last line: it is skipped and counted (`truncated`).
  A restarted service appends to the same file, so its first line may be glued to that cut-short
  one: a line that does not parse but holds a valid event starting at a later `{"` keeps that
  event, and the part before it is counted as `truncated`.
  Any other line that is not a JSON object with an integer `t_ns` is skipped and counted
  (`garbled`). A line whose `t_ns` is smaller than the previous one of the same file breaks the
  file's contract; it is kept (merged where its `t_ns` puts it) and counted (`unordered`).
- Empty lines are ignored and not counted.
"""

from __future__ import annotations

import heapq
import os
from pathlib import Path
from typing import IO, Iterator

from checker.jsonio import loads

MergeItem = tuple[int, int, int, bytes]


class HistoryError(FileNotFoundError):
    """The history (or the events it is built from) cannot be read at all."""


MAX_RESYNC_TRIES = 64


def _parse_event(line: bytes) -> int:
    """The line's t_ns; raises ValueError / KeyError / TypeError when it is not an event."""
    t = loads(line)["t_ns"]
    if not isinstance(t, int) or isinstance(t, bool):
        raise TypeError("t_ns is not an int")
    return t


def _resync(line: bytes) -> tuple[int, bytes] | None:
    """An event glued after a cut-short line: (t_ns, its bytes), or None."""
    pos = 0
    for _ in range(MAX_RESYNC_TRIES):
        pos = line.find(b'{"', pos + 1)
        if pos < 0:
            return None
        try:
            return _parse_event(line[pos:]), line[pos:]
        except (ValueError, KeyError, TypeError, IndexError):
            continue
    return None


def _file_items(fh: IO[bytes], file_index: int, stats: dict[str, int]) -> Iterator[MergeItem]:
    prev_t: int | None = None
    for lineno, line in enumerate(fh):
        complete = line.endswith(b"\n")
        if not line.strip():
            continue
        try:
            t = _parse_event(line)
        except (ValueError, KeyError, TypeError, IndexError):
            glued = _resync(line) if complete else None
            if glued is not None:
                stats["truncated"] += 1          # the cut-short line the event was glued to
                t, line = glued
            else:
                # Only a final line lacking its newline can be a write cut short by a kill.
                stats["truncated" if not complete else "garbled"] += 1
                continue
        if prev_t is not None and t < prev_t:
            stats["unordered"] += 1
        prev_t = t
        yield (t, file_index, lineno, line if complete else line + b"\n")


def merge_history(events_dir: Path, out_path: Path, *, stats: dict[str, int] | None = None) -> int:
    """Merge `events_dir/*.jsonl` into `out_path` ordered by t_ns; return the events written.

    `stats`, when given, is filled with `files`, `events`, `truncated`, `garbled`, `unordered`.
    """
    events_dir = Path(events_dir)
    out_path = Path(out_path)
    if not events_dir.is_dir():
        raise HistoryError(f"no events directory at {events_dir}: nothing to merge")
    counts = {"files": 0, "events": 0, "truncated": 0, "garbled": 0, "unordered": 0}
    paths = sorted(p for p in events_dir.glob("*.jsonl") if p.is_file())
    counts["files"] = len(paths)
    tmp = out_path.with_name(out_path.name + ".tmp")
    handles: list[IO[bytes]] = []
    written = 0
    try:
        for p in paths:
            handles.append(open(p, "rb"))
        streams = [_file_items(fh, i, counts) for i, fh in enumerate(handles)]
        with open(tmp, "wb", buffering=1 << 20) as out:
            write = out.write
            # (t, file index, line number) is unique, so the bytes are never compared.
            for item in heapq.merge(*streams):
                write(item[3])
                written += 1
        os.replace(tmp, out_path)
    finally:
        for fh in handles:
            fh.close()
        if tmp.exists():
            tmp.unlink()
    counts["events"] = written
    if stats is not None:
        stats.update(counts)
    return written


def open_history(history_path: Path) -> IO[bytes]:
    """Open a merged history for one streaming pass, with a clear error when it is missing."""
    history_path = Path(history_path)
    if history_path.is_dir():
        raise HistoryError(f"{history_path} is a directory; expected a history.jsonl file "
                           f"(use check_run for a run directory)")
    if not history_path.exists():
        raise HistoryError(f"no history at {history_path}: merge the run's events first "
                           f"(check_run(run_dir, merge=True) or merge_history)")
    return open(history_path, "rb", buffering=1 << 20)
