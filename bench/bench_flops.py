#!/usr/bin/env python3
"""Every config and backend against this CPU's FLOP limit: the runner's median latency, the GFLOP/s it achieves
(MACs x 2 / median) and its share of the CPU's peak FP32 FLOP/s.

The peak, two ways, labelled:
- measured: a large float32 matrix product (numpy's BLAS, sgemm) on all cores, best of 5 before the points and 5
  after them (the higher counts); and on one core;
- theoretical: cores x SIMD lanes (from the CPU flags) x 2 (FMA) x FMA units per core x frequency. The number of
  FMA units per core is not in the flags: an assumption (``--fma-units``, default 2 on x86 with AVX2/AVX-512, as on
  the Xeon server cores); the frequency is the highest the machine reports (cpufreq's maximum, else lscpu's, else
  /proc/cpuinfo's current MHz, which in a VM is the nominal frequency: turbo is not seen).

Points: each of the 16 configs on ``tflite`` (fp32: its float weights if they are in the shared data, else random
weights; uint8: the quantized weights where the shared data has them), ``tf`` (fp32: real weights where there are
some, dequantized, else random) and ``armcl`` (fp32, as ``tf``; only when an ArmCL build is in the machine's cache:
on x86 this is the OpenCL target on PoCL, i.e. the CPU). Each point runs as ``requestflow run --mode performance
--offline`` processes, one per round (``--rounds``, default 2; every point once per round, the order reversed
every other round); the figure is the best of their ``performance.median``: on a shared machine one round can
find its cores taken (2x slower with 2 threads on 2 cores), and the spread between the rounds says so. uint8
points run integer arithmetic: their share of the FP32 peak is indicative only. Random weights take as long as
real ones in fp32 (same shapes, no sparsity).

Usage:

    python bench/bench_flops.py [--repetitions 50] [--warmup 5] [--rounds 2] [--threads N] [--backends ...]
                                [--models M ...] [--markdown FILE] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench_machine import load_average

ROOT = Path(__file__).resolve().parents[1]
CHILD = "_gemm"
GEMM_N = 4096  # 2 x 4096^3 = 137 GFLOP per product
GEMM_RUNS = 5
NOISY = 0.10  # rounds' medians further apart than this: the cores were shared during one of them


class BenchError(Exception):
    """The benchmark could not be run; the message says why."""


# ---------------------------------------------------------------------------------------------------------------
# Peak FLOP/s


def child_gemm(argv: list[str]) -> int:
    """In a fresh interpreter (thread count set by the environment before numpy loads): best sgemm FLOP/s."""
    import numpy as np

    n, runs, out = int(argv[0]), int(argv[1]), Path(argv[2])
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), dtype=np.float32)
    np.matmul(a, b, out=c)  # warm-up: thread pool, pages
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        np.matmul(a, b, out=c)
        times.append(time.perf_counter() - start)
    out.write_text(json.dumps({"n": n, "times_s": times, "best_flops": 2 * n ** 3 / min(times),
                               "median_flops": 2 * n ** 3 / sorted(times)[len(times) // 2]}))
    return 0


def measured_peak(threads: int, n: int, runs: int, workdir: Path) -> dict:
    out = workdir / f"gemm-{threads}.json"
    env = {**os.environ, **{k: str(threads) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                                      "MKL_NUM_THREADS")}}
    result = subprocess.run([sys.executable, str(Path(__file__).resolve()), CHILD, str(n), str(runs), str(out)],
                            env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise BenchError(f"the sgemm child failed: {result.stderr.strip()[-500:]}")
    return json.loads(out.read_text())


def blas_name() -> str:
    try:
        import numpy as np

        config = np.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]
        return f"numpy {np.__version__} with {blas.get('name')} {blas.get('version')}"
    except Exception:  # noqa: BLE001 - a label only
        return "numpy's BLAS"


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    match = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", text, re.MULTILINE)
    return set(match.group(1).split()) if match else set()


def frequency_ghz() -> tuple[float | None, str]:
    """The highest frequency the machine reports, and where it came from."""
    path = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    if path.is_file():
        return int(path.read_text()) / 1e6, "cpufreq cpuinfo_max_freq"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"}).stdout
        match = re.search(r"^CPU max MHz:\s*([\d.]+)", lscpu, re.MULTILINE)
        if match:
            return float(match.group(1)) / 1e3, "lscpu CPU max MHz"
    except OSError:
        pass
    try:
        mhz = re.findall(r"^cpu MHz\s*:\s*([\d.]+)", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        if mhz:
            return max(float(m) for m in mhz) / 1e3, ("/proc/cpuinfo cpu MHz (no cpufreq: in a VM, the nominal "
                                                      "frequency; turbo not seen)")
    except OSError:
        pass
    return None, "no frequency reported"


def theoretical_peak(cores: int, fma_units: int | None) -> dict:
    flags = cpu_flags()
    machine = platform.machine()
    if "avx512f" in flags:
        lanes, isa = 16, "AVX-512"
    elif "avx" in flags or "avx2" in flags:
        lanes, isa = 8, "AVX2" if "avx2" in flags else "AVX"
    elif flags & {"sse", "asimd", "neon"}:
        lanes, isa = 4, "NEON/ASIMD" if flags & {"asimd", "neon"} else "SSE"
    else:
        lanes, isa = 1, "scalar"
    fma = bool(flags & {"fma", "asimd"}) or machine == "aarch64"
    if fma_units is None:
        fma_units = 2 if isa in ("AVX-512", "AVX2") else 1
    ghz, source = frequency_ghz()
    per_cycle = lanes * (2 if fma else 1) * fma_units
    flops = cores * per_cycle * ghz * 1e9 if ghz else None
    return {"flops": flops, "isa": isa, "lanes": lanes, "fma": fma, "fma_units": fma_units,
            "flop_per_cycle_per_core": per_cycle, "ghz": ghz, "frequency_source": source, "cores": cores,
            "formula": f"{cores} cores x {lanes} fp32 lanes ({isa}) x {2 if fma else 1} (FMA) x {fma_units} FMA "
                       f"unit(s) per core (assumed) x {ghz or '?'} GHz ({source})"}


# ---------------------------------------------------------------------------------------------------------------
# The points


@dataclass
class Point:
    model: str
    macs: int
    backend: str
    precision: str  # what is asked (fp32 / uint8)
    weights: str = ""  # real / random (from the result)
    medians_s: list[float] = field(default_factory=list)  # one per round (process)
    ran_precision: str | None = None
    error: str | None = None
    wall_s: float | None = None
    load: str = ""

    @property
    def median_s(self) -> float | None:
        """The best (lowest) of the rounds' medians: what the point does when nothing else takes its cores."""
        return min(self.medians_s) if self.medians_s else None

    @property
    def spread(self) -> float | None:
        return max(self.medians_s) / min(self.medians_s) - 1 if len(self.medians_s) > 1 else None

    @property
    def gflops(self) -> float | None:
        return 2 * self.macs / self.median_s / 1e9 if self.median_s else None


