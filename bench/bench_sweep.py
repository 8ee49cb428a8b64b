#!/usr/bin/env python3
"""Sweep overhead: how much of a sweep's wall time is spent outside the board-side runner processes.

A real performance sweep of every MobileNets-v1 config (16) on ``tflite`` and ``tf`` runs on the local board
through requestflow's own path: ``operators.local.airflow_home`` makes a local Airflow ready (metadata database
migrated, the board's pool) and runs the DAG ``mobilenets_sweep`` once with ``dag.test()`` in a subprocess, as
``requestflow sweep`` does. Everything is temporary: a results database and an Airflow metadata database on the
test PostgreSQL server (``--server``, created and dropped like ``bench_store.py``) and a state folder
(``REQUESTFLOW_STATE``: Airflow's home and the local board's work dir).

Afterwards, from three sources that do not depend on each other:
- Airflow's metadata (``task_instance``, ``task_instance_history``): the start and end of every task attempt;
  wall = first task start -> last task end;
- the board's job folders (``board_jobs``: ``pid`` is written when the runner process starts, ``exit_code`` when
  it has ended): each board-side process's wall time;
- the results store: every point's raw samples (the runner's timed regions) and its document's timings.

overhead share = (wall - sum of board-side process times) / wall        goal <= 15%
timed share    = sum of timed-region samples / wall                        (information)

``dag.test()`` runs the tasks one after the other in one process: the overhead measured here is what a user of
``requestflow sweep`` gets. Under a real scheduler each task is a fresh process (and a board's pool still runs
one point at a time), which adds per-task start-up this benchmark does not see.

Only 7 of the 16 configs have real weights in the shared data folder. The sweep runs the others on random weights
(``operators.point_data.prepare``: no real weights on the controller, none downloadable, so a performance point
falls back to random weights, labelled ``random`` in the store); the child runs with ``$REQUESTFLOW_OFFLINE`` so
that no download is tried. ``--real-weights-only`` instead runs the ``requestflow sweep`` command itself on the
configs that have real weights.

Usage:

    python bench/bench_sweep.py [--repetitions 50] [--warmup 5] [--models M ...] [--backends tflite tf]
                                [--real-weights-only] [--server URL] [--keep] [--verbose] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench_machine import cpu_model, load_average

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432"
GOAL = 0.15  # overhead share, at most
DAG_ID = "mobilenets_sweep"
BOARD = "local"
CHILD = "_run-dag"  # first argument when this script runs the DAG in the Airflow subprocess
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z")  # Airflow's log lines begin with one
PROFILE_ENV = "RFBENCH_SWEEP_PROFILE"  # --profile: where the Airflow process writes its cProfile statistics
RUNNER_COMMAND = re.compile(r"-m requestflow\.(cli|board\.point_client) run ")
WALL_RATIO_GOAL = 0.4  # issue #20: the fork path's wall, at most, against the fresh path's
MEASURING_GOAL = 0.25  # issue #20: the wall's share inside the timed regions and warm-up, at least


class BenchError(Exception):
    """The benchmark could not be run; the message says why."""


# ---------------------------------------------------------------------------------------------------------------
# The Airflow subprocess (dag mode): operators.local.dag_run's own run-dag, offline


def child_main(argv: list[str]) -> int:
    """``run-dag DAG_ID CONF OUTCOME`` of ``operators.local.dag_run``, offline (configs without real weights run on
    random ones)."""
    sys.path.insert(0, str(ROOT))
    from operators.local import dag_run

    os.environ["REQUESTFLOW_OFFLINE"] = "1"  # configs without real weights here: random ones, no download tried
    profile = os.environ.get(PROFILE_ENV)
    if not profile:
        return dag_run.main(["run-dag", *argv])
    import cProfile

    profiler = cProfile.Profile()
    try:
        return profiler.runcall(dag_run.main, ["run-dag", *argv])
    finally:
        profiler.dump_stats(profile)


# ---------------------------------------------------------------------------------------------------------------
# Temporary databases and state


@contextlib.contextmanager
def temporary_databases(server: str, keep: bool, names: tuple[str, ...]) -> Iterator[dict[str, str]]:
    """New databases on ``server`` (``rf_bench_sweep_<random>_<name>``): {name: URL}. Dropped afterwards, whatever
    happens, unless ``keep``."""
    import psycopg
    from psycopg import sql

    server = server.rstrip("/")
    tag = uuid.uuid4().hex[:10]
    databases = {name: f"rf_bench_sweep_{tag}_{name}" for name in names}
    try:
        admin = psycopg.connect(f"{server}/postgres", autocommit=True, connect_timeout=15)
    except psycopg.Error as exc:
        raise BenchError(f"cannot connect to {server}: {str(exc).strip().splitlines()[0]}") from None
    created = []
    try:
        for database in databases.values():
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
            created.append(database)
        print(f"databases: {', '.join(created)} on {server}", flush=True)
        yield {name: f"{server}/{database}" for name, database in databases.items()}
    finally:
        if keep:
            print(f"databases kept (--keep): {', '.join(created)}")
        else:
            for database in created:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
            print(f"databases dropped: {', '.join(created)}")
        admin.close()


@dataclass
class Line:
    at: float  # time.time() when the line arrived
    text: str


def run_streaming(command: list[str], env: dict, log_path: Path, verbose: bool) -> tuple[int, list[Line], float]:
    """Run ``command``, each output line stamped on arrival (into ``log_path``, and on the terminal if
    ``verbose``); exit status, the lines, wall seconds."""
    lines: list[Line] = []
    start = time.perf_counter()
    with open(log_path, "w") as log, subprocess.Popen(command, env=env, cwd=str(ROOT), stdout=subprocess.PIPE,
                                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                      text=True, bufsize=1) as process:
        for text in process.stdout:
            line = Line(time.time(), text.rstrip("\n"))
            lines.append(line)
            log.write(f"{dt.datetime.fromtimestamp(line.at).strftime('%H:%M:%S.%f')[:-3]} {line.text}\n")
            if verbose:
                print(f"  | {line.text}", flush=True)
        code = process.wait()
    return code, lines, time.perf_counter() - start


# ---------------------------------------------------------------------------------------------------------------
# What happened: Airflow's task instances, the board's job folders, the results store


@dataclass
class Attempt:
    task_id: str
    map_index: int
    label: str | None
    state: str
    try_number: int
    start: float  # epoch seconds
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def kind(self) -> str:
        return self.task_id.split(".")[-1]


@dataclass
class Job:
    """One board-side runner process, from its job folder."""
    folder: Path
    start: float  # pid written (the process was started)
    end: float  # exit_code written (it has ended)
    exit_code: int
    model: str | None = None
    backend: str | None = None

    @property
    def wall(self) -> float:
        return self.end - self.start


@dataclass
class Stored:
    """One stored result of the sweep."""
    model: str
    backend: str
    precision: str
    random: bool
    median_s: float
    n: int
    samples_s: float  # sum of the raw samples: time inside the timed regions
    timings: dict
    loaded_at: float
    started_at: float  # the document's: when the runner's run() began (after start-up, imports, weights)
    finished_at: float  # and when it had the document (before writing it and exiting)
    samples: list[float] = field(default_factory=list)  # the raw samples, in order
    first_inference_s: float | None = None  # the first warm-up run (cold_start)
    warmup: int = 0
    isolation: str = "fresh"  # the document's isolation.mode (none: fresh)
    server_pid: int | None = None  # fork: the point server that forked it

    @property
    def warmup_s(self) -> float:
        """The warm-up's seconds: its first run (timed alone) plus the others at the timed median (an estimate:
        the document keeps the first warm-up run only)."""
        if not self.warmup:
            return 0.0
        return (self.first_inference_s or self.median_s) + (self.warmup - 1) * self.median_s


@dataclass
class Sweep:
    run_id: str
    state: str
    attempts: list[Attempt]
    jobs: list[Job]
    stored: list[Stored]
    lines: list[Line] = field(default_factory=list)
    command_wall_s: float = 0.0  # the Airflow subprocess (or the whole `requestflow sweep` command)
    prepare_s: float = 0.0  # airflow_home.prepare, dag mode only


def task_attempts(metadata_url: str) -> tuple[str, str, list[Attempt]]:
    """(run id, run state, every task attempt with a start and an end) of the single run in the metadata DB."""
    import psycopg

    with psycopg.connect(metadata_url, connect_timeout=15) as connection:
        runs = connection.execute("SELECT run_id, state FROM dag_run WHERE dag_id = %s", (DAG_ID,)).fetchall()
        if len(runs) != 1:
            raise BenchError(f"expected one run of {DAG_ID} in the metadata database, found {len(runs)}")
        run_id, state = runs[0]
        rows = connection.execute(
            "SELECT task_id, map_index, rendered_map_index, state, try_number, start_date, end_date "
            "FROM task_instance WHERE dag_id = %(dag)s AND run_id = %(run)s "
            "UNION ALL SELECT task_id, map_index, rendered_map_index, state, try_number, start_date, end_date "
            "FROM task_instance_history WHERE dag_id = %(dag)s AND run_id = %(run)s",
            {"dag": DAG_ID, "run": run_id}).fetchall()
    attempts = [Attempt(task, index, label, str(state), tries, start.timestamp(), end.timestamp())
                for task, index, label, state, tries, start, end in rows
                if start is not None and end is not None and state not in ("upstream_failed", "skipped")]
    return run_id, state, sorted(attempts, key=lambda a: a.start)


def board_jobs(state_dir: Path) -> list[Job]:
    """The runner processes of the local board (its work dir is ``<state>/board``)."""
    jobs = []
    for folder in sorted((state_dir / "board" / "runs").glob("*")):
        pid, code = folder / "pid", folder / "exit_code"
        if not (pid.is_file() and code.is_file()):
            continue
        job = Job(folder, pid.stat().st_mtime_ns / 1e9, code.stat().st_mtime_ns / 1e9, int(code.read_text()))
        result = folder / "result.json"
        if result.is_file():
            context = json.loads(result.read_text())["context"]
            job.model, job.backend = context["model"]["id"], context["backend"]["name"]
        jobs.append(job)
    return jobs


def stored_results(results_url: str, run_id: str) -> list[Stored]:
    import psycopg

    with psycopg.connect(results_url, connect_timeout=15) as connection:
        rows = connection.execute(
            "SELECT p.model_id, p.backend, p.precision, w.random, f.median_s, f.n, "
            "       (SELECT sum(s.seconds) FROM samples s WHERE s.result_id = r.id), "
            "       r.document->'timings', r.loaded_at, r.started_at, r.finished_at, "
            "       (SELECT array_agg(s.seconds ORDER BY s.i) FROM samples s WHERE s.result_id = r.id), "
            "       (r.document->'cold_start'->>'first_inference_s')::float8, "
            "       (r.document->'performance'->>'warmup')::int, r.document->'isolation'->>'mode', "
            "       (r.document->'isolation'->>'server_pid')::int "
            "FROM results r JOIN sweeps sw ON sw.id = r.sweep_id JOIN points p ON p.id = r.point_id "
            "JOIN weights w ON w.sha256 = p.weights_sha256 JOIN performance f ON f.result_id = r.id "
            "WHERE sw.run_id = %s AND r.status = 'ok' ORDER BY p.model_id, p.backend", (run_id,)).fetchall()
    return [Stored(model, backend, precision, random, median, n, total or 0.0, timings or {}, loaded.timestamp(),
                   started.timestamp(), finished.timestamp(), list(samples or []), first, warmup or 0,
                   isolation or "fresh", server)
            for (model, backend, precision, random, median, n, total, timings, loaded, started, finished, samples,
                 first, warmup, isolation, server) in rows]


# ---------------------------------------------------------------------------------------------------------------
# Analysis


@dataclass
class Figures:
    points: int
    wall_s: float
    process_s: float
    timed_s: float
    in_process_s: float  # sum of the documents' total_s (the runner's own clock, after its imports)
    warmup_s: float = 0.0  # sum of the points' warm-up (Stored.warmup_s)

    @property
    def overhead_share(self) -> float:
        return (self.wall_s - self.process_s) / self.wall_s

    @property
    def timed_share(self) -> float:
        return self.timed_s / self.wall_s

    @property
    def measuring_share(self) -> float:
        """The wall's share inside the timed regions and the warm-up (issue #20's goal)."""
        return (self.timed_s + self.warmup_s) / self.wall_s


def figures(sweep: Sweep) -> Figures:
    first = min(a.start for a in sweep.attempts)
    last = max(a.end for a in sweep.attempts)
    return Figures(points=len(sweep.stored), wall_s=last - first, process_s=sum(j.wall for j in sweep.jobs),
                   timed_s=sum(s.samples_s for s in sweep.stored),
                   in_process_s=sum(s.timings.get("total_s", 0.0) for s in sweep.stored),
                   warmup_s=sum(s.warmup_s for s in sweep.stored))


def breakdown(sweep: Sweep) -> list[tuple[str, float, str]]:
    """Where the wall time went: (what, seconds, note), adding up to the wall."""
    attempts = sweep.attempts
    first, last = min(a.start for a in attempts), max(a.end for a in attempts)
    rows: list[tuple[str, float, str]] = []
    by_kind: dict[str, list[Attempt]] = defaultdict(list)
    for attempt in attempts:
        by_kind[attempt.kind].append(attempt)
    jobs = sorted(sweep.jobs, key=lambda j: j.start)
    runs = sorted(by_kind.pop("run", []), key=lambda a: a.start)
    inside = sum(j.wall for j in jobs)
    pre = post_exit = task_start = 0.0
    logged = command_lines(sweep.lines)
    for attempt in runs:
        mine = [j for j in jobs if attempt.start <= j.start <= attempt.end]
        if len(mine) == 1:
            pre += mine[0].start - attempt.start
            post_exit += attempt.end - mine[0].end
            command = min((t for t in logged if attempt.start <= t <= mine[0].start), default=None)
            task_start += (command - attempt.start) if command is not None else 0.0
    loaded = sorted(s.loaded_at for s in sweep.stored)
    to_load = [min((t for t in loaded if t >= j.end), default=None) for j in jobs]
    exit_to_load = sum(t - j.end for t, j in zip(to_load, jobs, strict=True) if t is not None)
    rows.append(("board-side runner processes", inside, f"{len(jobs)} processes, python start-up and imports "
                                                         "included"))
    stored = {(s.model, s.backend): s for s in sweep.stored}
    matched = [(j, stored[(j.model, j.backend)]) for j in jobs if (j.model, j.backend) in stored]
    before_run = sum(s.started_at - j.start for j, s in matched)
    after_run = sum(j.end - s.finished_at for j, s in matched)
    rows.append(("  of which before the runner's run()", before_run,
                 "interpreter start, imports, arguments, weights resolved and read (weights_load_s)"))
    rows.append(("  of which the runner's run() (total_s)", inside - before_run - after_run,
                 "machine info, backend load (TF import, graph; tflite from canonical weights), warm-up, timed runs"))
    rows.append(("  of which after it", after_run, "the document written, the interpreter's exit (TF's teardown)"))
    rows.append(("run tasks: before the runner starts", pre, "task start to the runner process's start"))
    rows.append(("  of which task start -> the operator's command line", task_start,
                 "Airflow's task start (in-process execution API), context, templates; board_for, runner_location"))
    rows.append(("  of which the command line -> the process", pre - task_start, "board_jobs.start (a shell)"))
    rows.append(("run tasks: runner exit -> store transaction", exit_to_load,
                 "board_jobs.wait noticing the end, result copy, engine + schema check (alembic)"))
    rows.append(("run tasks: store transaction -> task end", post_exit - exit_to_load,
                 "validate, insert, REFRESH scoreboard, XCom, task bookkeeping"))
    for kind, group in sorted(by_kind.items(), key=lambda kv: -sum(a.duration for a in kv[1])):
        rows.append((f"task {kind}", sum(a.duration for a in group),
                     f"{len(group)} attempt(s)" + (f", {sum(a.state == 'failed' for a in group)} failed"
                                                   if any(a.state == "failed" for a in group) else "")))
    busy = sum(a.duration for a in attempts)
    rows.append(("between tasks (dag.test's loop)", (last - first) - busy,
                 "scheduling the next task instance, state updates"))
    return rows


def command_lines(lines: list[Line]) -> list[float]:
    """When RunPointOperator logged each runner command line (``board <name>: <python> -m requestflow.cli run``, or
    ``-m requestflow.board.point_client run`` under fork), by the log line's own timestamp."""
    found = []
    for line in lines:
        if RUNNER_COMMAND.search(line.text) and (match := TIMESTAMP.search(line.text)):
            found.append(dt.datetime.fromisoformat(match.group(0).replace("Z", "+00:00")).timestamp())
    return found


