"""The sweep's task bodies (``dags/factory.py`` wires them): the plan task (the board's points, each one's data
resolved on the controller), ``builds_done`` (the gate after a board's ArmCL builds), ``summary`` (every planned
point accounted for, the sweep's scoreboard printed) and ``verdict`` (the run fails when a point did not succeed or
the params were refused)."""

from __future__ import annotations

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from operators import point_data
from operators.armcl_build import sweep_builds
from operators.config import inventory
from operators.results_hook import ResultsHook, user_errors_are_final
from operators.sweep import plan, refusal
from requestflow.board.catalogue import point_label
from requestflow.results.query import read_only, render
from requestflow.results.sweeps import build_label, record_failure, result_build_keys, sweep_tally


def plan_task(board: str, context) -> list[dict]:
    """The plan task of ``board``: its points for the run's params, prepared; skipped when the board was not chosen
    or on a dry run; failed at once (no retry can change the answer) when the params are refused."""
    try:
        points = plan(board, context["params"])
    except ValueError:  # what the form cannot express: no retry can change the answer
        raise AirflowFailException(refusal(context["params"])) from None
    print(f"{len(points)} point(s) on board {board}" + "".join(f"\n  {point_label(p)}" for p in points))
    if not points:
        raise AirflowSkipException(f"board {board} is not part of this sweep")
    if context["params"]["dry_run"]:
        raise AirflowSkipException(f"dry run: {len(points)} point(s) listed, none run")
    return prepare_points(board, points, context)


def prepare_points(board: str, points: list[dict], context) -> list[dict]:
    """The plan task's second half: each point's weights and images resolved on the controller
    (``operators.point_data.prepare``); points that cannot run are stored as refused failures of the sweep (the
    summary reports them and the verdict fails the run), the others returned. None left: the task fails at once."""
    with user_errors_are_final():  # e.g. a data folder's file whose sha256 is not the registry's
        prepared = point_data.prepare(points, point_data.controller_data_dir())
    for note in prepared.notes:
        print(f"WARNING: {note}")
    if prepared.refused:
        dag = context.get("dag")
        with ResultsHook().engine() as engine:
            point_data.record_refused(engine, context["run_id"], dag.dag_id if dag else None, board,
                                      prepared.refused)
    if not prepared.points:
        raise AirflowFailException(f"board {board}: every point was refused: {prepared.refused[0][1]}")
    return prepared.points


def builds_done(board: str, context) -> list[str]:
    """The gate between a board's ArmCL builds and its points (``dags/factory.py``): it waits for every build to end
    however it ends, so that one backend's failure does not block the others. A build that failed stored the points
    that need it as failed, with its error (``ArmclBuildOperator``), and their run tasks skip themselves; every other
    point runs. Never started when no build ran (no point of the board names one: its trigger rule skips it);
    skipped when every build the board's points need is ready (the usual case, nothing to say); else it names the
    failed builds and their points (and returns the builds' names)."""
    ti = context["ti"]
    points = ti.xcom_pull(task_ids=f"board_{board}.plan") or []
    if not points:
        raise AirflowSkipException(f"board {board} has no point in this sweep")
    built = sweep_builds(ti, f"board_{board}")
    failed = [name for name, result in built.items() if not (result or {}).get("path")]
    if not failed:
        raise AirflowSkipException(f"board {board}: every ArmCL build its points need is ready"
                                   if built else f"board {board}: no point needs an ArmCL build")
    for name in failed:
        stranded = [point_label(p) for p in points if p.get("armcl_build") == name]
        print(f"board {board}: the ArmCL build {name} failed (its task's log says why): its {len(stranded)} "
              "point(s) are stored failed with its error and do not run:" + "".join(f"\n  {s}" for s in stranded))
    print(f"board {board}: the {sum(1 for p in points if p.get('armcl_build') not in failed)} other point(s) run")
    return failed


def verdict(counts: dict) -> None:
    """Fail the run when the params were refused or a point did not succeed (``summarize``'s counts)."""
    if counts.get("refused"):
        raise AirflowFailException(counts["refused"])
    failed = counts.get("failed_points") or []
    if failed:
        raise AirflowFailException(f"{len(failed)} point(s) failed: {'; '.join(failed[:10])}"
                                   + (" ..." if len(failed) > 10 else ""))