def armcl_builds() -> list[Path]:
    """The machine's ArmCL builds, the first finished first."""
    cache = Path(os.environ.get("REQUESTFLOW_ARMCL_CACHE") or Path.home() / ".cache" / "requestflow" / "armcl")
    builds = [p for p in (cache / "builds").glob("*") if (p / "build.json").is_file()]
    return sorted(builds, key=lambda p: json.loads((p / "build.json").read_text()).get("finished_at") or "")


def plan(models: list[str], backends: list[str], data: Path) -> list[Point]:
    sys.path.insert(0, str(ROOT))
    from requestflow.board import catalogue, resolve

    points = []
    for model_id in models:
        model = catalogue.get_model(model_id)
        for backend in backends:
            points.append(Point(model_id, model.macs, backend, "fp32"))
            if backend == "tflite" and resolve.local_choice(model, "tflite", "uint8", None, data=data):
                points.append(Point(model_id, model.macs, backend, "uint8"))
    return points


def run_point(point: Point, requestflow: str, args, workdir: Path, env: dict) -> None:
    out = workdir / "point.json"
    out.unlink(missing_ok=True)
    command = [requestflow, "run", "--quiet", "--offline", "--model", point.model, "--backend", point.backend,
               "--mode", "performance", "--repetitions", str(args.repetitions), "--warmup", str(args.warmup),
               "--threads", str(args.threads), "--out", str(out)]
    if point.backend == "tflite":
        command += ["--precision", point.precision]
    if point.backend == "armcl":
        command += ["--armcl-build", str(args.armcl_build)]
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    point.wall_s = time.perf_counter() - start
    point.load = f"{os.getloadavg()[0]:.2f}"
    if not out.is_file():
        lines = (result.stderr or result.stdout).strip().splitlines() or [f"exit {result.returncode}"]
        point.error = lines[-1]
        return
    point.error = None
    document = json.loads(out.read_text())
    if document.get("status") != "ok":
        error = document.get("error") or {}
        point.error = f"{error.get('type')}: {str(error.get('message')).splitlines()[0]}"
        return
    point.medians_s.append(document["performance"]["median"])
    point.ran_precision = document["context"]["precision"]
    point.weights = "random" if document["context"]["weights"].get("random") else "real"


