"""The operational logs seen from the command line (issue 23): `run --verbose` shows levelled,
coloured start-up and shutdown lines; each service's log is JSON lines with a level; --log-level
filters both; a run directory whose logs cannot be written fails in one line with nothing left."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.helpers import cli

RUN = ("run", "--strategy", "move-notify", "--importers", "2", "--duration", "0.5", "--buffers", "4")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("NO_COLOR", None)
    env["FORCE_COLOR"] = "1"
    return env


def _levels(path: Path) -> list[str]:
    return [json.loads(line)["level"] for line in path.read_text().splitlines() if line.strip()]


def test_verbose_shows_coloured_levelled_start_and_stop_lines_and_service_logs_are_json(tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = cli(*RUN, "--verbose", "--out", str(out), env=_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    starts = [ln for ln in lines if "service starting" in ln]
    assert len(starts) == 3 and all("info" in ln for ln in starts)
    assert any("deployment down" in ln for ln in lines)
    assert any("\x1b[" in ln for ln in starts), "the console renderer colours its lines"
    levels = _levels(out / "logs" / "exporter.log")
    assert levels and set(levels) <= {"debug", "info", "warning", "error", "critical"}
    assert "info" in levels
    assert "deployment up" in (out / "logs" / "dmabuf-emu.log").read_text()


def test_log_level_warning_hides_the_info_lines(tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = cli(*RUN, "--verbose", "--log-level", "warning", "--out", str(out), env=_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    assert "service starting" not in r.stderr and "deployment down" not in r.stderr
    for log in ("exporter.log", "importer-1.log", "dmabuf-emu.log"):
        assert "info" not in _levels(out / "logs" / log), log


def test_a_log_directory_that_cannot_be_written_fails_in_one_line_with_nothing_started(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "logs").write_text("a file where the logs directory goes\n")  # as root, chmod would not stop us
    r = cli(*RUN, "--out", str(out), timeout=60)
    assert r.returncode != 0
    errors = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("dmabuf-emu:")]  # after run's header line
    assert len(errors) == 1 and str(out / "logs") in errors[0], r.stderr
    assert not (out / "deploy.json").exists()