def summarize(context) -> dict:
    """Account for every planned point of the sweep and print the sweep's scoreboard: ``{"boards": per-board counts,
    "failed_points": ["<board>: <point label>", ...]}`` (the ``verdict`` task fails the run when that is not empty),
    plus ``"refused"`` (why) when the plan tasks refused the params: then there are no points, and the run fails.

    A planned point with neither a result nor a stored failure (its board's provisioning failed, or the task was
    killed before it could store anything) is stored now as ``NotRun``: every point of a sweep ends in the store.
    """
    ti, run_id, p = context["ti"], context["run_id"], context["params"]
    dag_id = context["dag"].dag_id
    refused = refusal(p)
    if refused:  # the plan tasks failed with it and left no points: without this the run would end "success"
        print(refused)
        return {"boards": {}, "failed_points": [], "refused": refused}
    if p["dry_run"]:
        print("dry run: the points are listed in each board's plan task; nothing ran")
        return {"boards": {}, "failed_points": []}
    plans = {board: ti.xcom_pull(task_ids=f"board_{board}.plan") or [] for board in inventory()}
    builds = named_builds(ti, plans)  # several ArmCL builds: armcl points are labelled with theirs

    def label(point: dict) -> str:
        return build_label(point, point.get("armcl_build") if builds is not None else None)

    with ResultsHook().engine() as engine:
        tally = sweep_tally(engine, run_id, builds)
        counts, bad = {}, []
        for board, planned in plans.items():
            if not planned and board not in tally:  # not part of the sweep (a board whose every point was
                continue                            # refused has them stored: they are counted below)
            runs = ti.xcom_pull(task_ids=f"board_{board}.run") or []
            runs = [runs] if isinstance(runs, dict) else list(runs)
            stored = [r for r in runs if r and r.get("status") == "already stored"]
            keys = result_build_keys(engine, [r["result_id"] for r in stored]) if builds is not None else {}
            already = {f"{r['point']} {builds[keys[r['result_id']]]}" if keys.get(r["result_id"]) in (builds or {})
                       else r["point"] for r in stored}
            t = tally.get(board, {"ok": [], "failed": [], "no_result": []})
            seen = {e["point"] for kind in t.values() for e in kind} | already
            for point in planned:
                if label(point) not in seen:
                    message = (f"board {board}: the point never ran (an earlier task of the board failed or the "
                               f"task was stopped; see the task logs of board_{board})")
                    record_failure(engine, run_id, dag_id, board, point, "NotRun", message, attempts=0)
                    t["no_result"].append({"point": label(point), "error": f"NotRun: {message}"})
            counts[board] = {"planned": len(planned), "ok": len(t["ok"]), "already_stored": len(stored),
                             "failed": len(t["failed"]), "no_result": len(t["no_result"])}
            print(f"board {board}: {len(planned)} point(s): {len(t['ok'])} ok, {len(stored)} already stored, "
                  f"{len(t['failed'])} failed, {len(t['no_result'])} without a result")
            for entry in t["failed"] + t["no_result"]:
                print(f"  FAILED {entry['point']}: {entry['error']}")
                bad.append(f"{board}: {entry['point']}")
        print(render(*read_only(engine, "SELECT board, model, backend, variant, precision, latency_median_s, "
                                        "top1 FROM scoreboard WHERE sweep = %(run)s "
                                        "ORDER BY board, model, backend, variant",
                                {"run": run_id}), "table"))
        _, flagged = read_only(engine, "SELECT board, model, backend, variant_label, top1, reference_top1 FROM "
                                       "scoreboard WHERE sweep = %(run)s AND accuracy_check = 'FLAGGED'",
                               {"run": run_id})
        for board, model, backend, variant, top1, reference in flagged:
            print(f"ACCURACY FLAGGED: {board} {model} {backend} {variant}: top-1 {top1:.4f}, {reference - top1:.2%} "
                  f"below tf's {reference:.4f} on the same weights and images: a broken build or variant?")
        print_flagged_latencies(engine, run_id)
    return {"boards": counts, "failed_points": bad}


def named_builds(ti, plans: dict[str, list[dict]]) -> dict[str, str] | None:
    """When the sweep's points name several ArmCL builds: build key -> name, from each board's builds (their XComs'
    ``key``, ``operators.armcl_build.sweep_builds``; a failed build has none: its points are stored failures, which
    keep their ``armcl_build``), so that the summary labels a stored armcl point with its build as it labels the
    planned one. None for one build or none."""
    named = {(board, p["armcl_build"]) for board, points in plans.items() for p in points if p.get("armcl_build")}
    if len({name for _, name in named}) < 2:
        return None
    keys = {}
    for board in sorted({board for board, _ in named}):
        for name, built in sweep_builds(ti, f"board_{board}").items():
            if (board, name) in named and (built or {}).get("key"):
                keys[built["key"]] = name
    return keys


def print_flagged_latencies(engine, run_id: str) -> list[str]:
    """Print (and return) one line per performance point of sweep ``run_id`` whose measurement the runner FLAGGED
    (``requestflow.board.quality``), with its reasons. Like accuracy flags, these do not fail the sweep: the points
    are stored and ranked; the reader is told what to weigh."""
    _, flagged = read_only(engine, "SELECT board, model, backend, variant_label, precision, threads, latency_median_s, "
                                   "quality_reasons FROM scoreboard WHERE sweep = %(run)s AND quality = 'FLAGGED' "
                                   "ORDER BY board, model, backend, variant_label, precision, threads",
                           {"run": run_id})
    lines = []
    for board, model, backend, variant, precision, threads, median, reasons in flagged:
        label = " ".join(part for part in (board, model, backend, variant, precision) if part)
        lines.append(f"LATENCY FLAGGED: {label}, {threads} thread(s): median {median * 1e3:.3f} ms: "
                     + "; ".join(reasons or []))
    for line in lines:
        print(line)
    return lines
