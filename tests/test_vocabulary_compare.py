"""`dmabuf-emu strategies --vocabulary` and `compare --strategies a,b,FILE`."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.compare import parse_strategies, variants
from protocol import importer as imp
from protocol.exporter import table as ext
from tests.helpers import ROOT, cli

GRACE = str(ROOT / "tests" / "strategies" / "grace_timer.py")


def test_the_vocabulary_lists_every_member_of_both_halves_with_its_rule() -> None:
    r = cli("strategies", "--vocabulary")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    sections = {}
    current = None
    for line in lines:
        if line.startswith("## "):
            half = line.split()[1]
        elif line.startswith("### "):
            current = sections.setdefault((half, line[4:].split(" (")[0]), {})
        elif line and not line.startswith("#") and current is not None:
            name, _, rule = line.partition("  ")
            current[name.strip()] = rule.strip()
    for (half, title), members in (
            (("exporter", "states"), ext.MoveState), (("exporter", "events"), ext.MoveEvent),
            (("exporter", "guards"), ext.Guard), (("exporter", "whom steps address"), ext.Who),
            (("exporter", "steps"), ext.Step), (("importer", "states"), imp.AttState),
            (("importer", "events"), imp.AttEvent), (("importer", "guards"), imp.IGuard),
            (("importer", "steps"), imp.IStep)):
        listed = sections[(half, title)]
        assert set(listed) == {m.value for m in members}, (half, title)
        assert all(listed.values()), [n for n, rule in listed.items() if not rule]   # each has its rule
    assert "start_timer(NAME)" in sections[("exporter", "steps")]["start_timer"]
    assert "[to: live+unpinned]" in sections[("exporter", "steps")]["notify"]


def test_compare_strategies_selects_a_subset_in_order_with_a_file() -> None:
    chosen = variants(parse_strategies(f"resv-fence, unmap-hint,{GRACE}"))
    assert [label for label, _ in chosen] == ["resv-fence", "unmap-hint (optimistic)", "unmap-hint (conservative)",
                                               "grace-timer-test"]
    assert chosen[-1][1] == {"strategy": GRACE}
    # the user's --strategy is not run twice when --strategies names it
    assert [label for label, _ in variants(["pin", GRACE], extra=GRACE)] == ["pin", "grace-timer-test"]
    assert [label for label, _ in variants(["resv-fence+map-unlocked"])] == ["resv-fence+map-unlocked"]


@pytest.mark.parametrize("given, words", [("resv-fence,nope", "got 'nope'"), ("pin,pin", "named twice: pin")])
def test_compare_refuses_a_bad_strategies_list_with_exit_2(tmp_path: Path, given: str, words: str) -> None:
    r = cli("compare", "--sim", "--strategies", given, "--out", str(tmp_path / "c"))
    assert r.returncode == 2 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "c").exists()


def test_compare_runs_the_subset(tmp_path: Path) -> None:
    r = cli("compare", "--sim", "--strategies", f"move-notify,{GRACE}", "--duration", "0.3", "--importers", "2",
            "--out", str(tmp_path / "c"))
    assert r.returncode == 0, r.stderr
    rows = [line.split("|")[1].strip() for line in r.stdout.splitlines()[2:]]
    assert rows == ["move-notify", "grace-timer-test"]
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["grace-timer-test", "move-notify"]


def _summary(races: int, lost: list, not_checked: dict) -> list[str]:
    from deploy.summary import summary_lines
    report = {"races": {"total": races, "lost_write": races}, "moves": {}, "ops": {}, "latency_us": {},
              "bytes_check": {"verdict": "lost writes" if lost else "ok", "buffers": 8, "foreign_lines": 0,
                              "lost_writes": lost, "last_writes_present": 8 - len(lost) - sum(not_checked.values()),
                              "not_checked": not_checked}}
    return [line for line in summary_lines(report, "/tmp/x") if "final bytes" in line or "why ok" in line]


def test_the_summary_says_why_a_lost_write_can_leave_the_final_bytes_ok() -> None:
    lines = _summary(3, [], {"superseded": 1})
    assert lines[0].startswith("  final bytes ok  (last writes present 7 of 8 buffers, not checked 1: superseded 1;")
    assert "why ok with 3 lost_write race(s): only each buffer's last write is compared" in lines[1]
    assert "(or a buffer not checked)" in lines[1]
    assert len(_summary(0, [], {})) == 1                                   # no race: nothing to explain
    assert len(_summary(2, [{"buffer": 0}], {})) == 1                      # the bytes say it themselves
