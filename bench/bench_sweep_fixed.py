#!/usr/bin/env python3
"""The fixed cost of ``requestflow sweep`` (issue #20): the wall of a sweep with the least possible work, split.

A one-point sweep (one config, tflite, performance, ``--repetitions 1 --warmup 0 --weights random``) on the local
board runs through the real command, ``requestflow sweep``, into temporary databases on ``--server`` (a results
database and Airflow's metadata database, created and dropped) with a temporary state folder (Airflow's home and
the local board's work dir). A first sweep deploys the runner and migrates Airflow's metadata (untimed); then
``--runs`` timed sweeps, each:

- the wall of the command and its CPU time (user + system of the command and every process it started);
- timestamps of its phases, taken inside both Python processes (the command, and its ``dag.test()`` process
  ``python -m operators.local.dag_run``) by a ``sitecustomize`` this script puts on ``PYTHONPATH``: it wraps a
  few functions (Airflow's ``DagBag``, ``DAG.test``, ``_run_task``, the in-process execution API, requestflow's
  ``prepare``, ``run_dag`` ...) with a clock, and nothing else;
- with ``--profile DIR``, one more sweep under cProfile (both processes), written to ``DIR/command.prof`` and
  ``DIR/dag_run.prof`` (main threads, printed sorted by cumulative time) and ``DIR/<process>-thread<N>-<name>.prof``
  (every other thread started through ``Thread.run``: the in-process execution API's event loop among them).

The machine may be loaded: the shares of the wall are the figures to compare, and the CPU seconds (which load
inflates less than the wall) beside them.

Usage:

    python bench/bench_sweep_fixed.py [--runs 2] [--model mobilenet-v1-0.25-128] [--profile DIR] [--server URL]
                                      [--keep] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from bench_sweep import BenchError, temporary_databases  # (the rf_bench_sweep_* databases, dropped afterwards)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432"
EVENTS_ENV = "RFBENCH_FIXED_DIR"  # where the sitecustomize writes each process's events (and profile)
PROFILE_ENV = "RFBENCH_FIXED_PROFILE"

# What the sitecustomize clocks: module -> dotted names inside it (a function, a method, a cached_property)
WRAPPED = {
    "requestflow.results.store_access": ["open_store"],
    "requestflow.results.query": ["read_only"],
    "operators.scheduled_sweep": ["detected"],
    "operators.local.airflow_home": ["prepare", "ensure_database", "write_config", "migrate_if_needed",
                                     "ensure_pools", "metadata_url"],
    "operators.local.dag_run": ["run_dag", "scheduler_conflict", "_run_dag_here", "_failed_tasks", "main"],
    "operators.local.stopping": ["wait", "make_stoppable"],
    "airflow.dag_processing.dagbag": ["DagBag.__init__", "sync_bag_to_db"],
    "airflow.sdk.definitions.dag": ["DAG.test", "DAG.validate", "_run_task"],
    "airflow.serialization.serialized_objects": ["DagSerialization.serialize_dag",
                                                 "DagSerialization.deserialize_dag"],
    "airflow.serialization.definitions.dag": ["SerializedDAG.clear_dags"],
    "airflow.dag_processing.bundles.manager": ["DagBundlesManager.sync_bundles_to_db"],
    "airflow.models.dagrun": ["get_or_create_dagrun", "DagRun.update_state", "DagRun.get_task_instances"],
    "airflow.sdk.execution_time.supervisor": ["InProcessTestSupervisor._api_client",
                                              "InProcessTestSupervisor.start"],
    "airflow.sdk.execution_time.task_runner": ["run", "finalize", "RuntimeTaskInstance.get_template_context"],
    "airflow.models.taskinstance": ["TaskInstance.set_state"],
}

SITECUSTOMIZE = textwrap.dedent('''\
    # Written by bench/bench_sweep_fixed.py: clocks a few functions of requestflow sweep's two processes.
    import os, sys
    _DIR = os.environ.get("{events_env}")
    _ARGV = " ".join(getattr(sys, "orig_argv", sys.argv))
    _ROLE = ("dag_run" if "operators.local.dag_run" in _ARGV else
             "command" if " sweep " in f"{{_ARGV}} " and "requestflow" in _ARGV else None)
    if _DIR and _ROLE:
        import atexit, functools, importlib.abc, importlib.util, json, threading, time
        _WRAPPED = {wrapped!r}
        _T0 = (time.time(), time.process_time())
        _EVENTS = []

        def _clock(name, function):
            @functools.wraps(function)
            def clocked(*args, **kwargs):
                start = (time.time(), time.process_time())
                try:
                    return function(*args, **kwargs)
                finally:
                    _EVENTS.append((name, start[0], time.time(), start[1], time.process_time(),
                                    threading.current_thread() is threading.main_thread()))
            return clocked

        def _wrap(module):
            for dotted in _WRAPPED.get(module.__name__, ()):
                owner, _, attr = dotted.rpartition(".")
                holder = getattr(module, owner) if owner else module
                raw = vars(holder).get(attr) if isinstance(holder, type) else getattr(holder, attr, None)
                if raw is None:
                    continue
                name = f"{{module.__name__}}.{{dotted}}"
                if isinstance(raw, staticmethod):
                    setattr(holder, attr, staticmethod(_clock(name, raw.__func__)))
                elif isinstance(raw, classmethod):
                    setattr(holder, attr, classmethod(_clock(name, raw.__func__)))
                elif hasattr(raw, "func") and type(raw).__name__ == "cached_property":
                    raw.func = _clock(name, raw.func)
                elif callable(raw):
                    setattr(holder, attr, _clock(name, raw))

        class _Finder(importlib.abc.MetaPathFinder):
            def find_spec(self, fullname, path, target=None):
                if fullname not in _WRAPPED:
                    return None
                sys.meta_path.remove(self)
                try:
                    spec = importlib.util.find_spec(fullname)
                finally:
                    sys.meta_path.insert(0, self)
                if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
                    return spec
                loader = spec.loader
                original = loader.exec_module

                def exec_module(module, original=original):
                    original(module)
                    _wrap(module)
                loader.exec_module = exec_module
                return spec

        sys.meta_path.insert(0, _Finder())
        _PROFILER = None
        _THREADS = []  # (name, profiler) of every other thread that ran Thread.run (e.g. the in-process API's loop)
        if os.environ.get("{profile_env}"):
            import cProfile
            _PROFILER = cProfile.Profile()
            _PROFILER.enable()
            _run = threading.Thread.run

            def _profiled_run(self):
                profiler = cProfile.Profile()
                _THREADS.append((self.name, profiler))
                profiler.enable()
                try:
                    _run(self)
                finally:
                    profiler.disable()
            threading.Thread.run = _profiled_run

        @atexit.register
        def _dump():
            if _PROFILER is not None:
                _PROFILER.disable()
                _PROFILER.dump_stats(os.path.join(_DIR, f"{{_ROLE}}.prof"))
                for index, (name, profiler) in enumerate(list(_THREADS)):
                    try:
                        profiler.create_stats()
                        profiler.dump_stats(os.path.join(_DIR, f"{{_ROLE}}-thread{{index}}-{{name}}.prof"))
                    except Exception:
                        pass
            with open(os.path.join(_DIR, f"{{_ROLE}}-{{os.getpid()}}.json"), "w") as handle:
                json.dump({{"role": _ROLE, "pid": os.getpid(), "start": _T0[0], "start_cpu": _T0[1],
                           "exit": time.time(), "exit_cpu": time.process_time(), "events": _EVENTS}}, handle)
''')


def sweep(args, urls: dict, env: dict, events_dir: Path, log: Path) -> dict:
    """One ``requestflow sweep``: its wall, CPU, output lines (stamped) and both processes' events."""
    for stale in events_dir.glob("*.json"):
        stale.unlink()
    command = [str(Path(sys.executable).with_name("requestflow")), "sweep", "--models", args.model,
               "--backends", "tflite", "--modes", "performance", "--repetitions", "1", "--warmup", "0",
               "--weights", "random", "--db", urls["results"], "--airflow-db", urls["airflow"]]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.time()
    lines = []
    with open(log, "w") as out, subprocess.Popen(command, env=env, cwd=str(ROOT), stdout=subprocess.PIPE,
                                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                                                bufsize=1) as process:
        for text in process.stdout:
            lines.append((time.time(), text.rstrip("\n")))
            out.write(f"{lines[-1][0]:.3f} {text}")
        code = process.wait()
    end = time.time()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if code != 0:
        tail = "\n".join(t for _, t in lines[-15:])
        raise BenchError(f"requestflow sweep failed (exit {code}), log {log}:\n{tail}")
    processes = {}
    for path in events_dir.glob("*.json"):
        data = json.loads(path.read_text())
        if data["role"] in processes:  # (never: one of each)
            raise BenchError(f"two {data['role']} processes")
        processes[data["role"]] = data
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"start": start, "end": end, "wall": end - start, "cpu": cpu, "lines": lines, "processes": processes}