def per_point(sweep: Sweep) -> list[dict]:
    runs = sorted((a for a in sweep.attempts if a.kind == "run"), key=lambda a: a.start)
    stored = {(s.model, s.backend): s for s in sweep.stored}
    rows = []
    for job in sorted(sweep.jobs, key=lambda j: j.start):
        task = next((a for a in runs if a.start <= job.start <= a.end), None)
        s = stored.get((job.model, job.backend))
        rows.append({"point": f"{job.model} {job.backend}", "task_s": task.duration if task else None,
                     "process_s": job.wall, "in_process_s": s.timings.get("total_s") if s else None,
                     "setup_s": s.timings.get("setup_s") if s else None, "timed_s": s.samples_s if s else None,
                     "median_ms": s.median_s * 1e3 if s else None, "random": s.random if s else None,
                     "precision": s.precision if s else None})
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Running the sweep


def board_state(folder: Path) -> Path:
    """A sweep's state folder in ``folder``, whose local board shares one cache with the other sweeps of this run
    (``<workdir>/board-cache``: what a real board keeps from sweep to sweep, e.g. tflite exports of random
    weights); the state folder."""
    state = folder / "state"
    (state / "board").mkdir(parents=True)
    shared = folder.parent / "board-cache"
    shared.mkdir(exist_ok=True)
    (state / "board" / "cache").symlink_to(shared)
    return state


