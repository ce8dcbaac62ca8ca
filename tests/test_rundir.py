"""No run is overwritten unasked: an --out holding a run is refused in one line, --force replaces it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import deploy.run  # noqa: F401  bound now: run()'s default stream is the sys.stderr of its import
from deploy import rundir
from deploy.cli import main
from deploy.compare import run_dirs
from deploy.demo import dirs_of

FINISHED = {"run_id": "0badcafe", "strategy": "move-notify", "races": {"total": 12}}


def _finished_run(d: Path) -> str:
    d.mkdir(parents=True, exist_ok=True)
    text = json.dumps(FINISHED)
    (d / "report.json").write_text(text)
    return text


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


@pytest.mark.parametrize("argv", [
    ["run", "--strategy", "pin"],
    ["up", "--strategy", "pin"],
    ["sim", "--strategy", "pin"],
])
def test_run_and_up_refuse_an_out_holding_a_run_and_change_nothing(tmp_path: Path, capsys, argv) -> None:
    out = tmp_path / "old"
    before = _finished_run(out)
    assert main([*argv, "--out", str(out)]) == 2
    err = _one_error_line(capsys)
    assert str(out) in err and "--force" in err and "0badcafe" in err and "races 12" in err
    assert (out / "report.json").read_text() == before and sorted(p.name for p in out.iterdir()) == ["report.json"]


def test_a_started_run_counts_too(tmp_path: Path) -> None:
    (tmp_path / "deploy.json").write_text(json.dumps({"run_id": "feedf00d", "strategy": "pin",
                                                      "exporter": {"pid": 2 ** 22 + 1}}))
    assert "feedf00d" in rundir.held_run(tmp_path) and "not judged" in rundir.held_run(tmp_path)
    with pytest.raises(rundir.OutTaken, match="feedf00d"):
        rundir.claim([tmp_path], force=False)
    said: list[str] = []
    rundir.claim([tmp_path], force=True, say=said.append)
    assert said == [f"replacing a run that was started and not judged (run id feedf00d, strategy pin) in {tmp_path}"]


def test_an_empty_or_missing_out_is_fine(tmp_path: Path) -> None:
    rundir.claim([tmp_path, tmp_path / "not-yet"], force=False)
    (tmp_path / "notes.txt").write_text("mine")
    rundir.claim([tmp_path], force=False)


def test_a_running_deployment_is_refused_even_with_force(tmp_path: Path) -> None:
    # a process whose command line names the service modules stands in for a live service
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "exporter_svc"])
    try:
        (tmp_path / "deploy.json").write_text(json.dumps({"run_id": "a11ve000", "strategy": "pin",
                                                          "exporter": {"pid": proc.pid}}))
        with pytest.raises(rundir.OutTaken, match=r"running deployment \(run id a11ve000\).*dmabuf-emu down"):
            rundir.claim([tmp_path], force=True)
    finally:
        proc.kill()
        proc.wait()
    rundir.claim([tmp_path], force=True)


def test_compare_and_demo_check_every_run_directory_before_running_any(tmp_path: Path, capsys) -> None:
    dirs = run_dirs(tmp_path / "cmp")
    _finished_run(dirs[-1])                       # only the last strategy's directory is taken
    assert main(["compare", "--out", str(tmp_path / "cmp")]) == 2
    assert str(dirs[-1]) in _one_error_line(capsys)
    assert [d for d in dirs[:-1] if d.exists()] == [], "nothing ran"
    demo = dirs_of(tmp_path / "demo")
    _finished_run(demo["resv-fence"])
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 2
    assert str(demo["resv-fence"]) in _one_error_line(capsys)
    assert not demo["move-notify"].exists()


def test_bench_refuses_an_earlier_result_and_campaign_a_run_directory(tmp_path: Path, capsys) -> None:
    (tmp_path / "bench.json").write_text("{}")
    assert main(["bench", "--quick", "--dry-run", "--out", str(tmp_path)]) == 2
    assert "bench.json" in _one_error_line(capsys)
    assert main(["bench", "--quick", "--dry-run", "--force", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    run_dir = tmp_path / "a-run"
    _finished_run(run_dir)
    assert main(["campaign", "--strategies", "pin", "--dry-run", "--out", str(run_dir)]) == 2
    assert "a campaign needs a directory of its own" in _one_error_line(capsys)


def test_force_replaces_the_run_and_says_so(short_dir: Path, capsys) -> None:
    _finished_run(short_dir)
    (short_dir / "history.jsonl").write_text('{"old": true}\n')
    assert main(["run", "--strategy", "pin", "--importers", "1", "--duration", "0.3", "--quiet",
                 "--out", str(short_dir), "--force"]) == 0
    err = capsys.readouterr().err
    assert f"replacing a finished run (run id 0badcafe, strategy move-notify, races 12) in {short_dir}" in err
    report = json.loads((short_dir / "report.json").read_text())
    assert report["strategy"] == "pin" and report["run_id"] != "0badcafe"
    assert '"old"' not in (short_dir / "history.jsonl").read_text()
    assert main(["run", "--strategy", "pin", "--out", str(short_dir)]) == 2, "and now that run is kept"


def test_sim_force_replaces_the_run_and_says_so(tmp_path: Path, capsys) -> None:
    _finished_run(tmp_path)
    argv = ["sim", "--strategy", "pin", "--importers", "1", "--duration", "0.2", "--quiet", "--out", str(tmp_path)]
    assert main([*argv, "--force"]) == 0
    assert f"replacing a finished run (run id 0badcafe, strategy move-notify, races 12) in {tmp_path}" in capsys.readouterr().err
    assert json.loads((tmp_path / "report.json").read_text())["mode"] == "sim"
    assert main(argv) == 2, "and now that simulated run is kept"
    assert "already holds a finished run (run id sim1" in _one_error_line(capsys)


def test_a_campaign_still_resumes_into_its_own_directory(tmp_path: Path, capsys) -> None:
    """campaign keeps its resume semantics: finished runs in OUT/runs are skipped, not refused."""
    from deploy.campaign import RunSpec, plan_runs
    from deploy.options import RunParams
    specs, _ = plan_runs(RunParams(duration=1.0), "pin", "none", 1)
    spec: RunSpec = specs[0]
    done = tmp_path / "c" / spec.rel
    done.mkdir(parents=True)
    (done / "report.json").write_text(json.dumps({"races": {"total": 0}, "params": spec.params.as_dict()}))
    assert main(["campaign", "--strategies", "pin", "--duration", "1", "--dry-run", "--out", str(tmp_path / "c")]) == 0
    assert "1 finished, 0 would run" in capsys.readouterr().err