# ---------------------------------------------------------------------------------------------------------------
# Report


def markdown(points: list[Point], peak: float, theoretical: float | None) -> list[str]:
    lines = ["| model | MMACs | backend | precision | weights | median ms | rounds' spread | FLOP limit ms | GFLOP/s | "
             "% of measured peak | % of theoretical peak |",
             "|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for p in points:
        limit = 2 * p.macs / peak * 1e3
        if p.median_s is None:
            lines.append(f"| {p.model} | {p.macs / 1e6:.0f} | {p.backend} | {p.precision} | - | failed: "
                         f"{(p.error or '')[:80]} | | {limit:.3f} | | | |")
            continue
        of_theory = f"{p.gflops * 1e9 / theoretical:.1%}" if theoretical else "-"
        note = " (int)" if p.ran_precision != "fp32" else ""
        spread = "-" if p.spread is None else f"{p.spread:.0%}" + (" *" if p.spread > NOISY else "")
        lines.append(f"| {p.model} | {p.macs / 1e6:.0f} | {p.backend} | {p.ran_precision}{note} | {p.weights} | "
                     f"{p.median_s * 1e3:.3f} | {spread} | {limit:.3f} | {p.gflops:.1f} | "
                     f"{p.gflops * 1e9 / peak:.1%} | {of_theory} |")
    return lines


def parse_args(argv: list[str]) -> argparse.Namespace:
    sys.path.insert(0, str(ROOT))
    from requestflow.board.catalogue import CONFIGS

    all_models = [c.id for c in CONFIGS]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=50, help="timed runs per point (default 50)")
    parser.add_argument("--warmup", type=int, default=5, help="warm-up runs per point (default 5)")
    parser.add_argument("--rounds", type=int, default=2, help="processes per point, all points once per round; the "
                                                              "best median counts (default 2)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="runner threads (default: the CPUs in the affinity set)")
    parser.add_argument("--models", nargs="+", default=all_models, metavar="MODEL", help="default: all 16")
    parser.add_argument("--backends", nargs="+", default=["tflite", "tf", "armcl"], choices=("tflite", "tf", "armcl"))
    parser.add_argument("--fma-units", type=int, help="FMA units per core for the theoretical peak (default: 2 on "
                                                      "x86 with AVX2/AVX-512, else 1)")
    parser.add_argument("--armcl-build", type=Path, help="the ArmCL build folder for armcl points (default: the first "
                                                          "finished build in the machine's cache)")
    parser.add_argument("--gemm-n", type=int, default=GEMM_N, help=f"matrix size of the sgemm (default {GEMM_N})")
    parser.add_argument("--data", type=Path, help="the shared data folder (default: $REQUESTFLOW_DATA, else "
                                                  "../shared/data)")
    parser.add_argument("--markdown", type=Path, help="also write the table (markdown) to this file")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.models) - set(all_models))
    if unknown:
        parser.error(f"unknown model {unknown[0]}")
    return args