def run_sweep(args, urls: dict[str, str], state: Path, data: Path, workdir: Path, isolation: str) -> Sweep:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AIRFLOW") and k not in ("REQUESTFLOW_DATABASE_URL", "REQUESTFLOW_AIRFLOW_DATABASE_URL",
                                                        "REQUESTFLOW_BOARDS")}
    env.update(REQUESTFLOW_STATE=str(state), REQUESTFLOW_DATA=str(data), PYTHONUNBUFFERED="1",
               TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"), REQUESTFLOW_ISOLATION=isolation)
    conf = {"boards": [BOARD], "models": args.models, "backends": args.backends, "modes": ["performance"],
            "repetitions": args.repetitions, "warmup": args.warmup}
    log_path = workdir / f"sweep-{isolation}.log"
    prepare_s = 0.0
    if args.real_weights_only:
        requestflow = Path(sys.executable).with_name("requestflow")
        command = [str(requestflow), "sweep", "--models", *args.models, "--backends", *args.backends,
                   "--modes", "performance", "--repetitions", str(args.repetitions), "--warmup", str(args.warmup),
                   "--db", urls["results"], "--airflow-db", urls["airflow"]]
    else:
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(env)  # prepare() reads REQUESTFLOW_STATE and friends from the environment
        try:
            sys.path.insert(0, str(ROOT))
            from operators.local import airflow_home, dag_run
            from requestflow.results.database import upgrade

            start = time.perf_counter()
            upgrade(sqlalchemy(urls["results"]))  # as `requestflow sweep` does before Airflow starts
            airflow_env = airflow_home.prepare(urls["airflow"], sqlalchemy(urls["results"]), [BOARD],
                                               log=lambda line: print(f"  prepare: {line}", flush=True))
            prepare_s = time.perf_counter() - start
        finally:
            os.environ.clear()
            os.environ.update(saved)
        env = {"AIRFLOW__LOGGING__NAMESPACE_LEVELS": dag_run.QUIET_LOGGERS,
               "AIRFLOW__LOGGING__CALLSITE_PARAMETERS": "", **env, **airflow_env}
        if args.profile:
            env[PROFILE_ENV] = str(args.profile.resolve())
        command = [sys.executable, str(Path(__file__).resolve()), CHILD, DAG_ID, json.dumps(conf),
                   str(workdir / "outcome.json")]
    print(f"running {'requestflow sweep' if args.real_weights_only else DAG_ID + ' through dag.test()'}, "
          f"isolation {isolation}: "
          f"{len(args.models)} model(s) x {', '.join(args.backends)}, performance, {args.repetitions} timed runs "
          f"after {args.warmup} warm-up (log: {log_path})", flush=True)
    try:
        code, lines, wall = run_streaming(command, env, log_path, args.verbose)
    finally:  # the local board's point servers (fork): their idle time is not the sweep's
        from requestflow.board.point_client import stop

        stop(state / "board" / "cache" / "point-server")
    metadata = urls["airflow"]
    run_id, run_state, attempts = task_attempts(metadata)
    if not attempts:
        raise BenchError(f"the sweep ran no task (exit {code}); its log: {log_path}")
    sweep = Sweep(run_id, run_state, attempts, board_jobs(state), stored_results(urls["results"], run_id), lines, wall,
                  prepare_s)
    if code != 0 or run_state != "success":
        failed = [f"{a.task_id}[{a.label or a.map_index}] {a.state}" for a in attempts if a.state == "failed"]
        tail = "\n".join(f"    {line.text}" for line in lines[-15:])
        raise BenchError(f"the sweep did not succeed (exit {code}, run {run_state}): {'; '.join(failed[:5])}\n"
                         f"  its log: {log_path}\n{tail}")
    return sweep


def sqlalchemy(url: str) -> str:
    from requestflow.results.database import sqlalchemy_url

    return sqlalchemy_url(url)


# ---------------------------------------------------------------------------------------------------------------
# Report


def machine_line() -> str:
    cpu = cpu_model()
    return (f"machine: {cpu}, {os.cpu_count()} cores; {platform.system()} {platform.release()} "
            f"{platform.machine()}; python {platform.python_version()}")


def table(header: tuple[str, ...], rows: list[tuple[str, ...]], right: set[int]) -> None:
    cells = [header, *rows]
    widths = [max(len(cell[i]) for cell in cells) for i in range(len(header))]
    for index, cell in enumerate(cells):
        print("  " + "  ".join(text.rjust(width) if i in right else text.ljust(width)
                               for i, (text, width) in enumerate(zip(cell, widths, strict=True))).rstrip())
        if index == 0:
            print("  " + "  ".join("-" * width for width in widths))


def optional(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def report(args, sweep: Sweep, load_start: str, total_s: float) -> dict:
    f = figures(sweep)
    verdict = "PASS" if f.overhead_share <= GOAL else "MISS"
    random_count = sum(s.random for s in sweep.stored)
    print("\n--- per point " + "-" * 90)
    table(("point", "precision", "weights", "task", "process", "in-process", "setup", "timed", "median"),
          [(r["point"], r["precision"] or "-", "random" if r["random"] else "real",
            optional(r["task_s"], ".2f"), optional(r["process_s"], ".2f"), optional(r["in_process_s"], ".2f"),
            optional(r["setup_s"], ".2f"), optional(r["timed_s"], ".3f"), optional(r["median_ms"], ".3f"))
           for r in per_point(sweep)], right={3, 4, 5, 6, 7, 8})
    print("  (seconds; median in ms. task: the run task's attempt; process: the runner process on the board; "
          "in-process: its own total_s, after its imports; timed: the sum of its raw samples)")
    print("\n--- where the wall time went " + "-" * 74)
    rows = breakdown(sweep)
    table(("what", "seconds", "share", "note"),
          [(what, f"{seconds:.2f}", f"{seconds / f.wall_s:.1%}", note) for what, seconds, note in rows],
          right={1, 2})
    first_task = min(a.start for a in sweep.attempts)
    before = (first_task - sweep.lines[0].at) if sweep.lines else None
    if args.real_weights_only:
        print(f"  outside the wall: {optional(before, '.1f')} s in `requestflow sweep` before the first task (the "
              f"store's schema, airflow_home.prepare, DAG parsing, dag.test set-up); the command ran "
              f"{sweep.command_wall_s:.1f} s in all")
    else:
        print(f"  outside the wall: airflow_home.prepare {sweep.prepare_s:.1f} s (metadata migration, pools) and, "
              f"in the Airflow process, {optional(before, '.1f')} s before the first task (imports, DAG parsing, "
              f"dag.test set-up); that process ran {sweep.command_wall_s:.1f} s in all")

    print("\n" + "=" * 40 + " summary " + "=" * 40)
    print(f"sweep {sweep.run_id}: {f.points} point(s) stored ({len(args.models)} configs x "
          f"{', '.join(args.backends)}), {random_count} on random weights; {args.repetitions} timed runs after "
          f"{args.warmup} warm-up each")
    print(f"  wall (first task start -> last task end)  {f.wall_s:8.1f} s")
    print(f"  inside the board-side runner processes    {f.process_s:8.1f} s   ({f.process_s / f.wall_s:.1%})")
    print(f"    of which the runners' own total_s        {f.in_process_s:8.1f} s")
    print(f"    of which timed regions (sum of samples)  {f.timed_s:8.2f} s   ({f.timed_share:.2%} of the wall)")
    print(f"    timed regions + warm-up (estimate)        {f.timed_s + f.warmup_s:8.2f} s   ({f.measuring_share:.2%} "
          f"of the wall)")
    print(f"  overhead share (wall - processes) / wall   {f.overhead_share:8.1%}   goal <= {GOAL:.0%}: {verdict}")
    print(f"  outside the timed regions (wall - samples) / wall: {1 - f.timed_share:.1%} (information: MobileNet "
          f"inference at {args.repetitions} repetitions is milliseconds; process start-up dominates)")
    print("  dag.test(): the tasks one after the other in one process, i.e. what `requestflow sweep` gives; a "
          "scheduler adds a task process per task")
    print(machine_line())
    print(f"load average (1, 5, 15 min): {load_start} at the start, {load_average()} at the end; total bench time "
          f"{total_s:.0f} s")
    return {"benchmark": "sweep", "run_id": sweep.run_id, "points": f.points, "random_points": random_count,
            "configs": len(args.models), "backends": args.backends, "repetitions": args.repetitions,
            "warmup": args.warmup, "mode": "requestflow sweep" if args.real_weights_only else "dag.test",
            "wall_s": f.wall_s, "process_s": f.process_s, "in_process_s": f.in_process_s, "timed_s": f.timed_s,
            "overhead_share": f.overhead_share, "timed_share": f.timed_share, "goal": GOAL, "result": verdict,
            "warmup_s": f.warmup_s, "measuring_share": f.measuring_share,
            "isolation": sorted({s.isolation for s in sweep.stored}),
            "breakdown": [{"what": w, "seconds": s, "note": n} for w, s, n in rows],
            "per_point": per_point(sweep), "load_start": load_start, "load_end": load_average(),
            "prepare_s": sweep.prepare_s, "command_wall_s": sweep.command_wall_s}


# ---------------------------------------------------------------------------------------------------------------
# Main


def side_by_side(fresh: Sweep, fork: Sweep, outcomes: dict[str, dict], load_start: str) -> dict:
    """The two isolation modes against each other: wall ratio and measuring share against issue #20's goals, and
    each point's latency fork vs fresh (the replay's test): whether the isolation changes a timing."""
    import statistics

    from requestflow.results.stats import compare_samples

    a, b = figures(fresh), figures(fork)
    ratio = b.wall_s / a.wall_s
    old = {(s.model, s.backend): s for s in fresh.stored}
    verdicts: dict[str, int] = defaultdict(int)
    ratios = []
    for s in fork.stored:
        if (s.model, s.backend) in old and s.samples and old[(s.model, s.backend)].samples:
            comparison = compare_samples(old[(s.model, s.backend)].samples, s.samples, alpha=0.01, min_effect=0.10)
            verdicts[comparison.verdict] += 1
            ratios.append(comparison.ratio)
    print("\n" + "=" * 36 + " side by side " + "=" * 36)
    table(("", "fresh", "fork", "fork / fresh"), [
        ("wall (s)", f"{a.wall_s:.1f}", f"{b.wall_s:.1f}", f"{ratio:.3f}"),
        ("runner processes (s)", f"{a.process_s:.1f}", f"{b.process_s:.1f}", f"{b.process_s / a.process_s:.3f}"),
        ("timed regions (s)", f"{a.timed_s:.2f}", f"{b.timed_s:.2f}", f"{b.timed_s / a.timed_s:.3f}"),
        ("timed + warm-up share", f"{a.measuring_share:.1%}", f"{b.measuring_share:.1%}", "")], right={1, 2, 3})
    wall_verdict = "PASS" if ratio <= WALL_RATIO_GOAL else "MISS"
    share_verdict = "PASS" if b.measuring_share >= MEASURING_GOAL else "MISS"
    print(f"  sweep wall fork / fresh {ratio:.3f}, goal <= {WALL_RATIO_GOAL}: {wall_verdict}")
    print(f"  fork: timed regions + warm-up {b.measuring_share:.1%} of the wall, goal >= {MEASURING_GOAL:.0%}: "
          f"{share_verdict}")
    print(f"  each point's latency, fork against fresh (compare_samples, alpha 0.01, min effect 10%): "
          f"{dict(verdicts)}; median ratio {statistics.median(ratios) if ratios else 0:.3f}")
    servers = sorted({s.server_pid for s in fork.stored if s.server_pid})
    print(f"  fork: {len(servers)} point server(s) served the sweep (one per backend profile; more when a module they "
          f"had imported changed on disk meanwhile)")
    print(f"load average (1, 5, 15 min): {load_start} at the start, {load_average()} at the end")
    return {"wall_ratio": ratio, "servers": len(servers), "wall_ratio_goal": WALL_RATIO_GOAL,
            "wall_result": wall_verdict,
            "measuring_share_fork": b.measuring_share, "measuring_share_fresh": a.measuring_share,
            "measuring_goal": MEASURING_GOAL, "measuring_result": share_verdict, "point_verdicts": dict(verdicts),
            "point_ratios": ratios,
            "wall_s": {"fresh": a.wall_s, "fork": b.wall_s}}


def parse_args(argv: list[str]) -> argparse.Namespace:
    sys.path.insert(0, str(ROOT))
    from requestflow.board.catalogue import CONFIGS

    all_models = [c.id for c in CONFIGS]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=50, help="timed runs per point (default: 50, the demo's)")
    parser.add_argument("--warmup", type=int, default=5, help="warm-up runs per point (default: 5)")
    parser.add_argument("--models", nargs="+", default=all_models, metavar="MODEL",
                        help="configs (default: all 16)")
    parser.add_argument("--backends", nargs="+", default=["tflite", "tf"], choices=("tflite", "tf"))
    parser.add_argument("--real-weights-only", action="store_true",
                        help="run the `requestflow sweep` command itself, on the configs with real weights only")
    parser.add_argument("--server", default=DEFAULT_SERVER, help=f"PostgreSQL server (default: {DEFAULT_SERVER})")
    parser.add_argument("--data", type=Path, help="the shared data folder (default: $REQUESTFLOW_DATA, else "
                                                  "../shared/data)")
    parser.add_argument("--keep", action="store_true", help="keep the databases and the state folder")
    parser.add_argument("--verbose", action="store_true", help="show the sweep's own output as it runs")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--profile", type=Path, help="cProfile the Airflow process into this file (pstats; not with "
                                                     "--real-weights-only)")
    parser.add_argument("--no-warm", dest="warm", action="store_false",
                        help="no untimed sweep first (1 run per point, fork) to fill the board's cache that the timed "
                             "sweeps share (tflite exports of random weights: a board keeps them from sweep to sweep)")
    parser.add_argument("--isolation", nargs="+", choices=("fresh", "fork"), default=["fresh", "fork"],
                        help="run the sweep once per isolation mode, in this order, side by side (default: fresh "
                             "fork; issue #20); the JSON's top level is the first")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.models) - set(all_models))
    if unknown:
        parser.error(f"unknown model {unknown[0]}; known: {', '.join(all_models)}")
    if len(set(args.isolation)) != len(args.isolation):
        parser.error("--isolation: each mode once")
    if args.repetitions < 1 or args.warmup < 0:
        parser.error("--repetitions must be >= 1 and --warmup >= 0")
    args.all_models = all_models
    return args


