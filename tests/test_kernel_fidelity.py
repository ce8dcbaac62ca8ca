"""Issue 27: the revocation as merged in 7.1 and the findings that judge it, the close fault, and
every mutant's provenance as docs/kernel-sources.md gives it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from checker.findings import CATCHES, REFCOUNT_WARNING, STUCK
from protocol.strategies import mutants
from runtime import faults
from tests.checker_helpers import mapped
from tests.helpers import ROOT
from tests.test_checker_linux71 import IMP, U, revoked


def _waiting(ended: int | None):
    """Revoke 1 of buffer 0 waits for unmaps from 0.42 ms, importer-1's mapping live (the exporter
    served it); the workload ends at 1.5 ms; importer-1 unmaps (at its leave) at `ended`."""
    h = revoked(unmap=ended)
    h.ev(5 * U, "exporter", "map_served", id=3, importer=IMP, buffer=0, attachment=1, heap="vram", offset=0,
         size=4096, gen=1, moved=False, deferred_ns=0)
    h.ev(420 * U, "exporter", "unmap_wait_begin", buffer=0, revoke=1, importers=[IMP], attachments=[1], bound_ms=None)
    h.ev(1500 * U, "deploy", "workload_stop", errors=0, died=[])
    if ended is not None:
        h.ev(ended + 5 * U, "exporter", "unmap_served", id=ended, importer=IMP, buffer=0, attachment=1)
        h.ev(ended + 10 * U, "exporter", "unmap_wait_end", buffer=0, revoke=1, waited_ns=ended - 410 * U, late=[])
    return h


@pytest.mark.parametrize("ended", [None, 1800 * U])
def test_an_unmap_wait_held_by_a_mapping_is_a_revocation_not_completed_not_stuck(tmp_path: Path, ended) -> None:
    """importer-1 keeps its mapping: 7.1 waits without bound; the importer broke the rule, the
    exporter did not (excused from stuck)."""
    r = _waiting(ended).judge(tmp_path)
    assert r["revoke"]["not_completed"] == 1
    assert r["findings"][STUCK]["count"] == 0
    assert r["findings"][STUCK]["excused"] == {"unmap wait: held by importer-1, still mapped": 1}
    assert r["findings"]["revoke_incomplete"]["count"] == 0


def test_an_unmap_wait_open_with_no_mapping_live_is_stuck(tmp_path: Path) -> None:
    """A wait for nothing (revoke+cleanup-redrain's second drain): stuck, a catch."""
    h = _waiting(None)
    h.unmap(900 * U)
    h.ev(905 * U, "exporter", "unmap_served", id=900 * U, importer=IMP, buffer=0, attachment=1)
    r = h.judge(tmp_path)
    assert r["revoke"]["not_completed"] == 1
    stuck = r["findings"][STUCK]
    assert stuck["count"] == 1 and stuck["items"][0]["what"] == "unmap_wait" and stuck["excused"] == {}


def test_a_refcount_warning_is_a_finding_and_a_catch(tmp_path: Path) -> None:
    h = mapped()
    h.ev(50 * U, "exporter", "refcount_warning", buffer=0, refs=-1, message="refcount_t: underflow; use-after-free")
    r = h.judge(tmp_path)
    f = r["findings"][REFCOUNT_WARNING]
    assert f["count"] == 1 and "refcount_t: underflow; use-after-free" in f["items"][0]["sentence"]
    assert REFCOUNT_WARNING in CATCHES


def test_the_close_fault() -> None:
    assert faults.parse_cli("close:at=0.9,target=0-1") == {"kind": "close", "target": "0+1", "at": 0.9, "for": None,
                                                          "p": 1.0, "op": None}
    with pytest.raises(faults.FaultError, match="'for' does not apply to a close fault"):
        faults.parse_cli("close:at=0.9,for=1")


# ------------------------------------------------------------------------------ provenance

def test_every_mutant_says_where_it_comes_from() -> None:
    for m in mutants.MUTANTS:
        assert m.kind in mutants.KINDS
        if m.kind != mutants.PLAUSIBLE:
            assert re.search(r"\b20[0-9][0-9]\b", m.source), f"{m.base}+{m.name}: a recorded bug has a date"
    kinds = {f"{m.base}+{m.name}": m.kind for m in mutants.MUTANTS}
    assert kinds["revoke+cleanup-redrain"] == mutants.MERGED_BUG
    assert kinds["revoke+kref-reinit"] == kinds["resv-fence+wait-kernel-only"] == mutants.REVIEW_CATCH


def test_kernel_sources_has_a_row_for_every_mutant_with_its_kind() -> None:
    text = (ROOT / "docs" / "kernel-sources.md").read_text()
    rows = {cells[0].strip("` "): cells for cells in (
        [c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
        if line.startswith("| `"))}
    for m in mutants.MUTANTS:
        name = f"{m.base}+{m.name}"
        assert name in rows, f"docs/kernel-sources.md has no row for {name}"
        assert rows[name][2].startswith(m.kind), f"{name}: the page says {rows[name][2]!r}, mutants.py {m.kind!r}"
