"""bench.json -> the targets' verdicts and bench.md (also what `dmabuf-emu bench` prints)."""

from __future__ import annotations

from typing import Any

from deploy.bench.stats import fmt

# (figure, comparison, threshold, what the issue asks)
TARGETS = (
    ("map_rtt_ratio", "<=", 1.3, "the protocol adds little over the transport itself"),
    ("eventlog_ratio", "<=", 2.5, "a history line through structlog at 2.5 x the hand-built orjson line or less"),
    ("dma_write_ratio", ">=", 0.5, "stamped DMA writes at half of memcpy or better"),
    ("dma_read_verify_ratio", ">=", 0.5, "verified DMA reads at half of memcpy or better"),
    ("move_copy_ratio", ">=", 0.7, "the exporter's move copy at 0.7 x memcpy or better"),
    ("scaling_ratio_16_to_1", ">=", 1.0, "16 importers no slower in aggregate than 1"),
    ("checker_events_per_cpu_s", ">=", 200_000, "the checker judges 200,000 events/s or more (per CPU second)"),
    ("checker_rss_growth_ratio", "<=", 1.1, "checker memory flat: 10x the history, same peak RSS"),
    ("predict_events_per_s", ">=", 200_000, "check --predict's pass at 200,000 events or more per CPU second"),
    ("predict_rss_growth_ratio", "<=", 1.1, "prediction memory flat: 10x the history, same peak RSS"),
    ("time_to_first_race_s", "<", 1.0, "move-notify races show up within a second (median)"),
    ("sim_speedup", ">=", 10.0, "the standard workload simulated at 10x real time or faster"),
    ("sim_rss_growth_ratio", "<=", 1.1, "simulator memory flat: 10x the virtual time, same peak RSS"),
    ("explore_schedules_per_s", ">=", 1000.0, "the search runs 1,000 schedules per second on one core"),
    ("pct_vs_random", ">=", 5.0, "PCT reaches the crossing map in a fifth of random's schedules or fewer"),
    ("exhaustive_resv_fence_cpu_s", "<=", 60.0, "exhaustive resv-fence, bound 2, within 60 s on one core"),
)

ROWS = (
    ("zmq_rtt_us", "raw zmq round trip (baseline)", "us"),
    ("map_rtt_us", "map round trip", "us"),
    ("map_rtt_ratio", "map / zmq", "x"),
    ("unmap_rtt_us", "unmap round trip", "us"),
    ("unmap_rtt_ratio", "unmap / zmq", "x"),
    ("eventlog_floor_ns_per_event", "history line, hand-built orjson (baseline)", "ns"),
    ("eventlog_ns_per_event", "history line through structlog", "ns"),
    ("eventlog_ratio", "structlog line / hand-built line", "x"),
    ("memcpy_gbps", "memcpy shm -> shm (baseline)", "GB/s"),
    ("memcpy_private_src_gbps", "memcpy private -> shm (info)", "GB/s"),
    ("dma_write_gbps", "DMA stamped write", "GB/s"),
    ("dma_write_ratio", "DMA write / memcpy", "x"),
    ("dma_read_verify_gbps", "DMA verified read", "GB/s"),
    ("dma_read_verify_ratio", "DMA read / memcpy", "x"),
    ("move_copy_gbps", "exporter move copy", "GB/s"),
    ("move_copy_ratio", "move copy / memcpy", "x"),
    ("scaling_ratio_16_to_1", "ops/s with 16 importers / with 1", "x"),
    ("checker_events_per_s", "checker judge_history, wall clock", "events/s"),
    ("checker_events_per_cpu_s", "checker judge_history, CPU time", "events/CPU s"),
    ("checker_peak_rss_mb", "checker peak RSS, 1M events", "MB"),
    ("checker_peak_rss_tenth_mb", "checker peak RSS, 100k events", "MB"),
    ("checker_rss_growth_ratio", "peak RSS 1M / 100k", "x"),
    ("predict_events_per_s", "check --predict's pass, CPU time", "events/CPU s"),
    ("predict_events_per_wall_s", "check --predict's pass, wall clock", "events/s"),
    ("predict_rss_growth_ratio", "check --predict peak RSS 1M / 100k", "x"),
    ("time_to_first_race_s", "move-notify: time to first race", "s"),
    ("sim_speedup", "sim: virtual s per wall s (standard workload)", "x"),
    ("sim_cpu_speedup", "sim: virtual s per CPU s", "x"),
    ("sim_rss_growth_ratio", "sim peak RSS, long / short run", "x"),
    ("explore_schedules_per_s", "explore: schedules per wall s (one process)", "/s"),
    ("explore_schedules_per_cpu_s", "explore: schedules per CPU s", "/CPU s"),
    ("pct_vs_random", "explore: schedules to the crossing map, random / pct (medians)", "x"),
    ("exhaustive_resv_fence_s", "explore: exhaustive resv-fence bound 2, wall", "s"),
    ("exhaustive_resv_fence_cpu_s", "explore: exhaustive resv-fence bound 2, CPU", "CPU s"),
)


