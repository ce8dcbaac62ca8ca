"""Progress on the command line: the one reporter `run`, `campaign` and `explore` draw with.

The libraries below (sim/explore.py) only tell facts (sim/progress.py); drawing is done here.

Rules:
- Nothing at all with `quiet`.
- `begin(title, total)` on a terminal starts a rich bar: the title, the bar, with `count` done/N,
  the command's line, the time elapsed and, with `eta`, the time left (the time per unit so far
  times the units left). Not on a terminal, with `every_s`, it prints the title and `advance`
  prints the line at most every `every_s` seconds; without, nothing (the command says per unit
  what matters, with `say`).
- `advance(done, line)`: the facts as they are now; `update(facts)`: a schedule search's facts
  (sim/progress.py's Reporter, which this is).
- `status(text)`: one line rewritten in place on a terminal when no bar is drawn (`run`'s).
- `say(text)`: a line of its own, above the bar, or after clearing the status line.
- A stream that cannot be written any more (the terminal closed: EIO, a reader gone: EPIPE) is
  dropped: the command goes on, and cleans up, without it.
"""

from __future__ import annotations

import time
from typing import Any, TextIO

from sim.progress import SearchProgress


class Progress:
    def __init__(self, stream: TextIO, quiet: bool = False) -> None:
        self.stream = stream
        self.quiet = quiet
        self.tty = stream.isatty()
        self._bar: Any = None
        self._task: Any = None
        self._status = ""
        self._every_s: float | None = None
        self._last = 0.0
        self._total: int | None = None
        self._first = 0
        self._began = time.monotonic()
        self._end: float | None = None      # the estimated end (eta)

    # ------------------------------------------------------------------ writing

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            self.quiet = True

    def begin(self, title: str, total: int | None, *, done: int = 0, count: bool = False, eta: bool = False,
              every_s: float | None = 5.0) -> None:
        self._total, self._first, self._every_s = total, done, every_s
        self._began = time.monotonic()
        if self.quiet:
            return
        if not self.tty:
            if every_s is not None:
                self._write(title + "\n")
            return
        from rich.console import Console
        from rich.markup import escape
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress as Bar, ProgressColumn, TextColumn,
                                   TimeElapsedColumn)
        from rich.text import Text
        outer = self

        class TimeLeft(ProgressColumn):
            def render(self, task: Any) -> Text:
                if outer._end is None:
                    return Text("left -:--", style="progress.remaining")
                left = max(0, int(outer._end - time.monotonic()))
                return Text(f"left {left // 60}:{left % 60:02d}", style="progress.remaining")

        columns = [TextColumn(escape(title)), BarColumn(), *([MofNCompleteColumn()] if count else []),
                   TextColumn("{task.fields[line]}"), TimeElapsedColumn(), *([TimeLeft()] if eta else [])]
        self._bar = Bar(*columns, console=Console(file=self.stream), transient=False)
        self._task = self._bar.add_task(title, total=total, completed=done, line="")
        self._bar.start()

    def advance(self, done: int, line: str) -> None:
        now = time.monotonic()
        if self._total is not None and done > self._first:
            self._end = now + (now - self._began) / (done - self._first) * (self._total - done)
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=done, line=line)
        elif not self.tty and self._every_s is not None and now - self._last > self._every_s:
            self._last = now
            self._write("  " + line + "\n")

    def update(self, facts: SearchProgress) -> None:
        """A schedule search's facts: schedules, their rate, the races so far by kind."""
        found = sum(facts.races.values())
        line = f"{facts.schedules} schedules, {facts.rate:,.0f}/s, races {found}" + (
            f" ({', '.join(f'{k} {v}' for k, v in facts.races.items())})" if found else "") + (
            f", {facts.note}" if facts.note else "")
        self.advance(facts.schedules, line)

    def status(self, text: str) -> None:
        if self.quiet or not self.tty or self._bar is not None:
            return
        self._write("\r" + text.ljust(len(self._status)))
        self._status = text

    def say(self, text: str) -> None:
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.console.print(text, markup=False, highlight=False)
            return
        if self._status and self.tty:
            self._write("\r" + " " * len(self._status) + "\r")
            self._status = ""
        self._write(text + "\n")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