def first(events, name, role_events=None):
    hits = [e for e in events if e[0].endswith(name)]
    return hits[0] if hits else None


def phases(run: dict) -> list[tuple[str, float, float | None, str]]:
    """(phase, wall seconds, CPU seconds or None, what) in order; they add up to the command's wall."""
    cmd, dr = run["processes"]["command"], run["processes"]["dag_run"]
    ce, de = cmd["events"], dr["events"]

    def ev(events, name):
        hit = first(events, name)
        if hit is None:
            raise BenchError(f"no event {name}")
        return hit

    def total(events, name):
        hits = [e for e in events if e[0].endswith(name)]
        return sum(e[2] - e[1] for e in hits), sum(e[4] - e[3] for e in hits), len(hits)

    store = ev(ce, "store_access.open_store")
    prepare = ev(ce, "airflow_home.prepare")
    run_dag = ev(ce, "dag_run.run_dag")
    read = ev(ce, "query.read_only")
    rows = []
    t = run["start"]

    def add(label, until, cpu, what):
        nonlocal t
        rows.append((label, until - t, cpu, what))
        t = until

    add("command: interpreter start + imports", store[1], store[3] - cmd["start_cpu"],
        "python start, requestflow.cli + operators.commands imports, argument parsing, the catalogue")
    add("command: results store open (schema check)", store[2], store[4] - store[3], "open_store: upgrade()")
    add("command: Airflow home ready", prepare[2], prepare[4] - prepare[3],
        "prepare: database exists, airflow.cfg, migration stamp check, pools")
    child_start = dr["start"]
    add("command: scheduler check + dag_run start", child_start, None,
        "scheduled_sweep.detected, scheduler_conflict, subprocess spawn + interpreter start")
    dagbag = [e for e in de if e[0].endswith("DagBag.__init__")]
    add("dag_run: imports (Airflow, settings, ORM)", dagbag[0][1], dagbag[0][3] - dr["start_cpu"],
        "operators.local.dag_run, stopping, airflow import + configure_orm")
    add("dag_run: DAG parse (DagBag)", dagbag[0][2], dagbag[0][4] - dagbag[0][3], "the DAGs folder, our DagBag")
    test = ev(de, "DAG.test")
    add("dag_run: params check", test[1], None, "conf validated against the DAG's Params")
    tasks = [e for e in de if e[0].endswith("definitions.dag._run_task")]
    dagrun_made = ev(de, "get_or_create_dagrun")
    add("dag.test: validate, serialize, clear, bundle sync (2nd parse), dag run", dagrun_made[2],
        None, "DAG.validate, serialize+deserialize, clear_dags, sync_bundles_to_db, BundleDagBag + sync_bag_to_db")
    api_client = first(de, "InProcessTestSupervisor._api_client")  # the first call makes the in-process API
    loop_wall = tasks[-1][2] - dagrun_made[2]
    task_wall = sum(e[2] - e[1] for e in tasks)
    task_cpu = sum(e[4] - e[3] for e in tasks)
    api_wall = (api_client[2] - api_client[1]) if api_client else 0.0
    api_cpu = (api_client[4] - api_client[3]) if api_client else 0.0
    rows.append(("dag.test: in-process execution API start (1st task)", api_wall, api_cpu,
                 "FastAPI app + lifespan + a2wsgi loop thread, once per process"))
    rows.append((f"dag.test: {len(tasks)} tasks, their bodies and Airflow's per-task work", task_wall - api_wall,
                 task_cpu - api_cpu, "_run_task each (see the per-task table)"))
    rows.append(("dag.test: its loop between tasks (state updates, polling sleeps)", loop_wall - task_wall, None,
                 "update_state, get_task_instances, time.sleep(1) when nothing is runnable"))
    t = tasks[-1][2]
    test_end = test[2]
    add("dag.test: after the last task", test_end, None, "the loop's last round")
    add("dag_run: outcome (failed tasks query), atexit", dr["exit"], dr["exit_cpu"] - test[4], "_failed_tasks, atexit")
    add("dag_run: exit", run_dag[2], None, "interpreter teardown, the command's wait loop (0.1 s poll)")
    add("command: store load (scoreboard) + print", read[2], read[4] - read[3], "read_only of the scoreboard")
    add("command: exit", run["end"], None, "teardown of the command")
    return rows, tasks


