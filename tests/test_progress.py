"""deploy/progress.py: the one reporter run, campaign and explore draw with (not on a terminal here)."""

from __future__ import annotations

import io

from deploy.progress import Progress
from sim.progress import SearchProgress


class Broken(io.StringIO):
    def write(self, text: str) -> int:
        raise OSError(5, "Input/output error")


def test_a_search_is_its_title_then_a_line_at_most_every_few_seconds() -> None:
    out = io.StringIO()
    p = Progress(out)
    p.begin("explore pin random", 100)
    p.update(SearchProgress(3, 12.0, {"lost_write": 1}, "2/9 subtrees"))
    p.update(SearchProgress(4, 12.0, {"lost_write": 1}))          # within every_s: not printed
    p.say("  race: lost_write")
    p.close()
    assert out.getvalue() == ("explore pin random\n  3 schedules, 12/s, races 1 (lost_write 1), 2/9 subtrees\n"
                              "  race: lost_write\n")


def test_quiet_says_nothing_and_a_campaign_says_only_its_own_lines() -> None:
    out = io.StringIO()
    p = Progress(out, quiet=True)
    p.begin("x", 1)
    p.advance(1, "done")
    p.say("hello")
    assert out.getvalue() == ""
    p = Progress(out)
    p.begin("campaign", 2, count=True, eta=True, every_s=None)
    p.advance(1, "races 0 in 0 runs")
    p.status("in place only on a terminal")
    p.say("  [1/2] pin / none / seed-1")
    assert out.getvalue() == "  [1/2] pin / none / seed-1\n"


def test_a_stream_that_cannot_be_written_is_dropped() -> None:
    p = Progress(Broken())
    p.say("first")                # raises inside, not here
    assert p.quiet
    p.say("second")


def test_a_split_level_says_what_finished_ahead_of_the_count() -> None:
    """A long first subtree holds the count (schedules are numbered depth-first); the subtrees
    that finished after it are said, with their schedules, instead of hiding behind a rate of 0."""
    from sim.explore import split_note
    assert split_note(2, 0, 24, False, [], 1679) == "bound 2, 0/24+ subtrees, 1679 cut by sleep sets"
    assert split_note(2, 3, 9, True, [1200, 35], 7) == (
        "bound 2, 3/9 subtrees (2 more finished with 1,235 schedules, counted once those before them are), "
        "7 cut by sleep sets")
