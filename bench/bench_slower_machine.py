#!/usr/bin/env python3
"""Does the calibration (issue #19) tell a slower machine from slower software on real runs? Pairs of real runs of
one point: one on the normal machine, then one on a slowed CPU; for each pair the raw, calibration and calibrated
ratios (slowed / normal, ``requestflow.results.calibrated.judge``), whether the pair is judged SAME, and whether
the same pair with the slowed run's samples x1.2 (a planted 20% regression, its calibration as measured) is judged
slower. docs/trust.md has the table these gave (2026-12-07); tests/integration/test_slower_machine.py asserts the
same on one pair each.

The slowing (``tests/slower_machine.py``, as the real-run tests slow it): a process at real-time priority
(SCHED_FIFO 2) pinned to the point's CPU, busy ``--busy-us`` then asleep ``--gap-us``, over and over. The runner
runs at real-time priority too (``chrt -f 1``, below it) on both runs, so the shared machine's other work does not
take the gaps (``--normal-priority``: it does). Needs root or CAP_SYS_NICE. Usage:

    python bench/bench_slower_machine.py [--pairs N] [--busy-us 10] [--gap-us 40] [--model mobilenet-v1-0.5-160]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_machine import load_average
from bench_power import shared_models

ROOT = Path(__file__).resolve().parents[1]
REALTIME = ["chrt", "-f", "1"]


def run(args, out: Path, cpu: int) -> dict:
    name = args.model.removeprefix("mobilenet-v1-").replace("-", "_")  # mobilenet-v1-0.5-160: 0.5_160
    weights = shared_models() / f"mobilenet_v1_{name}_quant.tflite"
    command = [sys.executable, "-m", "requestflow.cli", "run", "--model", args.model, "--backend", "tflite",
               "--weights", str(weights), "--quiet", "--out", str(out), "--repetitions", "200", "--warmup", "20",
               "--cpus", str(cpu), "--threads", "1"]
    subprocess.run(([] if args.normal_priority else REALTIME) + command, check=True, capture_output=True, cwd=ROOT)
    return json.loads(out.read_text())


def pair(args, folder: Path, i: int, cpu: int) -> dict:
    from requestflow.results.calibrated import Run, judge, of
    from tests.slower_machine import slower_machine

    normal = run(args, folder / f"{i}-normal.json", cpu)
    with slower_machine(cpu, args.busy_us * 1e-6, args.gap_us * 1e-6):
        slowed = run(args, folder / f"{i}-slowed.json", cpu)
    judged = judge([of(normal)], of(slowed))
    new = of(slowed)
    planted = judge([of(normal)], Run([s * 1.2 for s in new.samples], new.calibration))
    steady = all(d["performance"]["quality"]["checks"]["calibration"]["ok"] for d in (normal, slowed))
    return {"raw": judged.raw.ratio, "calibration": judged.machine.ratio, "calibrated": judged.calibrated.ratio,
            "same": not judged.changed and judged.judged == "calibrated", "planted_found": planted.verdict == "slower",
            "steady": steady, "uncertainty": judged.uncertainty}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--busy-us", type=float, default=10.0)
    parser.add_argument("--gap-us", type=float, default=40.0)
    parser.add_argument("--model", default="mobilenet-v1-0.5-160")
    parser.add_argument("--cpu", type=int, default=max(os.sched_getaffinity(0)))
    parser.add_argument("--normal-priority", action="store_true", help="run the runner at its normal priority")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    print(f"load before: {load_average()}")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for i in range(args.pairs):
            row = pair(args, Path(folder), i, args.cpu)
            rows.append(row)
            print(f"pair {i}: raw x{row['raw']:.3f}, calibration x{row['calibration']:.3f}, calibrated "
                  f"x{row['calibrated']:.3f} (uncertainty {row['uncertainty']:.3f}); SAME {row['same']}; +20% found "
                  f"{row['planted_found']}; both runs steady {row['steady']}", flush=True)
    steady = [r for r in rows if r["steady"]]
    spans = {k: f"x{min(r[k] for r in rows):.2f}-x{max(r[k] for r in rows):.2f}"
             for k in ("raw", "calibration", "calibrated")}
    print(f"{len(rows)} pairs: raw {spans['raw']}, calibration {spans['calibration']}, calibrated "
          f"{spans['calibrated']}; SAME {sum(r['same'] for r in rows)}, +20% found "
          f"{sum(r['planted_found'] for r in rows)}; both steady {len(steady)}: SAME {sum(r['same'] for r in steady)}, "
          f"+20% found {sum(r['planted_found'] for r in steady)}; load after: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
