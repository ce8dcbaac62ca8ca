"""The schedule search (dmabuf-emu explore / shrink): what it finds, what it proves, what it keeps.

Races are the checker's: every assertion about a race reads the checker's verdicts (explore.json
is written from them; the saved run directories are judged again here). The longer searches of
the issue's list (medians over 20 seeds, bound 2 with faults) are in tests/test_explore_slow.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy import cli
from deploy.options import RunParams
from sim.explore import Explorer, Limits, Spec, subtrees
from sim.options import SimOptions
from sim.search import exhaustive
from sim.search.trial import Config, SearchChooser, judge, offered, run_trial
from sim.world import WAIT
from tests.helpers import ROOT

SMALL = dict(importers=2, buffers=2, buffer_size=4096, vram_size=4096, queue_depth=1, dma_ms=2.0, think_ms=0.5,
             move_rate=500.0, duration=0.05, seed=1)


def config(strategy: str, jobs: int = 2, moves: int = 2, **kw) -> Config:
    return Config(RunParams(**{**SMALL, "strategy": strategy, **kw}), SimOptions(network="chosen", jobs=jobs, moves=moves))


def explore(out: Path, *argv: str) -> tuple[int, dict]:
    rc = cli.main(["explore", "--out", str(out), "--quiet", "--fail-on-race", *argv])
    data = json.loads((out / "explore.json").read_text()) if (out / "explore.json").exists() else {}
    return rc, data


def races_of(run_dir: Path) -> set[tuple[str, int]]:
    races, _ = judge((run_dir / "history.jsonl").read_bytes().splitlines(keepends=True))
    return {(r.kind, r.buffer) for r in races}


# ---------------------------------------------------------------------------------- the model

def test_budgets_and_window(tmp_path: Path) -> None:
    """--dma-jobs and --moves bound the run; the search decides only inside the window."""
    trial = run_trial(config("pin", jobs=3, moves=1), SearchChooser(0), keep_history=True)
    events = [json.loads(x) for x in trial.history]
    begins = [e for e in events if e["event"] == "dma_begin"]
    assert {e["svc"] for e in begins} == {"importer-1", "importer-2"}
    assert all(sum(e["svc"] == s for e in begins) == 3 for s in ("importer-1", "importer-2"))
    wanted = [e for e in events if e["event"] in ("move_begin", "move_refused", "move_queued")]
    assert 1 <= len(wanted) <= 2          # one wanted move (and the promotion an eviction brings)
    assert trial.error is None and trial.window_steps > 0


def test_links_wait_for_their_receivers_work() -> None:
    """A frame due while its receiver has work of its own is read after that work."""
    opts = ["exporter", "importer-1.dma", "net.importer-1>exporter", "net.exporter>importer-2", WAIT]
    assert [opts[i] for i in offered(opts)] == ["exporter", "importer-1.dma", "net.exporter>importer-2", WAIT]
    assert offered(["net.exporter>importer-1", "importer-10"]) == [0, 1]


def test_trial_is_deterministic() -> None:
    from sim.search.random import RandomChooser
    cfg = config("move-notify-ack")
    a, b = run_trial(cfg, RandomChooser(5, 3)), run_trial(cfg, RandomChooser(5, 3))
    assert a.history_sha256 == b.history_sha256 and a.entries == b.entries


def test_sleep_sets_lose_no_history() -> None:
    """The reduction is sound here: without it (every step dependent on every other) the search
    makes many more schedules and not one history more."""
    cfg = config("resv-fence", jobs=1, moves=1)
    seen = {}
    for reduce in (True, False):
        shas, n = set(), 0
        for trial, _ in exhaustive.explore(cfg, 0, reduce=reduce):
            if not trial.blocked:
                n += 1
                shas.add(trial.history_sha256)
        seen[reduce] = (n, shas)
    assert seen[True][1] == seen[False][1]
    assert seen[True][0] < seen[False][0]


def test_subtrees_cover_the_tree_once() -> None:
    """Exhaustive across workers: at each level the subtrees hold the schedules of the one-process
    search, in its order, with DPOR's choice points in the prefixes too (what races below them
    ask for is merged before the walk moves on there)."""
    from sim.search import dpor
    spec = Spec(config("resv-fence", jobs=1, moves=1), "exhaustive", 1, bound=1)
    for level in (0, 1):
        whole = [t.history_sha256[:16] for t, _, _, cost in dpor.explore(spec.config, level, deepen=False)
                 if not t.blocked and cost == level]
        parts, prefixes, reducible = [], 0, 0
        for prefix, out in subtrees(spec, 3, level):
            parts += [s["sha"] for s in out["schedules"]]
            prefixes += 1
            reducible += any(d["backtrack"] is not None for d in prefix)
        assert parts == whole and prefixes >= 1 + level    # bound 0: one schedule, one subtree
    assert reducible > 0


# ---------------------------------------------------------------------------------- the command

def test_random_finds_move_notify_race_and_keeps_a_replayable_witness(tmp_path: Path) -> None:
    out = tmp_path / "x"
    rc, r = explore(out, "--strategy", "move-notify", "--search", "random", "--seed", "3")
    assert rc == 1
    for key in ("strategy", "search", "schedules", "seconds", "schedules_per_s", "distinct_states", "races",
                "first_race_schedule", "exhausted", "bound", "shrunk"):
        assert key in r
    assert r["first_race_schedule"] <= 10 and r["exhausted"] is False and r["distinct_states"] is None
    saved = out / r["saved"][0]["dir"]
    first = r["saved"][0]["races"][0]
    assert (first["kind"], first["buffer"]) in races_of(saved)
    assert cli.main(["replay", str(saved), "--out", str(tmp_path / "again"), "--quiet"]) == 0
    sh = r["shrunk"]
    assert sh["one_minimal"] is True and sh["events"] <= 12
    assert set(sh) >= {"events", "decisions", "messages", "before", "one_minimal"}
    assert sh["decisions"] <= sh["before"]["decisions"]
    assert (first["kind"], first["buffer"]) in races_of(out / "shrunk")
    assert cli.main(["replay", str(out / "shrunk"), "--out", str(tmp_path / "again2"), "--quiet"]) == 0
    md = (out / "witness.md").read_text()
    assert "sequenceDiagram" in md and "because" in md
    assert json.loads((out / "trace.json").read_text())


def test_a_race_is_an_answer_not_a_failure(tmp_path: Path) -> None:
    """Exit 0 when the search ran, whatever it found; 1 for a race only with --fail-on-race."""
    assert cli.main(["explore", "--strategy", "move-notify", "--no-shrink", "--quiet", "--out", str(tmp_path / "x")]) == 0
    assert json.loads((tmp_path / "x" / "explore.json").read_text())["races"]


def test_pct_finds_the_crossing_map(tmp_path: Path) -> None:
    out = tmp_path / "x"
    rc, r = explore(out, "--strategy", "move-notify-ack", "--search", "pct", "--depth", "2", "--schedules", "200")
    assert rc == 1 and r["pct"]["guarantee"] > 0
    sh = r["shrunk"]
    events = [json.loads(x) for x in (out / "shrunk" / "history.jsonl").read_text().splitlines()]
    job = next(w for w in json.loads((out / "shrunk" / "report.json").read_text())["witnesses"][sh["kind"]]
               if w["job"]["buffer"] == sh["buffer"])["job"]
    svc, att, begin = job["svc"], job["attachment"], job["begin_t_ns"]
    mapped = [e for e in events if e["svc"] == svc and e["event"] == "map" and e["attachment"] == att
              and e["t_ns"] <= begin][-1]
    notified = [e for e in events if e["svc"] == svc and e["event"] == "move_notify_received"
                and e["attachment"] == att and e["t_ns"] <= mapped["t_ns"]]
    served = [e for e in events if e["svc"] == "exporter" and e["event"] == "map_served" and e["id"] == mapped["id"]
              and e["attachment"] == att]
    sent = [e for e in events if e["event"] == "move_notify_sent" and e["attachment"] == att]
    # the map reply that started the job was served after move_notify went out and reached the
    # importer after move_notify did: it crossed the notification
    assert notified and served and sent and sent[0]["t_ns"] <= served[-1]["t_ns"]
    assert "crossed move_notify" in (out / "witness.md").read_text()


def test_exhaustive_unmap_hint_conservative_is_exhausted(tmp_path: Path) -> None:
    rc, r = explore(tmp_path / "x", "--strategy", "unmap-hint", "--hint-policy", "conservative",
                    "--search", "exhaustive", "--bound", "1")
    assert rc == 0 and r["exhausted"] is True and r["races"] == {} and r["schedules"] > 1
    assert r["first_race_schedule"] is None and r["bound"] == 1


def test_exhaustive_finds_move_notify(tmp_path: Path) -> None:
    rc, r = explore(tmp_path / "x", "--strategy", "move-notify", "--search", "exhaustive", "--no-shrink")
    assert rc == 1 and r["first_race_schedule"] >= 1 and not r["exhausted"] and r["shrunk"] is None


def test_rogue_device_gives_use_after_unmap(tmp_path: Path) -> None:
    rc, r = explore(tmp_path / "x", "--strategy", "revalidate", "--search", "random", "--fault", "rogue",
                    "--schedules", "50", "--all", "--no-shrink")
    assert rc == 1 and r["races"].get("use_after_unmap")
    uau = next(s for s in r["saved"] if s["races"][0]["kind"] == "use_after_unmap")
    assert ("use_after_unmap", uau["races"][0]["buffer"]) in races_of(tmp_path / "x" / uau["dir"])


def test_resume_goes_on_where_it_stopped(tmp_path: Path) -> None:
    out = tmp_path / "x"
    rc, r = explore(out, "--strategy", "pin", "--search", "random", "--schedules", "20")
    assert rc == 0 and r["schedules"] == 20 and r["races"] == {}
    rc, r = explore(out, "--strategy", "pin", "--search", "random", "--schedules", "30")
    assert rc == 0 and r["schedules"] == 30
    # the exhaustive search too: a capped run, then the rest
    ex = tmp_path / "ex"
    rc, r1 = explore(ex, "--strategy", "pin", "--search", "exhaustive", "--bound", "1", "--schedules", "5")
    assert not r1["exhausted"] and r1["schedules"] == 5
    rc, r2 = explore(ex, "--strategy", "pin", "--search", "exhaustive", "--bound", "1")
    rc, whole = explore(tmp_path / "whole", "--strategy", "pin", "--search", "exhaustive", "--bound", "1")
    assert r2["exhausted"] and r2["schedules"] == whole["schedules"]
    # another search in the same directory is refused
    rc = cli.main(["explore", "--out", str(out), "--quiet", "--strategy", "pin", "--search", "pct"])
    assert rc == 2


def test_ctrl_c_keeps_what_was_found(tmp_path: Path) -> None:
    out = tmp_path / "x"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "deploy.cli", "explore", "--strategy", "pin", "--search", "random",
                             "--schedules", "100000", "--quiet", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 60
    while not (out / "explore.state.json").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (out / "explore.state.json").exists()
    proc.send_signal(signal.SIGINT)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, stdout
    r = json.loads((out / "explore.json").read_text())
    assert r["interrupted"] is True and r["schedules"] > 0 and not r["complete"]
    rc, again = explore(out, "--strategy", "pin", "--search", "random", "--schedules", str(r["schedules"] + 5))
    assert rc == 0 and again["schedules"] == r["schedules"] + 5


def test_jobs_give_the_answer_of_one_process(tmp_path: Path) -> None:
    rc1, one = explore(tmp_path / "one", "--strategy", "move-notify-ack", "--search", "random", "--seed", "2",
                       "--no-shrink")
    rc2, two = explore(tmp_path / "two", "--strategy", "move-notify-ack", "--search", "random", "--seed", "2",
                       "--no-shrink", "--jobs", "2")
    assert rc1 == rc2 == 1 and one["first_race_schedule"] == two["first_race_schedule"]
    assert one["saved"][0]["races"] == two["saved"][0]["races"]


def test_dask_local_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    distributed = pytest.importorskip("distributed")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as c:
        rc, r = explore(tmp_path / "d", "--strategy", "move-notify", "--search", "random", "--seed", "4",
                        "--no-shrink", "--scheduler", c.scheduler_address)
        rc2, e = explore(tmp_path / "e", "--strategy", "pin", "--search", "exhaustive", "--bound", "1",
                         "--scheduler", c.scheduler_address)
    rc1, here = explore(tmp_path / "h", "--strategy", "move-notify", "--search", "random", "--seed", "4", "--no-shrink")
    assert rc == rc1 == 1 and r["first_race_schedule"] == here["first_race_schedule"]
    _, e1 = explore(tmp_path / "e1", "--strategy", "pin", "--search", "exhaustive", "--bound", "1")
    assert rc2 == 0 and e["exhausted"] and e["schedules"] == e1["schedules"]


def test_shrink_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x"
    rc, r = explore(out, "--strategy", "unmap-hint", "--search", "random", "--no-shrink")
    assert rc == 1 and r["shrunk"] is None and not (out / "witness.md").exists()
    assert cli.main(["shrink", str(out)]) == 0
    r = json.loads((out / "explore.json").read_text())
    sh = r["shrunk"]
    assert sh["one_minimal"] and sh["kind"] == r["saved"][0]["races"][0]["kind"]
    assert sum(sh["deviations"].values()) <= sum(sh["before"]["deviations"].values())
    assert (out / "witness.md").exists() and "1-minimal" in capsys.readouterr().out


# ---------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("argv, says", [
    (["--search", "dfs"], "--search must be one of random, pct, exhaustive"),
    (["--search", "pct", "--depth", "0"], "--depth must be at least 1"),
    (["--search", "exhaustive", "--bound", "two"], "--bound must be a whole number"),
    (["--search", "random", "--schedules", "-3"], "--schedules must be at least 1"),
    (["--search", "exhaustive", "--bound-kind", "steps"], "--bound-kind must be one of"),
    (["--scheduler", "localhost:8786"], "--scheduler must be a Dask scheduler address"),
    (["--jobs", "0"], "--jobs must be at least 1"),
    (["--time", "soon"], "--time must be a number of seconds"),
    (["--search", "exhaustive", "--importers", "4", "--dma-jobs", "6", "--moves", "6", "--bound", "6"],
     "choice points per schedule"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                          says: str) -> None:
    out = tmp_path / "x"
    rc = cli.main(["explore", "--strategy", "pin", "--out", str(out), *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and says in err and len(err.splitlines()) == 1, err
    assert not (out / "explore.json").exists()
    if "choice points" in says:
        assert "use --bound" in err


def test_shrink_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["shrink", str(tmp_path)]) == 2
    assert "no explore.json" in capsys.readouterr().err


def test_explore_table_caps_an_exhaustive_cell_and_refuses_a_bad_cap(tmp_path: Path, capsys) -> None:
    """--exhaustive-cap stops the exhaustive cell short and the table says so; a cap below 1 is
    one line and exit 2, with nothing run."""
    out = tmp_path / "xt"
    assert cli.main(["explore-table", "--strategies", "resv-fence", "--seeds", "1", "--cap", "2",
                     "--exhaustive-cap", "5", "--out", str(out)]) == 0
    table = json.loads((out / "table.json").read_text())
    ex = table["rows"][0]["exhaustive"]
    assert (ex["exhausted"], ex["schedules"]) == (False, 5) and "--exhaustive-cap 5" in table["command"]
    assert "not exhausted (5)" in (out / "table.md").read_text()
    capsys.readouterr()
    assert cli.main(["explore-table", "--exhaustive-cap", "0", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["dmabuf-emu: explore-table: --exhaustive-cap must be at least 1, got 0"]
    assert not (tmp_path / "bad").exists()
