"""`dmabuf-emu explore --around RUN_DIR`, first version: confirm a run's predicted races by
re-running it in the simulator, guided by its history (sim/realguide.py, as `replay --race` is),
with one deviation per candidate that reverses the candidate's order.

Rules:
- The candidates are checker/predict.py's over RUN_DIR/history.jsonl (a real or simulated run).
- A reversal holds one side back until the other arrives (RaceFuzzer): for a DMA access paired
  with a copy, free or invalidation window (lost_write, stale_read, write_after_invalidate), the
  guide's duration of that job is stretched so that its last chunk comes HOLD_NS after the other
  side's time in the run. Each reversal is one schedule; --bound is the most deviations a
  schedule may have, and this version makes one (bound >= 1).
- A candidate is confirmed when the guided run's checker reports a race of its kind on its
  buffer by its job (the guide keeps the real job ids) that the same guided replay without the
  deviation does not have (one schedule more, run once), or that the undeviated replay already
  has (`deviations` 0: the run's own schedule, replayed, shows it): that schedule is written to OUT/confirmed-N (a simulated run directory, replayable
  with `replay`) with witness.md (checker/explain.py). Not shrunk in this version.
- Not confirmed, with the reason: `not reproduced` (the reversal ran and no race of its kind on
  its buffer came: an ordering rule the prediction does not model, or the guide did not follow
  the run to that point), `not tried` (unfenced_access and use_after_unmap: a begin would have
  to come earlier, which this version does not do; use_after_unmap is already a race).
- OUT/around.json: candidates, confirmed, not_confirmed, schedules, seconds.
What remains (issue 25 item 2): reorderings of dependent steps the run left open (issue 24's
dependency relation), searching within --bound > 1, and shrinking the confirmed schedule.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any, Callable

HOLD_NS = 2_000_000          # the held side ends this long after the other side came
REVERSIBLE = ("lost_write", "stale_read", "write_after_invalidate")


class AroundError(ValueError):
    """RUN_DIR cannot be explored around (one line says why)."""


def _start_ns(history: Path) -> int:
    with open(history, "rb") as fh:
        for line in fh:
            if b'"control"' in line and b'"exporter"' in line:
                e = json.loads(line)
                if e.get("event") == "control" and e.get("svc") == "exporter" and e.get("op") == "start":
                    return int(e["t_ns"])
    raise AroundError(f"{history} has no start of the exporter: the run never started its workload")


def _races(history: list[bytes]) -> set[tuple[str, Any, str, Any]]:
    """(kind, buffer, importer, job) of every race the checker finds in a history. The guide
    draws each importer's jobs in the real run's order, so a job keeps its real id."""
    from checker.oracle import Oracle

    out: set[tuple[str, Any, str, Any]] = set()

    def count(r: Any) -> None:
        out.add((r.kind, r.job.buffer, r.job.svc, r.job.job))
    oracle = Oracle(on_race=count)
    oracle.run(history)
    oracle.report()
    return out


def around(run_dir: Path, out: Path, *, bound: int = 2, schedules: int = 200, force: bool = False,
           version: str = "", say: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    from checker.explain import write_witness_md
    from checker.predict import PredictRefused, predict_history
    from runtime.runparams import from_mapping
    from sim.realguide import RealGuide
    from sim.run import simulate, simulate_in_memory

    began = time.perf_counter()
    run_dir = Path(run_dir)
    history = run_dir / "history.jsonl"
    try:
        report = json.loads((run_dir / "report.json").read_text())
    except (OSError, ValueError):
        raise AroundError(f"{run_dir} is not a run: no readable report.json") from None
    if not history.exists():
        raise AroundError(f"{history} is missing: the run was not judged")
    theirs = report.get("version")
    if theirs and version and theirs != version and not force:
        raise AroundError(f"{run_dir} is a run of version {theirs}, this is {version}: --force to explore it anyway")
    if bound < 1:
        raise AroundError(f"--bound {bound}: a reversal is one deviation, so the bound must be 1 or more")
    params = from_mapping(report.get("params") or {}, f"{run_dir / 'report.json'} params")
    try:
        pred = predict_history(history)
    except PredictRefused as exc:
        raise AroundError(str(exc)) from None
    s0 = _start_ns(history)
    base = RealGuide.from_history(history, params)
    out.mkdir(parents=True, exist_ok=True)
    confirmed: list[dict[str, Any]] = []
    not_confirmed: list[dict[str, Any]] = []
    tried = 0
    baseline: set[tuple[str, Any, str, Any]] | None = None   # the undeviated guided replay's races
    say(f"explore --around {run_dir}: {pred['candidates']} candidate(s), "
        f"{len(pred['items'])} listed; one reversal each, at most {schedules} schedules")
    for n, cand in enumerate(pred["items"]):
        kind, job, other = cand["kind"], cand["job"], cand["other"]
        label = {"kind": kind, "buffer": cand["buffer"], "gen": cand["gen"], "job": job, "other": other}
        if kind not in REVERSIBLE or other.get("t_ns") is None:
            not_confirmed.append({**label, "reason": "not tried: this version holds a job's end back only "
                                                       "(an earlier begin is not made)"})
            continue
        if cand.get("overlapped"):
            not_confirmed.append({**label, "reason": "not tried: it overlapped in the run itself (a race there)"})
            continue
        if tried >= schedules:
            not_confirmed.append({**label, "reason": f"not tried: past --schedules {schedules}"})
            continue
        guide = copy.deepcopy(base)
        index = int(str(job["svc"]).rsplit("-", 1)[1])
        real = next((j for j in guide.jobs.get(index, []) if j.job == job["job"]), None)
        if real is None:
            not_confirmed.append({**label, "reason": "not tried: the guide has no such job (it never ended)"})
            continue
        real.duration_ns = max(real.duration_ns, other["t_ns"] - s0 - real.begin_ns + HOLD_NS)
        tried += 1
        key = (kind, cand["buffer"], job["svc"], job["job"])
        if baseline is None:
            baseline = _races(simulate_in_memory(params, guide=copy.deepcopy(base), judge=False).history)
            tried += 1
        got = _races(simulate_in_memory(params, guide=copy.deepcopy(guide), judge=False).history)
        deviations = 0 if key in baseline else 1
        if deviations == 0:
            guide = copy.deepcopy(base)     # the replay itself already has it: no deviation needed
        elif key not in got:
            not_confirmed.append({**label, "reason": "not reproduced: the held-back job did not race (an ordering "
                                                       "rule the prediction does not model, or the guided replay "
                                                       "did not follow the run there)"})
            continue
        where = out / f"confirmed-{len(confirmed) + 1}"
        written = simulate(params, where, guide=guide)
        listed = [(k, w) for k in written.report.get("witnesses", {}) for w in written.report["witnesses"][k]]
        index_w = next((i for i, (k, w) in enumerate(listed, 1)
                        if k == kind and (w.get("job") or {}).get("buffer") == cand["buffer"]), 1)
        try:
            write_witness_md(where / "history.jsonl", index_w, where / "witness.md", report=written.report)
        except IndexError:
            pass
        confirmed.append({**label, "dir": str(where), "deviations": deviations})
        say(f"  confirmed {kind} on buffer {cand['buffer']} ({job['svc']} job {job['job']}) -> {where}")
    result_doc = {"run": str(run_dir), "candidates": pred["candidates"], "by_kind": pred["by_kind"],
                  "confirmed": confirmed, "not_confirmed": not_confirmed, "schedules": tried,
                  "bound": bound, "seconds": round(time.perf_counter() - began, 2)}
    (out / "around.json").write_text(json.dumps(result_doc, indent=2, default=str) + "\n")
    return result_doc
