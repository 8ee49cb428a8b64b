#!/usr/bin/env python3
"""What the calibration workload costs a point (issue #19): its seconds (``performance.calibration.cost_s``, both
sides and their warm-up) against the point's wall time.

The point is the cheapest performance point there is, so the share is the largest: mobilenet-v1-0.25-128 on TFLite
(the shared data's uint8 .tflite), the *quick* profile's settings (20 timed runs, 3 warm-up), one thread pinned to
one CPU, run as ``requestflow run`` in its own process as a sweep runs it. The point's wall time is that process's,
from its start to its exit (what a sweep pays per point on the board); the share of the runner's own ``total_s``
(backend load to document, without the interpreter's start and imports) is printed beside it. Each figure is the
median over ``--rounds`` processes.

Since the calibration also takes samples during the timed region (between two runs, one every few), the runs just
after a sample are compared with the others in the same document (``after_sample``: the median of the runs that
directly follow a sample / the median of the rest; 1.0: a sample between runs does not disturb the next run's
timing), the median of that over the rounds printed too.

Goal: cost / point wall time <= 3%. Usage:

    python bench/bench_calibration.py [--rounds N] [--cpu N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_machine import cpu_model, load_average, package_version
from bench_power import MODEL, WEIGHTS, shared_models

ROOT = Path(__file__).resolve().parents[1]
GOAL = 0.03  # calibration seconds / the point's wall time, at most


def run_once(weights: Path, out: Path, cpu: int) -> dict:
    command = [sys.executable, "-m", "requestflow.cli", "run", "--model", MODEL, "--backend", "tflite", "--weights",
               str(weights), "--profile", "quick", "--cpus", str(cpu), "--threads", "1", "--quiet", "--out", str(out)]
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, capture_output=True)
    wall = time.perf_counter() - start
    document = json.loads(out.read_text())
    cost = document["performance"]["calibration"]["cost_s"]
    return {"wall_s": wall, "total_s": document["timings"]["total_s"], "cost_s": cost,
            "of_wall": cost / wall, "of_total": cost / document["timings"]["total_s"],
            "median_ms": document["performance"]["median"] * 1e3, "after_sample": after_sample(document)}


def after_sample(document: dict) -> float:
    """The median of the timed runs that directly follow a calibration sample during the region / the others'."""
    samples = document["performance"]["samples"]
    every = document["performance"]["calibration"]["during"]["every"]
    follows = [s for i, s in enumerate(samples) if i and i % every == 0]
    rest = [s for i, s in enumerate(samples) if not (i and i % every == 0)]
    return statistics.median(follows) / statistics.median(rest)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--cpu", type=int, default=max(os.sched_getaffinity(0)))
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()
    weights = shared_models() / WEIGHTS
    load_before = load_average()
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            rounds.append(run_once(weights, Path(tmp) / "result.json", args.cpu))
    figures = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    result = {"benchmark": "calibration cost", "model": MODEL, "backend": "tflite",
              "tflite": package_version("ai-edge-litert", "tflite-runtime", "tensorflow"), "cpu": cpu_model(),
              "rounds": args.rounds, "load_average": f"{load_before} -> {load_average()}", "goal": GOAL,
              "median": figures, "spread_of_wall": [min(r["of_wall"] for r in rounds),
                                                   max(r["of_wall"] for r in rounds)],
              "ok": figures["of_wall"] <= GOAL}
    print(f"calibration cost over {args.rounds} processes of {MODEL} tflite, quick profile, 1 thread on cpu{args.cpu} "
          f"(load {result['load_average']}):")
    print(f"  median cost {figures['cost_s'] * 1e3:.1f} ms; point wall {figures['wall_s'] * 1e3:.0f} ms, runner "
          f"total_s {figures['total_s'] * 1e3:.0f} ms; median latency {figures['median_ms']:.3f} ms")
    print(f"  cost / point wall time: {figures['of_wall']:.2%} (rounds {result['spread_of_wall'][0]:.2%}-"
          f"{result['spread_of_wall'][1]:.2%}; goal <= {GOAL:.0%}: {'ok' if result['ok'] else 'MISSED'}); "
          f"cost / runner total_s: {figures['of_total']:.2%}")
    print(f"  runs just after a sample during the region / the others (median): x{figures['after_sample']:.3f} "
          f"(rounds x{min(r['after_sample'] for r in rounds):.3f}-x{max(r['after_sample'] for r in rounds):.3f})")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