def task_table(tasks) -> list[tuple[str, float, float]]:
    return [(e[0], e[2] - e[1], e[4] - e[3]) for e in tasks]


def print_profile(path: Path, limit: int) -> None:
    import pstats

    print(f"\n--- {path.name}: top {limit} by cumulative time ---")
    stats = pstats.Stats(str(path))
    stats.sort_stats("cumulative").print_stats(limit)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--runs", type=int, default=2, help="timed sweeps after the untimed first (default 2)")
    parser.add_argument("--model", default="mobilenet-v1-0.25-128", help="the one config (default %(default)s)")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="one more sweep under cProfile; its .prof files in DIR, printed by cumulative time")
    parser.add_argument("--profile-lines", type=int, default=60, help="lines of each printed profile (default 60)")
    parser.add_argument("--server", default=DEFAULT_SERVER, help="PostgreSQL server for the temporary databases "
                                                                 "(default %(default)s)")
    parser.add_argument("--data", type=Path, help="the data folder (default: $REQUESTFLOW_DATA, else "
                                                  "../shared/data)")
    parser.add_argument("--keep", action="store_true", help="keep the databases and the state folder")
    parser.add_argument("--reuse", nargs=3, metavar=("RESULTS_URL", "AIRFLOW_URL", "STATE"),
                        help="sweep into these databases and state folder, kept, without the untimed first sweep "
                             "(one that already ran there deployed the runner and migrated Airflow's metadata)")
    parser.add_argument("--json", type=Path, help="write the figures as JSON")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    data = (args.data or Path(os.environ.get("REQUESTFLOW_DATA") or ROOT.parent / "shared" / "data")).resolve()
    work = Path(tempfile.mkdtemp(prefix="rf-bench-fixed-"))
    events_dir = work / "events"
    events_dir.mkdir()
    site = work / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE.format(events_env=EVENTS_ENV, profile_env=PROFILE_ENV,
                                                                wrapped=WRAPPED))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AIRFLOW") and k not in ("REQUESTFLOW_DATABASE_URL", "REQUESTFLOW_AIRFLOW_DATABASE_URL",
                                                        "REQUESTFLOW_BOARDS", PROFILE_ENV)}
    state = Path(args.reuse[2]).resolve() if args.reuse else work / "state"
    env.update(REQUESTFLOW_STATE=str(state), REQUESTFLOW_DATA=str(data), PYTHONUNBUFFERED="1",
               TF_CPP_MIN_LOG_LEVEL="2", REQUESTFLOW_OFFLINE="1", REQUESTFLOW_BOARDS="local",
               PYTHONPATH=os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])]),
               **{EVENTS_ENV: str(events_dir)})
    results = {"load_before": os.getloadavg(), "runs": []}
    try:
        databases = (contextlib.nullcontext({"results": args.reuse[0], "airflow": args.reuse[1]}) if args.reuse
                     else temporary_databases(args.server, args.keep, ("results", "airflow")))
        with databases as urls:
            if not args.reuse:
                print(f"work folder {work}; first sweep (runner deployed, Airflow's metadata migrated; untimed) ...",
                      flush=True)
                warm = sweep(args, urls, env, events_dir, work / "first.log")
                print(f"  first sweep {warm['wall']:.1f} s", flush=True)
            runs = []
            for index in range(args.runs):
                run = sweep(args, urls, env, events_dir, work / f"run{index + 1}.log")
                rows, tasks = phases(run)
                runs.append((run, rows, tasks))
                print(f"\nrun {index + 1}: wall {run['wall']:.2f} s, CPU {run['cpu']:.2f} s, load "
                      f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
                for label, wall, cpu, _what in rows:
                    print(f"  {label:<72} {wall:7.2f} s {100 * wall / run['wall']:5.1f}%  "
                          f"{'' if cpu is None else f'cpu {cpu:6.2f} s'}")
                names = [t.split("starting task_id=")[1].split()[0] for _, t in run["lines"]
                         if "[DAG TEST] starting task_id=" in t]
                print("  per task, in order (wall, CPU; the first includes the in-process API's start):")
                for name, (_, wall, cpu) in zip(names, task_table(tasks), strict=False):
                    print(f"    {name:<40} {wall:6.2f} s  {cpu:6.2f} s")
                results["runs"].append({"wall": run["wall"], "cpu": run["cpu"], "load": os.getloadavg(),
                                        "phases": [{"phase": r[0], "wall": r[1], "cpu": r[2]} for r in rows],
                                        "tasks": task_table(tasks)})
            if runs:
                walls = [r[0]["wall"] for r in runs]
                print(f"\nmedian wall {statistics.median(walls):.2f} s over {len(walls)} run(s); "
                      f"median CPU {statistics.median(r[0]['cpu'] for r in runs):.2f} s")
            # which task is which: the dag_run's log lines name them in order
            if runs:
                names = [t.split("starting task_id=")[1].split()[0:2] for _, t in runs[-1][0]["lines"]
                         if "[DAG TEST] starting task_id=" in t]
                print("tasks in order: " + ", ".join(f"{n[0]}[{n[1].split('=')[1]}]" for n in names))
                results["task_names"] = [" ".join(n) for n in names]
            if args.profile:
                args.profile.mkdir(parents=True, exist_ok=True)
                env_profiled = {**env, PROFILE_ENV: "1"}
                run = sweep(args, urls, env_profiled, events_dir, work / "profiled.log")
                print(f"\nprofiled sweep: wall {run['wall']:.2f} s (cProfile's own cost included)")
                for name in ("command.prof", "dag_run.prof"):
                    shutil.copy(events_dir / name, args.profile / name)
                    print_profile(args.profile / name, args.profile_lines)
                for path in sorted(events_dir.glob("*-thread*.prof")):  # the other threads' (API loop ...)
                    shutil.copy(path, args.profile / path.name)
                print(f"threads' profiles: {', '.join(p.name for p in sorted(args.profile.glob('*-thread*.prof')))}")
    finally:
        from requestflow.board.point_client import stop

        with contextlib.suppress(Exception):
            stop(state / "board" / "cache" / "point-server")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    results["load_after"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench_sweep_fixed: error: {exc}", file=sys.stderr)
        sys.exit(1)
