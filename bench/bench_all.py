#!/usr/bin/env python3
"""Run every benchmark of bench/ and write the table of the latest figures, ``bench/RESULTS.md``.

Each benchmark runs as its own process with ``--json`` (one after the other: they would disturb each other), the
load average is noted before and after each, and ``RESULTS.md`` gets the machine they ran on (CPU, cores, RAM,
OS, Python, TensorFlow / LiteRT / Airflow / PostgreSQL versions, the commit) and every figure with its goal and
PASS/MISS. ``--from DIR`` only assembles the table from JSON files written earlier (``runner.json``,
``store.json``, ``sweep.json``, ``flops.json``, as ``--json-dir`` leaves them): a sensitive benchmark rerun on a
quiet machine can replace its file.

Usage:

    python bench/bench_all.py [--quick] [--only runner store sweep flops] [--json-dir DIR] [--out FILE]
    python bench/bench_all.py --from DIR [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_machine import cpu_model, load_average
from bench_machine import cpuinfo as read_cpuinfo
from bench_machine import package_version as version

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
ORDER = ("runner", "store", "sweep", "flops")
QUICK = {"runner": ["--quick"], "store": ["--quick"], "sweep": ["--repetitions", "20", "--warmup", "3"],
         "flops": ["--repetitions", "20", "--warmup", "3", "--rounds", "1"]}


def wait_for_quiet(limit: float | None, timeout_s: float) -> str:
    """Wait (up to ``timeout_s``) until the 1-minute load average is below ``limit``; what happened."""
    if limit is None:
        return ""
    start = time.monotonic()
    while os.getloadavg()[0] >= limit:
        if time.monotonic() - start > timeout_s:
            return (f"still loaded ({load_average()}) after waiting {timeout_s:.0f} s for a load below {limit}: "
                    "ran anyway")
        time.sleep(15)
    waited = time.monotonic() - start
    return f"waited {waited:.0f} s for a 1-minute load below {limit}" if waited > 1 else ""


def run_benchmarks(names: list[str], quick: bool, json_dir: Path, quiet: float | None = None,
                   quiet_timeout_s: float = 1800) -> None:
    for name in names:
        out = json_dir / f"{name}.json"
        waited = wait_for_quiet(quiet, quiet_timeout_s)
        if waited:
            print(f"bench_all: {waited}", flush=True)
        command = [sys.executable, str(BENCH / f"bench_{name}.py"), "--json", str(out), *(QUICK[name] if quick else [])]
        print(f"\n{'#' * 30} bench_{name}.py (load {load_average()}) {'#' * 30}", flush=True)
        before, start = load_average(), time.perf_counter()
        code = subprocess.run(command, cwd=str(ROOT)).returncode
        print(f"{'#' * 30} bench_{name}.py: exit {code}, {time.perf_counter() - start:.0f} s, load {before} -> "
              f"{load_average()}", flush=True)
        if out.is_file():
            figures = json.loads(out.read_text())
            figures["_run"] = {"exit": code, "seconds": time.perf_counter() - start, "load_before": before,
                               "waited": waited,
                               "load_after": load_average(), "finished": dt.datetime.now().astimezone().isoformat(
                                   timespec="seconds"), "command": " ".join(command[1:])}
            out.write_text(json.dumps(figures, indent=1) + "\n")


# ---------------------------------------------------------------------------------------------------------------
# The machine


def machine() -> list[tuple[str, str]]:
    cpuinfo = read_cpuinfo()
    flags = re.search(r"^flags\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "amx_tile", "asimd") if flags and f in
            flags.group(1).split()]
    mem = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE) \
        if Path("/proc/meminfo").is_file() else None
    os_release = Path("/etc/os-release").read_text() if Path("/etc/os-release").is_file() else ""
    pretty = re.search(r'^PRETTY_NAME="?([^"\n]+)', os_release, re.MULTILINE)
    try:
        virt = subprocess.run(["lscpu"], capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"}).stdout
        hypervisor = re.search(r"^Hypervisor vendor:\s*(.+)$", virt, re.MULTILINE)
    except OSError:
        hypervisor = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
        commit += f" with uncommitted changes in {len(dirty.splitlines())} file(s)" if dirty.strip() else ""
    except OSError:
        commit = "unknown"
    return [
        ("CPU", cpu_model(cpuinfo)
         + (f" ({', '.join(simd)})" if simd else "")),
        ("cores", f"{os.cpu_count()} ({len(os.sched_getaffinity(0))} in this process's affinity)"
         + (f"; a {hypervisor.group(1).strip()} virtual machine" if hypervisor else "")),
        ("RAM", f"{int(mem.group(1)) / 1024 ** 2:.1f} GiB" if mem else "unknown"),
        ("OS", f"{pretty.group(1) if pretty else platform.system()}, Linux {platform.release()} {platform.machine()}"),
        ("Python", platform.python_version()),
        ("packages", f"tensorflow {version('tensorflow-cpu', 'tensorflow')}, keras {version('keras')}, ai-edge-litert "
                     f"{version('ai-edge-litert')}, numpy {version('numpy')}, pillow {version('pillow')}, "
                     f"apache-airflow {version('apache-airflow')}, SQLAlchemy {version('sqlalchemy')}"),
        ("commit", commit),
    ]


# ---------------------------------------------------------------------------------------------------------------
# RESULTS.md


def ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1e3:.1f} ms"


def cell(text) -> str:
    return str(text).replace("|", "\\|")


def run_line(figures: dict) -> str:
    run = figures.get("_run", {})
    if not run:
        return ""
    return (f"Ran {run.get('finished', '?')}: `{run.get('command', '')}`, {run.get('seconds', 0):.0f} s, load average "
            f"(1, 5, 15 min) {run.get('load_before')} before, {run.get('load_after')} after"
            + (f" ({run['waited']})." if run.get("waited") else "."))


def summary_rows(results: dict) -> list[tuple[str, str, str, str, str]]:
    """(benchmark, measure, figure, goal, result) for the headline table."""
    rows = []
    runner = results.get("runner")
    if runner:
        for r in runner["rows"]:
            if r["goal"]:
                noisy = " (noisy: spread {:.0%})".format(r["spread"]) if r.get("noisy") else ""
                figure = "-" if r["ratio"] is None else f"{r['ratio']:.3f} ({r['runner']} / {r['reference']})"
                rows.append(("runner", r["measure"], figure, r["goal"], r["result"] + noisy))
        for line in runner.get("lines", []):
            projected = re.match(r"\s+(cold preprocessing cache|warm preprocessing cache|bare loop)\s+(.+?); peak",
                                 line)
            if projected:
                rows.append(("runner", f"projected time for 50,000 images, {projected.group(1)}",
                             projected.group(2), "-", "info"))
    sweep = results.get("sweep")
    if sweep:
        rows.append(("sweep", f"overhead share of a {sweep['configs']}-config x {len(sweep['backends'])}-backend "
                              f"performance sweep ({sweep['points']} points, {sweep['mode']})",
                     f"{sweep['overhead_share']:.1%} of {sweep['wall_s']:.0f} s", f"<= {sweep['goal']:.0%}",
                     sweep["result"]))
        rows.append(("sweep", "share of the wall inside the runner's timed regions", f"{sweep['timed_share']:.1%}",
                     "-", "info"))
    store = results.get("store")
    if store:
        for r in store["rows"]:
            if r["goal_s"] is not None or "REFRESH" in r["measure"]:
                rows.append(("store", r["measure"], ms(r["seconds"]),
                             f"<= {ms(r['goal_s'])}" if r["goal_s"] is not None else "-", r["result"]))
    flops = results.get("flops")
    if flops:
        rows.append(("flops", "peak FP32, measured (sgemm, all cores, best of 5 runs before and after)",
                     f"{flops['peak_measured_flops'] / 1e9:.1f} GFLOP/s", "-", "info"))
        if flops["theoretical"].get("flops"):
            rows.append(("flops", "peak FP32, theoretical", f"{flops['theoretical']['flops'] / 1e9:.1f} GFLOP/s",
                         "-", "info"))
        for backend in ("tflite", "tf", "armcl"):
            done = [p for p in flops["points"] if p["backend"] == backend and p["median_s"]
                    and p["ran_precision"] == "fp32"]
            if done:
                best = max(done, key=lambda p: p["gflops"])
                rows.append(("flops", f"{backend} fp32, best share of the measured peak",
                             f"{best['gflops'] / (flops['peak_measured_flops'] / 1e9):.1%} ({best['model']}, "
                             f"{best['gflops']:.1f} GFLOP/s)", "-", "info"))
    return rows


def write_results(results: dict, out: Path) -> None:
    now = dt.datetime.now().astimezone()
    lines = ["# Benchmark results", "",
             f"Written by `bench/bench_all.py` on {now:%Y-%m-%d %H:%M %Z} from the benchmarks' own JSON output "
             "(`--json`); each section says when its benchmark ran and how loaded the machine was. Regenerate with "
             "`./dev.sh bench all` (or `python bench/bench_all.py --from DIR` to reassemble runs made separately).",
             "", "## The machine", "", "| | |", "|---|---|"]
    lines += [f"| {key} | {cell(value)} |" for key, value in machine()]
    store = results.get("store")
    if store:
        postgres = next((m for m in store.get("machine", []) if m.startswith("PostgreSQL")), "")
        lines.append(f"| PostgreSQL | {cell(postgres.split(' on ')[0].removeprefix('PostgreSQL: '))} |")
    lines += ["", "## Every figure against its goal", "", "| benchmark | measure | figure | goal | result |",
              "|---|---|---|---|---|"]
    lines += [f"| {' | '.join(cell(c) for c in row)} |" for row in summary_rows(results)]

    runner = results.get("runner")
    if runner:
        lines += ["", "## Runner against bare loops (`bench_runner.py`)", "", run_line(runner), "",
                  "| measure | runner | reference | ratio | goal | result | spread |", "|---|---|---|---|---|---|---|"]
        for r in runner["rows"]:
            lines.append(f"| {cell(r['measure'])} | {r['runner']} | {r['reference']} | "
                         f"{'-' if r['ratio'] is None else format(r['ratio'], '.3f')} | {r['goal'] or '-'} | "
                         f"{r['result']}{'*' if r.get('noisy') else ''} | "
                         f"{'-' if r['spread'] is None else format(r['spread'], '.0%')} |")
        lines += ["", "Spread: how much one measurement moved between processes; * above 10%: too busy for a verdict "
                  "at a 2% goal.", ""]
        lines += [f"- {cell(r['measure'])}: {cell(r['note'])}" for r in runner["rows"] if r["note"]]
        lines += ["", "```", *runner.get("lines", []), *runner.get("machine", []), "```"]

    sweep = results.get("sweep")
    if sweep:
        lines += ["", "## Sweep overhead (`bench_sweep.py`)", "", run_line(sweep), "",
                  f"{sweep['configs']} configs x {', '.join(sweep['backends'])}, performance, {sweep['repetitions']} "
                  f"timed runs after {sweep['warmup']} warm-up; {sweep['points']} points, {sweep['random_points']} "
                  f"of them on random weights (no real weights in the shared data); run through {sweep['mode']} "
                  "(the tasks one after the other in one process: what `requestflow sweep` gives).", "",
                  f"- wall, first task start to last task end: {sweep['wall_s']:.1f} s",
                  f"- inside the board-side runner processes: {sweep['process_s']:.1f} s "
                  f"({sweep['process_s'] / sweep['wall_s']:.1%}); their own `total_s`: {sweep['in_process_s']:.1f} s",
                  f"- inside the runner's timed regions (sum of the raw samples): {sweep['timed_s']:.2f} s "
                  f"({sweep['timed_share']:.2%})",
                  f"- **overhead share (wall - processes) / wall: {sweep['overhead_share']:.1%}**, goal <= "
                  f"{sweep['goal']:.0%}: **{sweep['result']}**", "",
                  "| where the wall time went | seconds | share | note |", "|---|---:|---:|---|"]
        for b in sweep["breakdown"]:
            part = " (part of the row above)" if b["what"].startswith("  ") else ""
            lines.append(f"| {cell(b['what'].strip())}{part} | {b['seconds']:.2f} | "
                         f"{b['seconds'] / sweep['wall_s']:.1%} | {cell(b['note'])} |")
        lines += ["", f"Outside the wall: `airflow_home.prepare` {sweep['prepare_s']:.1f} s (metadata migration of a "
                      f"fresh database, pools); the Airflow process ran {sweep['command_wall_s']:.1f} s in all."]

    if store:
        lines += ["", "## Results store (`bench_store.py`)", "", run_line(store), "",
                  f"Schema revision {store['revision']}; {store['predictions']:,} predictions per document, "
                  f"{store['points']:,} points ({store['points'] // 2:,} scoreboard rows on 10 boards).", "",
                  "| measure | figure | goal | result | note |", "|---|---:|---:|---|---|"]
        for r in store["rows"] + [{**f, "measure": "what-if " + f["measure"]} for f in store.get("fixes", [])]:
            lines.append(f"| {cell(r['measure'])} | {ms(r['seconds'])} | "
                         f"{'-' if r['goal_s'] is None else '<= ' + ms(r['goal_s'])} | {r['result']} | "
                         f"{cell(r['note'])} |")
        extra = results.get("store_revisions") or []
        if extra:
            lines += ["", "The REFRESH of the materialized scoreboard (paid by every load) at earlier revisions, same "
                          "sizes:", "", "| revision | REFRESH | load average after |", "|---|---:|---|"]
            for other in extra:
                refresh = next((r["seconds"] for r in other["rows"] if "REFRESH" in r["measure"]), None)
                lines.append(f"| {other['revision']} | {ms(refresh)} | {other.get('load_end', '')} |")
        lines += ["", "```", *store.get("machine", []), "```"]

    flops = results.get("flops")
    if flops:
        theory = flops["theoretical"]
        lines += ["", "## Every config and backend against the FLOP limit (`bench_flops.py`)", "", run_line(flops), "",
                  f"- peak FP32, **measured**: {flops['peak_measured_flops'] / 1e9:.1f} GFLOP/s (sgemm "
                  f"{flops['gemm_n']}x{flops['gemm_n']}, {flops['blas']}, all cores, best of 5"
                  + (" before the points and 5 after: " + " and ".join(f"{f / 1e9:.1f}" for f in
                                                                       flops["peak_before_after_flops"])
                     if flops.get("peak_before_after_flops") else "")
                  + f"; one core {flops['peak_one_core_flops'] / 1e9:.1f})",
                  "- peak FP32, **theoretical**: "
                  + (f"{theory['flops'] / 1e9:.1f} GFLOP/s = {theory['formula']}" if theory.get("flops")
                     else f"unknown ({theory['formula']})"),
                  f"- each point: `requestflow run --offline --mode performance` processes, {flops['repetitions']} "
                  f"timed runs after {flops['warmup']} warm-up, {flops['threads']} threads; median ms is the best of "
                  f"{flops.get('rounds', 1)} processes' medians, the rounds' spread how far apart they were (* above "
                  "10%: the cores were shared during one); FLOP limit ms = MACs x 2 / measured peak; uint8 (int) "
                  "points run integer arithmetic, so their share of the FP32 peak is indicative only", ""]
        lines += [f"- {note}" for note in flops.get("notes", [])]
        lines += ["", *flops["markdown"]]
    out.write_text("\n".join(line for line in lines) + "\n")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="each benchmark's quick size (a few minutes in all)")
    parser.add_argument("--only", nargs="+", choices=ORDER, default=list(ORDER), help="run only these")
    parser.add_argument("--quiet-load", type=float, help="before each benchmark, wait until the 1-minute load "
                                                             "average is below this (a shared machine: e.g. 1.0)")
    parser.add_argument("--quiet-timeout", type=float, default=1800, help="seconds to wait for it (default 1800)")
    parser.add_argument("--json-dir", type=Path, help="keep the JSON files here (default: a temporary folder)")
    parser.add_argument("--from", dest="source", type=Path, help="assemble RESULTS.md from the JSON files in DIR, "
                                                                 "running nothing")
    parser.add_argument("--out", type=Path, default=BENCH / "RESULTS.md", help="default: bench/RESULTS.md")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rfbench-all-") as tmp:
        folder = args.source or args.json_dir or Path(tmp)
        if not args.source:
            folder.mkdir(parents=True, exist_ok=True)
            run_benchmarks(args.only, args.quick, folder, args.quiet_load, args.quiet_timeout)
        results = {name: json.loads((folder / f"{name}.json").read_text()) for name in ORDER
                   if (folder / f"{name}.json").is_file()}
        results["store_revisions"] = [json.loads(p.read_text()) for p in sorted(folder.glob("store-*.json"))]
        if not any(results.get(name) for name in ORDER):
            print(f"bench_all: no benchmark figures in {folder}", file=sys.stderr)
            return 1
        write_results(results, args.out)
    print(f"\nwrote {args.out}")
    return 0 if all(results.get(name, {}).get("_run", {}).get("exit", 0) == 0 for name in ORDER) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