def targets(figures: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for key, op, threshold, why in TARGETS:
        value = figures.get(key, {}).get("median") if isinstance(figures.get(key), dict) else None
        if value is None:
            met = None
        else:
            met = {"<=": value <= threshold, ">=": value >= threshold, "<": value < threshold}[op]
        out.append({"figure": key, "target": f"{op} {threshold:g}", "median": value, "met": met, "why": why})
    return out


def _row(label: str, f: dict[str, Any], unit: str) -> str:
    return f"| {label} | {fmt(f.get('median'))} | {fmt(f.get('min'))} | {fmt(f.get('max'))} | {unit} | {f.get('n', '')} |"


def render_md(result: dict[str, Any]) -> str:
    meta, figs = result["meta"], result["figures"]
    lines = ["# dmabuf-emu bench", ""]
    if meta.get("command"):
        lines += [f"    {meta['command']}", ""]
    lines += [f"{meta['date']}, {meta['cpus']} CPU(s), Python {meta['python']}, {meta['seconds']:g} s; "
              f"load average at the end {', '.join(f'{x:.2f}' for x in meta['loadavg_at_end'])}.",
              "Each figure: median of n repetitions, with min and max; a ratio is taken within each "
              "repetition against the baseline measured in it.", ""]
    lines += ["| figure | median | min | max | unit | n |", "|---|---|---|---|---|---|"]
    for key, label, unit in ROWS:
        if isinstance(figs.get(key), dict):
            lines.append(_row(label, figs[key], unit))
    if "map_cpu_breakdown_us" in figs:
        bd = figs["map_cpu_breakdown_us"]
        lines += ["", "Where a map round trip's CPU goes beyond the floor (us per request, best of 5, "
                      "measured in-process; the rest of a round trip is the two wake-ups and the socket work):", "",
                  "| step | us |", "|---|---|"]
        lines += [f"| {k} | {fmt(v)} |" for k, v in bd.items()]
    if "move_latency_us" in figs:
        runs = figs.get("move_latency_runs", {})
        lines += ["", f"Move latency, `move_begin` to `free` (us), {runs.get('importers')} importers busy, "
                      f"{runs.get('duration_s')} s runs; p50 and p99 of each run, median (min - max) over runs:", "",
                  "| strategy | p50 | p99 | moves | races |", "|---|---|---|---|---|"]
        for name, m in figs["move_latency_us"].items():
            p50, p99 = m["p50"], m["p99"]
            cell = lambda s: "-" if s["median"] is None else f"{fmt(s['median'])} ({fmt(s['min'])} - {fmt(s['max'])})"  # noqa: E731
            lines.append(f"| {name} | {cell(p50)} | {cell(p99)} | {m['moves']} | {m['races']} |")
    if "scaling" in figs:
        lines += ["", f"Aggregate map+unmap operations per second against one exporter "
                      f"({figs.get('scaling_window_s')} s windows):", "",
                  "| importers | median | min | max |", "|---|---|---|---|"]
        for n, s in figs["scaling"].items():
            lines.append(f"| {n} | {fmt(s['median'])} | {fmt(s['min'])} | {fmt(s['max'])} |")
    if "explore_split" in figs:
        sp = figs["explore_split"]
        lines += ["", f"Where a schedule's CPU goes: {sp['schedules']} random schedules of {sp['strategy']} (explore's "
                      f"default configuration), {sp['samples']} CPU samples; {fmt(sp['schedules_per_cpu_s'])} "
                      f"schedules / CPU s, {fmt(sp['sim_speedup'])} virtual s / CPU s:", "",
                  "| part | share | CPU us / schedule |", "|---|---|---|"]
        lines += [f"| {k} | {sp['shares'][k]:.0%} | {fmt(sp['us_per_schedule'][k])} |" for k in sp["shares"]]
    lines += ["", "Targets (issue 7):", "", "| figure | target | median | met |", "|---|---|---|---|"]
    for t in result.get("targets", []):
        met = {True: "yes", False: "**no**", None: "-"}[t["met"]]
        lines.append(f"| {t['figure']} | {t['target']} | {fmt(t['median'])} | {met} |")
    if meta.get("leftover_segments"):
        lines += ["", f"WARNING: segments left behind: {', '.join(meta['leftover_segments'])}"]
    return "\n".join(lines) + "\n"
