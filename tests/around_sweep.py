"""The sweep behind issue 25's "explore around a run" figures; re-run it with

    PYTHONPATH=. python tests/around_sweep.py mutants --out /tmp/around-sweep
    PYTHONPATH=. python tests/around_sweep.py correct --out /tmp/around-sweep
    PYTHONPATH=. python tests/around_sweep.py crossing --out /tmp/around-sweep
    PYTHONPATH=. python tests/around_sweep.py first --out /tmp/around-sweep

mutants: for each resv-fence mutant and revoke+kref-reinit, real runs (`dmabuf-emu run --strategy M
--duration 0.3 --importers 2 --move-rate 5 --seed S`, S = 1, 2, ...: one or two pressure ticks, so
that many runs miss the race; the pin mutants with --pin-ratio 0.25; revoke+kref-reinit with two
revocations of buffers 0 and 1, the first un-revoked: REVOKES; no-kernel-fence-wait with 4 MiB
buffers: LONG_COPY; signal-after-next-map with 16 buffers and a 20 ms think time: FEW_RETURNS) are
made until RUNS of them have a report with no race and no catch finding (checker/findings.py
CATCHES) other than potential_deadlock, and at least one move or revocation begun. A
potential_deadlock is lockdep's prediction, flagged in every run of signal-after-next-map whether
or not the cycle formed: it does not disqualify a run, and it confirms nothing (sim/around.py);
what confirms that mutant is a formed `deadlock` (CONFIRMED_BY), and its row says so. Each kept run
is explored around (sim/around.py, --schedules 200, bound 2, stopping at the first schedule that
confirms a race or a catch; --deviated: what the undeviated guided replay already shows does not
count, a deviation must find it). Prints, per mutant, the runs tried and kept, how many were
confirmed and the median schedules to the confirmation; writes OUT/<mode>.json.
correct: pin, resv-fence, revoke and unmap-hint (--hint-policy conservative) under the plans none
and net, 1 s real runs of run's standard workload (seeds 1 .. --runs; issue 25 asks for 10: about
2.6 CPU hours, 80 runs of which 60 reach the 500-schedule cap): explore --around --schedules 500
must confirm nothing.
crossing: move-notify-ack runs with no race: explore --around must find the crossing map.
first: a 1 s real run of 4 importers: the seconds until the first deviation starts.
Nothing is left in /dev/shm: every run goes down by `dmabuf-emu run` itself.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MUTANTS = ["resv-fence+wait-kernel-only", "resv-fence+wait-write-only", "resv-fence+early-signal",
           "resv-fence+move-pinned", "resv-fence+unpin-stays-deaf", "resv-fence+no-kernel-fence-wait",
           "resv-fence+map-unlocked", "resv-fence+signal-after-next-map", "revoke+kref-reinit"]
PINNED = ("resv-fence+move-pinned", "resv-fence+unpin-stays-deaf")    # their bug needs pinned attachments
# revoke+kref-reinit's bug needs an un-revocation whose lock maps queue behind: buffers 0 and 1 revoked
# at 0.1 s, un-revoked at 0.15 s, revoked again at 0.22 s; invalidate_mappings delayed 3 ms (as the
# mutant's own workload does, protocol/strategies/mutants.py KREF_REINIT_FAULTS)
REVOKES = ["--fault", "revoke:at=0.1,for=0.05,target=0-1", "--fault", "revoke:at=0.22,target=0-1",
           "--fault", "delay:ms=3,op=invalidate_mappings,target=exporter"]
# no-kernel-fence-wait's bug needs a copy longer than a map's round trip: 4 MiB buffers (16 chunks,
# 400 us in the simulator; a 256 KiB copy is one 25 us chunk, over before any map reply: mutants.py)
LONG_COPY = ["--buffer-size", "4MiB"]
# signal-after-next-map deadlocks whenever an importer maps a buffer again while a move holds its
# lock and waits for that importer's held fence: with the default 8 buffers and 1 ms think time it
# formed in 6 of 6 runs (seeds 1-6). 16 buffers and a 20 ms mean think time make that return rarer
# within 0.3 s (3 of seeds 1-6 had no deadlock), so that some runs show lockdep's prediction alone.
FEW_RETURNS = ["--buffers", "16", "--think-ms", "20"]
# What confirms a mutant whose run finding is a prediction: only these kinds count (any other
# catch found, e.g. stuck, is reported but is not its confirmation).
CONFIRMED_BY = {"resv-fence+signal-after-next-map": ("deadlock",)}
CORRECT = [("pin", []), ("resv-fence", []), ("revoke", []), ("unmap-hint", ["--hint-policy", "conservative"])]
PLANS = ("none", "net")


def dmabuf(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "dmabuf-emu"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, timeout=600)


def real_run(strategy: str, seed: int, out: Path, extra: list[str], duration: str = "0.3",
             importers: str = "2", plan: str | None = None) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    args = ([str(ROOT / "deploy" / "plans" / f"{plan}.toml")] if plan else []) + [
        "--strategy", strategy, "--duration", duration, "--importers", importers, "--seed", str(seed),
        "--out", str(out), "--quiet", *extra]
    r = dmabuf("run", *args)
    try:
        return json.loads((out / "report.json").read_text())
    except (OSError, ValueError):
        raise SystemExit(f"run {strategy} seed {seed} wrote no report: {r.stderr.strip()[-300:]}")


def quiet(report: dict[str, Any]) -> bool:
    """No race and no catch finding but potential_deadlock (the runs `explore --around` is for:
    lockdep's prediction is one of its candidates, not a catch of the run), and a move or a
    revocation begun (a run without one has nothing a resv-fence or revoke mutant breaks)."""
    from checker.findings import CATCHES, POTENTIAL_DEADLOCK
    f = report.get("findings", {})
    acted = (report.get("moves") or {}).get("begun", 0) + (report.get("revoke") or {}).get("revocations", 0)
    return not report["races"]["total"] and acted > 0 and not any(
        (f.get(k) or {}).get("count") for k in CATCHES if k != POTENTIAL_DEADLOCK)


def explore_around(run: Path, out: Path, schedules: int, stop_at_first: bool, base_counts: bool = True) -> dict[str, Any]:
    from sim.around import around
    t = time.process_time()
    doc = around(run, out, schedules=schedules, stop_at_first=stop_at_first, base_counts=base_counts)
    doc["cpu_s"] = round(time.process_time() - t, 2)
    return doc


def what(doc: dict[str, Any]) -> str:
    got = [c["race"] for c in doc["confirmed"]] + [c["race"] for c in doc["also_found"]]
    names = dict.fromkeys(f"{r['kind']} b{r['buffer']}" for r in got)   # one deadlock confirms several
    return ", ".join(list(names)[:3]) or "-"


def confirms(doc: dict[str, Any], kinds: tuple[str, ...] | None) -> bool:
    """Whether explore --around confirmed the mutant: anything it confirmed or found, or (kinds)
    only a race or finding of those kinds."""
    got = [c["race"]["kind"] for c in doc["confirmed"] + doc["also_found"]]
    return bool(got) if kinds is None else any(k in kinds for k in got)


def sweep_mutants(out: Path, runs: int, max_seeds: int, schedules: int, only: list[str],
                  base_counts: bool = True, reuse: bool = False) -> dict[str, Any]:
    rows = {}
    for m in only or MUTANTS:
        extra = ["--move-rate", "5"] + (["--pin-ratio", "0.25"] if m in PINNED else []) + (
            REVOKES if m.startswith("revoke+") else []) + (LONG_COPY if m.endswith("no-kernel-fence-wait") else []) + (
            FEW_RETURNS if m.endswith("signal-after-next-map") else [])
        kinds = CONFIRMED_BY.get(m)
        kept, tried, items = 0, 0, []
        for seed in range(1, max_seeds + 1):
            if kept >= runs:
                break
            d = out / "runs" / f"{m}-{seed}"
            tried += 1
            rep = (json.loads((d / "report.json").read_text()) if reuse and (d / "report.json").exists()
                   else real_run(m, seed, d, extra))
            if not quiet(rep):
                continue
            kept += 1
            doc = explore_around(d, out / ("around" if base_counts else "around-deviated") / f"{m}-{seed}",
                                 schedules, True, base_counts)
            items.append({"seed": seed, "confirms": confirms(doc, kinds), "schedule": doc["first_confirmed_schedule"],
                          "schedules": doc["schedules"], "candidates": doc["candidates"], "found": what(doc),
                          "seconds": doc["seconds"], "cpu_s": doc["cpu_s"]})
            print(f"{m} seed {seed}: candidates {doc['candidates']}, confirms {items[-1]['confirms']} at schedule "
                  f"{doc['first_confirmed_schedule']} ({what(doc)}), {doc['schedules']} schedules, {doc['cpu_s']} cpu s",
                  flush=True)
        got = [i for i in items if i["confirms"]]
        rows[m] = {"tried": tried, "kept": kept, "confirmed": len(got), "flags": extra,
                   "confirmed_by": list(kinds) if kinds else "any race or catch",
                   "median_schedules": statistics.median([i["schedule"] for i in got]) if got else None,
                   "runs": items}
        by = f" by a formed {' or '.join(kinds)}" if kinds else ""
        print(f"== {m}: {len(got)}/{kept} confirmed{by} (runs tried {tried}), median schedules "
              f"{rows[m]['median_schedules']}", flush=True)
    return rows


def sweep_correct(out: Path, runs: int, schedules: int) -> dict[str, Any]:
    rows = {}
    for strategy, extra in CORRECT:
        for plan in PLANS:
            items = []
            for seed in range(1, runs + 1):
                d = out / "runs" / f"{strategy}-{plan}-{seed}"
                rep = real_run(strategy, seed, d, extra, duration="1", plan=plan)
                doc = explore_around(d, out / "around" / f"{strategy}-{plan}-{seed}", schedules, False)
                items.append({"seed": seed, "run_races": rep["races"]["total"], "candidates": doc["candidates"],
                              "confirms": doc["confirms"], "found": what(doc), "schedules": doc["schedules"],
                              "not_confirmed": [c["reason"] for c in doc["not_confirmed"]], "cpu_s": doc["cpu_s"]})
                print(f"{strategy} {plan} seed {seed}: run races {rep['races']['total']}, candidates "
                      f"{doc['candidates']}, confirms {doc['confirms']} ({what(doc)}) in {doc['schedules']} "
                      f"schedules, {doc['cpu_s']} cpu s", flush=True)
            rows[f"{strategy} {plan}"] = items
    return rows


def sweep_crossing(out: Path, runs: int, max_seeds: int, schedules: int) -> dict[str, Any]:
    items, tried = [], 0
    for seed in range(1, max_seeds + 1):
        if len(items) >= runs:
            break
        d = out / "runs" / f"move-notify-ack-{seed}"
        tried += 1
        if not quiet(real_run("move-notify-ack", seed, d, [])):
            continue
        doc = explore_around(d, out / "around" / f"move-notify-ack-{seed}", schedules, True)
        items.append({"seed": seed, "confirms": doc["confirms"], "found": what(doc),
                      "schedule": doc["first_confirmed_schedule"], "cpu_s": doc["cpu_s"]})
        print(f"move-notify-ack seed {seed}: {what(doc)} at schedule {doc['first_confirmed_schedule']}", flush=True)
    return {"tried": tried, "runs": items}


def first_deviation(out: Path) -> dict[str, Any]:
    d = out / "runs" / "resv-fence-4x1s"
    real_run("resv-fence", 1, d, [], duration="1", importers="4")
    doc = explore_around(d, out / "around" / "resv-fence-4x1s", 1, False)
    print(f"1 s run of 4 importers: first deviation began after {doc['first_deviation_s']} s", flush=True)
    return {"first_deviation_s": doc["first_deviation_s"], "candidates": doc["candidates"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("mutants", "correct", "crossing", "first"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--runs", type=int, default=None, help="runs kept per mutant (10) or per strategy and plan (3)")
    ap.add_argument("--max-seeds", type=int, default=40)
    ap.add_argument("--schedules", type=int, default=None, help="200 for mutants and crossing, 500 for correct")
    ap.add_argument("--mutant", action="append", default=[], help="only this mutant (repeatable)")
    ap.add_argument("--deviated", action="store_true",
                    help="mutants: what the undeviated guided replay shows does not count (a deviation must find it)")
    ap.add_argument("--reuse", action="store_true", help="mutants: reuse the runs already in OUT/runs")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    began = time.time()
    if a.mode == "mutants":
        result = sweep_mutants(a.out, a.runs or 10, a.max_seeds, a.schedules or 200, a.mutant,
                               base_counts=not a.deviated, reuse=a.reuse)
    elif a.mode == "correct":
        result = sweep_correct(a.out, a.runs or 3, a.schedules or 500)
    elif a.mode == "crossing":
        result = sweep_crossing(a.out, a.runs or 3, a.max_seeds, a.schedules or 200)
    else:
        result = first_deviation(a.out)
    load = os.getloadavg()
    doc = {"mode": a.mode, "result": result, "wall_s": round(time.time() - began, 1),
           "load": [round(x, 2) for x in load]}
    name = a.mode + ("-deviated" if a.deviated else "")
    (a.out / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {a.out / (name + '.json')} (load {load[0]:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
