"""Operational logs (runtime/oplog.py): JSON lines with level and context from a real service, the
level from DMABUF_LOG_LEVEL, text through the simulator's say, and the CLI's options."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from runtime import oplog, security, shm
from tests.conftest import wait_for_file

ROOT = Path(__file__).resolve().parent.parent


def _lines(text: str) -> list[dict]:
    return [json.loads(x) for x in text.splitlines()]


def test_a_service_logger_writes_json_lines_with_level_time_and_context(monkeypatch) -> None:
    monkeypatch.delenv(oplog.LEVEL_ENV, raising=False)
    out = io.StringIO()
    log = oplog.service_logger("importer-3", pid=1003, run_id="r1", incarnation=2, stream=out)
    log.debug("not shown")
    log.info("joined the exporter", slot=3)
    log.warning("retry: gave up", op="map", id=9)
    a, b = _lines(out.getvalue())
    assert list(a)[:3] == ["timestamp", "level", "event"] and a["timestamp"].endswith("Z")
    assert (a["level"], a["event"], a["slot"]) == ("info", "joined the exporter", 3)
    assert {k: a[k] for k in oplog.CONTEXT_KEYS} == {"svc": "importer-3", "pid": 1003, "run_id": "r1", "incarnation": 2}
    assert (b["level"], b["op"]) == ("warning", "map")


@pytest.mark.parametrize("env, shown, complaint", [("warning", ["warning"], False), ("DEBUG", ["debug", "info", "warning"], False),
                                                   ("loud", ["warning", "info", "warning"], True)])
def test_the_level_comes_from_the_environment(monkeypatch, env: str, shown: list[str], complaint: bool) -> None:
    monkeypatch.setenv(oplog.LEVEL_ENV, env)
    out = io.StringIO()
    log = oplog.service_logger("exporter", stream=out)
    log.debug("d")
    log.info("i")
    log.warning("w")
    lines = _lines(out.getvalue())
    assert [x["level"] for x in lines] == shown
    assert ("is not a level" in lines[0]["event"]) == complaint


def test_a_simulated_service_logs_text_through_say_without_a_clock(monkeypatch) -> None:
    monkeypatch.delenv(oplog.LEVEL_ENV, raising=False)
    said: list[str] = []
    log = oplog.service_logger("importer-1", pid=1001, say=said.append).bind(run_id="sim7", incarnation=1)
    log.warning("lease expired", jobs_aborted=2)             # below the simulator's default level
    log.error("the exporter has not answered for longer than its lease", silent_ms=400)
    assert said == ["importer-1 (incarnation 1): the exporter has not answered for longer than its lease [error] silent_ms=400"]
    monkeypatch.setenv(oplog.LEVEL_ENV, "info")
    oplog.service_logger("exporter", say=said.append).info("service started", buffers=4)
    assert said[-1] == "exporter: service started buffers=4"


def test_a_log_line_read_back_for_a_person() -> None:
    out = io.StringIO()
    oplog.service_logger("exporter", pid=1, run_id="r", stream=out, level="info").error("cannot start", error="bad --endpoint")
    assert oplog.readable(out.getvalue().strip()) == "error: cannot start error=bad --endpoint"
    assert oplog.readable("Traceback (most recent call last):") == "Traceback (most recent call last):"
    assert oplog.readable("[1, 2]") == "[1, 2]"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="x")
    oplog.add_log_options(p)
    return p


def test_log_options_parse_and_refuse_an_unknown_level(capsys, tmp_path: Path) -> None:
    a = _parser().parse_args(["--verbose", "--log-level", "Warning"])
    assert a.verbose and oplog.parse_level(a.log_level) == "warning"
    assert _parser().parse_args([]).log_level is None
    from deploy.cli import main
    assert main(["run", "--log-level", "loud", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["dmabuf-emu: --log-level must be one of debug, info, warning, error, critical, got 'loud'"]
    assert not (tmp_path / "r").exists()  # refused before anything was started


def test_the_cli_logger_writes_its_file_and_with_verbose_the_console(tmp_path: Path) -> None:
    try:
        err = io.StringIO()
        args = _parser().parse_args(["--verbose", "--log-level", "warning"])
        log = oplog.configure_cli_logging(args, tmp_path / "logs" / "dmabuf-emu.log", stderr=err, run_id="r9")
        log.info("starting services")
        log.warning("importer-2 restarted", incarnation=1)
        (line,) = _lines((tmp_path / "logs" / "dmabuf-emu.log").read_text())
        assert (line["level"], line["event"], line["run_id"]) == ("warning", "importer-2 restarted", "r9")
        assert "importer-2 restarted" in err.getvalue() and "starting services" not in err.getvalue()
        assert "\x1b[" in err.getvalue() or "NO_COLOR" in os.environ, "coloured"
        assert oplog.service_env() == {oplog.LEVEL_ENV: "warning"}
        quiet = oplog.configure_cli_logging(_parser().parse_args([]), None, stderr=err)
        quiet.error("nowhere to go")                    # neither a file nor --verbose: dropped
        assert oplog.service_env() == {}
    finally:
        oplog.configure_cli_logging(_parser().parse_args([]))


def test_a_log_that_cannot_be_written_is_one_line_naming_it(tmp_path: Path) -> None:
    (tmp_path / "logs").write_text("a file where the log directory should be")
    path = tmp_path / "logs" / "dmabuf-emu.log"
    with pytest.raises(oplog.LogError) as exc:
        oplog.configure_cli_logging(_parser().parse_args([]), path)
    assert str(exc.value) == f"cannot write the log {path}: File exists"


# A SIGTERM that lands right after the exporter published its endpoints, before its loop runs
# (what a loaded machine did to the test below: the process died by the signal's default action)
TERM_AFTER_BEGIN = """
import os, signal, sys
import exporter_svc.service as s
begin = s.ExporterService.begin
def begin_then_term(self):
    begin(self)
    os.kill(os.getpid(), signal.SIGTERM)