def with_real_weights(models: list[str], backends: list[str], data: Path) -> list[str]:
    from requestflow.board import catalogue, resolve

    return [m for m in models if all(resolve.local_choice(catalogue.get_model(m), b, None, None, data=data)
                                     for b in backends)]


def main(argv: list[str]) -> int:
    if argv[:1] == [CHILD]:
        return child_main(argv[1:])
    args = parse_args(argv)
    started, load_start = time.perf_counter(), load_average()
    data = (args.data or Path(os.environ.get("REQUESTFLOW_DATA") or ROOT.parent / "shared" / "data")).resolve()
    if not (data / "models").is_dir():
        print(f"bench_sweep: error: no models/ in the data folder {data} (--data or $REQUESTFLOW_DATA)",
              file=sys.stderr)
        return 2
    if args.real_weights_only:
        chosen = with_real_weights(args.models, args.backends, data)
        print(f"--real-weights-only: {len(chosen)} of {len(args.models)} configs have real weights in {data}: "
              f"{', '.join(m.removeprefix('mobilenet-v1-') for m in chosen)}")
        if not chosen:
            return 2
        args.models = chosen
    workdir = Path(tempfile.mkdtemp(prefix="rfbench-sweep-"))
    outcomes: dict[str, dict] = {}
    sweeps: dict[str, Sweep] = {}
    try:
        if args.warm:
            with temporary_databases(args.server, args.keep, ("results", "airflow")) as urls:
                warm = argparse.Namespace(**{**vars(args), "repetitions": 1, "warmup": 0})
                print("warming the board's cache (tflite exports of random weights), 1 run per point, not measured",
                      flush=True)
                run_sweep(warm, urls, board_state(workdir / "warm"), data, workdir / "warm", "fork")
        for isolation in args.isolation:
            with temporary_databases(args.server, args.keep, ("results", "airflow")) as urls:
                folder = workdir / isolation
                sweeps[isolation] = run_sweep(args, urls, board_state(folder), data, folder, isolation)
                outcomes[isolation] = report(args, sweeps[isolation], load_start, time.perf_counter() - started)
    except BenchError as exc:
        print(f"bench_sweep: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"state folder kept (--keep): {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    outcome = dict(outcomes[args.isolation[0]])
    if set(sweeps) == {"fresh", "fork"}:
        outcome["side_by_side"] = side_by_side(sweeps["fresh"], sweeps["fork"], outcomes, load_start)
    outcome["by_isolation"] = outcomes
    if args.json:
        args.json.write_text(json.dumps(outcome, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