def main(argv: list[str]) -> int:
    if argv[:1] == [CHILD]:
        return child_gemm(argv[1:])
    args = parse_args(argv)
    started, load_start = time.perf_counter(), load_average()
    data = (args.data or Path(os.environ.get("REQUESTFLOW_DATA") or ROOT.parent / "shared" / "data")).resolve()
    requestflow = str(Path(sys.executable).with_name("requestflow"))
    if not os.access(requestflow, os.X_OK):
        print(f"bench_flops: error: no requestflow command beside {sys.executable}", file=sys.stderr)
        return 2
    backends = list(args.backends)
    notes = []
    if "armcl" in backends:
        builds = [args.armcl_build] if args.armcl_build else armcl_builds()
        if not builds or not (builds[0] / "build.json").is_file():
            backends.remove("armcl")
            notes.append("armcl: no ArmCL build in the machine's cache (~/.cache/requestflow/armcl/builds): left out")
        else:
            args.armcl_build = builds[0]
            info = json.loads((builds[0] / "build.json").read_text())
            options = dict(arg.split("=", 1) for arg in info.get("command", []) if "=" in arg and "/" not in arg)
            notes.append(f"armcl: build {builds[0].name[:16]} of {len(armcl_builds())} in the cache (the first "
                         f"finished; --armcl-build DIR for another) (neon={options.get('neon')}, "
                         f"opencl={options.get('opencl')}), default variant (CL target"
                         + (": PoCL on this CPU, through requestflow's OpenCL shim)" if platform.machine() == "x86_64"
                            else ")"))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
           "REQUESTFLOW_DATA": str(data)}
    with tempfile.TemporaryDirectory(prefix="rfbench-flops-") as tmp:
        workdir = Path(tmp)
        cores = len(os.sched_getaffinity(0))
        print(f"peak FP32: sgemm {args.gemm_n}x{args.gemm_n} ({blas_name()}), best of {GEMM_RUNS}", flush=True)
        try:
            gemm_all = measured_peak(cores, args.gemm_n, GEMM_RUNS, workdir)
            gemm_one = measured_peak(1, args.gemm_n, GEMM_RUNS, workdir) if cores > 1 else gemm_all
        except BenchError as exc:
            print(f"bench_flops: error: {exc}", file=sys.stderr)
            return 1
        theory = theoretical_peak(cores, args.fma_units)
        peak = gemm_all["best_flops"]
        print(f"  measured: {peak / 1e9:.1f} GFLOP/s on {cores} core(s) (median {gemm_all['median_flops'] / 1e9:.1f}), "
              f"{gemm_one['best_flops'] / 1e9:.1f} GFLOP/s on 1 core; load {load_average()}")
        print(f"  theoretical: {theory['flops'] / 1e9:.1f} GFLOP/s = {theory['formula']}" if theory["flops"] else
              f"  theoretical: unknown ({theory['formula']})")
        points = plan(args.models, backends, data)
        print(f"\n{len(points)} point(s) x {args.rounds} round(s): {args.repetitions} timed runs after {args.warmup} "
              f"warm-up, {args.threads} thread(s), one `requestflow run --offline` process each", flush=True)
        for round_index in range(args.rounds):
            order = points if round_index % 2 == 0 else list(reversed(points))
            for index, point in enumerate(order, 1):
                run_point(point, requestflow, args, workdir, env)
                last = point.medians_s[-1] if point.medians_s and point.error is None else None
                figure = (f"median {last * 1e3:8.3f} ms  {2 * point.macs / last / 1e9:6.1f} GFLOP/s  "
                          f"{2 * point.macs / last / peak:6.1%} of peak  ({point.ran_precision}, {point.weights} "
                          "weights)" if last else f"FAILED: {point.error}")
                print(f"  [{round_index + 1}: {index:2}/{len(points)}] {point.model:22} {point.backend:6} "
                      f"{point.precision:5} {figure}  (load {point.load})", flush=True)
        # the peak again, after the points: a transient neighbour during one of the two measurements cannot halve it
        try:
            again = measured_peak(cores, args.gemm_n, GEMM_RUNS, workdir)
        except BenchError as exc:
            print(f"bench_flops: error: {exc}", file=sys.stderr)
            return 1
        print(f"peak FP32 measured again after the points: {again['best_flops'] / 1e9:.1f} GFLOP/s (before: "
              f"{peak / 1e9:.1f}); load {load_average()}", flush=True)
        peaks = [gemm_all["best_flops"], again["best_flops"]]
        if again["best_flops"] > peak:
            gemm_all, peak = again, again["best_flops"]

    table = markdown(points, peak, theory["flops"])
    print("\n" + "=" * 40 + " summary " + "=" * 40)
    print(f"peak FP32, measured: {peak / 1e9:.1f} GFLOP/s (sgemm {args.gemm_n}, {cores} cores, best of {GEMM_RUNS} "
          f"before the points and {GEMM_RUNS} after: {peaks[0] / 1e9:.1f} and {peaks[1] / 1e9:.1f}; "
          f"1 core: {gemm_one['best_flops'] / 1e9:.1f})")
    if theory["flops"]:
        print(f"peak FP32, theoretical: {theory['flops'] / 1e9:.1f} GFLOP/s ({theory['formula']})")
    print(f"median ms: the best of {args.rounds} processes' medians; rounds' spread: how far apart they were (* above "
          f"{NOISY:.0%}: the cores were shared during one of them); FLOP limit ms = MACs x 2 / measured peak\n")
    for line in table:
        print(line)
    for backend in backends:
        done = [p for p in points if p.backend == backend and p.median_s and p.ran_precision == "fp32"]
        if done:
            best = max(done, key=lambda p: p.gflops)
            print(f"{backend} fp32: {min(p.gflops for p in done):.1f} to {best.gflops:.1f} GFLOP/s "
                  f"({best.gflops * 1e9 / peak:.1%} of the measured peak, {best.model})")
    for note in notes:
        print(note)
    print("uint8 (int): integer arithmetic, so the share of the FP32 peak is indicative only")
    failed = [p for p in points if p.median_s is None]
    print(f"load average (1, 5, 15 min): {load_start} at the start, {load_average()} at the end; "
          f"total bench time {time.perf_counter() - started:.0f} s")
    if args.markdown:
        args.markdown.write_text("\n".join(table) + "\n")
    if args.json:
        args.json.write_text(json.dumps({
            "benchmark": "flops", "peak_measured_flops": peak, "peak_measured_median_flops": gemm_all["median_flops"],
            "peak_one_core_flops": gemm_one["best_flops"], "gemm_n": args.gemm_n, "blas": blas_name(),
            "peak_before_after_flops": peaks,
            "theoretical": theory, "repetitions": args.repetitions, "warmup": args.warmup, "threads": args.threads,
            "rounds": args.rounds,
            "points": [{**asdict(p), "median_s": p.median_s, "spread": p.spread, "gflops": p.gflops} for p in points],
            "notes": notes,
            "load_start": load_start, "load_end": load_average(), "markdown": table}, indent=1) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