s.ExporterService.begin = begin_then_term
from exporter_svc.__main__ import main
raise SystemExit(main(sys.argv[1:]))
"""


def _exporter(d: Path, level: str | None, early_term: bool = False) -> subprocess.CompletedProcess:
    run_id = "ol" + uuid.uuid4().hex[:8]
    creds = security.secrets_dir(d) / "exporter.json"
    security.write_private(creds, {"secret": os.urandom(32).hex()})
    env = {k: v for k, v in os.environ.items() if k != oplog.LEVEL_ENV}
    if level:
        env[oplog.LEVEL_ENV] = level
    cmd = [sys.executable, *(["-c", TERM_AFTER_BEGIN] if early_term else ["-m", "exporter_svc"]),
           "--run-id", run_id, "--out", str(d), "--endpoint", f"ipc://{d}/e.rpc",
           "--control", f"ipc://{d}/e.ctl", "--buffers", "2", "--buffer-size", "64KiB", "--credentials", str(creds)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_file(d / "run" / "exporter.json", proc)
        if not early_term:
            proc.terminate()
        out, err = proc.communicate(timeout=10)
        left = shm.existing(run_id)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for name in shm.existing(run_id):
            shm.unlink(name)
    (d / "run" / "exporter.json").unlink()
    assert not left, f"segments left behind by the exporter: {left}"
    return subprocess.CompletedProcess(cmd, proc.returncode, out.decode(), err.decode())


def test_a_sigterm_as_soon_as_the_exporter_is_announced_is_a_clean_stop(short_dir: Path) -> None:
    r = _exporter(short_dir, None, early_term=True)
    assert r.returncode == 0 and r.stderr == "", (r.returncode, r.stderr)
    lines = _lines(r.stdout)
    assert lines[-1]["event"] == "service stopped" and lines[-1]["reason"] == "signal SIGTERM"


def test_a_real_exporter_logs_start_and_stop_at_info_and_nothing_below_warning(short_dir: Path) -> None:
    r = _exporter(short_dir, None)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    lines = _lines(r.stdout)
    assert [x["event"] for x in lines if x["level"] == "info"][0] == "service started: heaps created, listening"
    assert lines[-1]["event"] == "service stopped" and lines[-1]["reason"] == "signal SIGTERM"
    assert all(x["svc"] == "exporter" and x["run_id"].startswith("ol") for x in lines)
    quiet = _exporter(short_dir, "warning")
    assert quiet.returncode == 0 and quiet.stdout == "", quiet.stdout
