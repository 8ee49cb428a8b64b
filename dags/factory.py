"""The DAGs' wiring, shared by the DAG files of this folder. Not a DAG file: ``dags/.airflowignore`` keeps the DAG
processor from parsing it on its own.

Airflow cannot map ``pool``, so exclusivity per board is built at parse time: one task group per board of the
inventory (``config/boards.json``), whose tasks that touch the board all sit in that board's pool ``board_<name>``
(1 slot; ``requestflow sweep`` creates them, or ``airflow pools set board_<name> 1 ...``). Tasks of one board never
overlap, whichever DAG they belong to; boards run in parallel. ``board_tasks`` makes those tasks, for the sweeps and
for ``board_provision`` alike.

A sweep (``sweep_dag``), per board: ``plan`` (the board's points; skipped when the board is not chosen or on a dry
run) >> ``provision`` (runner, platform, data; a runtime spec's runner that cannot be installed fails only its
points, whose run tasks skip themselves) >> ``armcl_build`` (mapped: one task per build of ``config/armcl.json``
that the board's armcl points name, listed by ``armcl_needed``, each named after its build in the UI; built or
reused on the board, with requestflow's MobileNet program compiled against it; a sweep without armcl points
expands it to nothing, which the scheduler skips without starting a task) >> ``builds_done`` (waits for the builds
however they end: a failed build has stored its points as failed with its error, their run tasks skip themselves,
and the board's other points run; skipped when no build failed, and never started when no build ran) >>
``pin_clocks`` (a setup task) >> ``run`` (mapped: one task per point, named "<model> <backend> <mode>" in the
UI) >> ``restore_clocks`` (its teardown: Airflow runs it even when points fail or the run is marked failed). armcl
points are one per variant (the form's ArmCL targets x layouts x conv methods x tuners). ``summary`` accounts for
every planned point (stored ok, stored failed, stored without a result, skipped because already stored) and
updates the results Asset; ``verdict`` fails the run when a point did not succeed, or when the plan refused the
params. The form and the plan are plain Python (``operators/sweep.py``), the task bodies ``operators/sweep_tasks.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pendulum
from airflow.sdk import DAG, Asset, Param, TaskGroup, task

from operators import sweep_tasks
from operators.armcl_build import BUILD_TASK, NEEDED_TASK, ArmclBuildOperator, needed_builds
from operators.armcl_spec import checked_builds
from operators.board_settings import site_queue
from operators.config import RESULTS_ASSET, inventory, pool_name, retry_delay_s
from operators.provision import ClocksOperator, ProvisionBoardOperator
from operators.run_point import RunPointOperator
from operators.sweep import form

# the mapped run tasks' names in the UI: "<model> <backend> <mode>[ <variant>]"; the mapped builds': the build's
RUN_NAME = ("{{ task.point['model'] }} {{ task.point['backend'] }} {{ task.point['mode'] }}"
            "{% if task.point.get('variant') %} {{ task.point['variant'].values() | join('/') }}{% endif %}"
            "{% if task.point.get('runtime') %} {{ task.point['runtime'] }}{% endif %}")
BUILD_NAME = "{{ task.build_name }}"


def dag(dag_id: str, *, doc: str, tags: list[str], schedule=None, **kwargs) -> DAG:
    """A requestflow DAG: no catch-up, two retries ``retry_delay_s()`` apart, the given doc and tags."""
    return DAG(dag_id=dag_id, schedule=schedule, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False,
               tags=tags, doc_md=doc,
               default_args={"retries": 2, "retry_delay": pendulum.duration(seconds=retry_delay_s())}, **kwargs)


def params(overrides: dict | None = None) -> dict[str, Param]:
    """The sweep's trigger form (``operators.sweep.form``) as Airflow Params, the ArmCL builds checked."""
    fields = form(overrides, list(checked_builds()))
    return {name: Param(field.pop("default"), **field) for name, field in fields.items()}


@dataclass
class BoardTasks:
    provision: ProvisionBoardOperator
    builds: dict[str, ArmclBuildOperator]
    pin: ClocksOperator
    restore: ClocksOperator


def board_tasks(board: str, *, points=None, pin_trigger_rule: str = "all_success") -> BoardTasks:
    """The tasks that touch ``board``, each in its pool, wired ``provision >> pin_clocks >> restore_clocks``, the
    restore being the pin's teardown (Airflow runs it even when what stands between them fails). With ``points``
    (a sweep's plan), provisioning pushes their data, and the sweep makes its ArmCL builds itself (``sweep_dag``: a
    mapped task, one per build its points name): ``builds`` is empty. Without (``board_provision``), one ArmCL build
    task per build of ``config/armcl.json``, named after the build, left for the caller to place."""
    pool, queue = pool_name(board), site_queue(board)  # its one slot; its site's Celery workers
    sweep = {} if points is None else {"points": points}
    provision = ProvisionBoardOperator(task_id="provision", board_conn_id=board, pool=pool, queue=queue, **sweep)
    builds = {} if sweep else {
        name: ArmclBuildOperator(task_id=name, board_conn_id=board, spec=spec, pool=pool, queue=queue)
        for name, spec in checked_builds().items()}
    pin = ClocksOperator(task_id="pin_clocks", board_conn_id=board, action="pin", pool=pool, queue=queue,
                         trigger_rule=pin_trigger_rule)
    restore = ClocksOperator(task_id="restore_clocks", board_conn_id=board, action="restore", pool=pool, queue=queue)
    provision >> pin >> restore.as_teardown(setups=pin)
    return BoardTasks(provision, builds, pin, restore)


def sweep_dag(dag_id: str, schedule, overrides: dict | None, doc: str, tags: list[str]) -> DAG:
    """A sweep DAG (``mobilenets_sweep``, ``mobilenets_nightly``): ``overrides`` are the form's defaults."""
    with dag(dag_id, schedule=schedule, doc=doc, tags=tags, params=params(overrides), max_active_runs=4) as built:
        ends, specs = [], checked_builds()
        for board in inventory():
            with TaskGroup(group_id=f"board_{board}"):
                @task(task_id="plan")
                def plan_points(board: str = board, **context) -> list[dict]:
                    return sweep_tasks.plan_task(board, context)

                points = plan_points()
                # the ArmCL builds the board's armcl points name: one mapped build task each, none started in a
                # sweep without armcl points (an empty expansion is skipped by the scheduler); then the gate that
                # waits for them however they end (one backend's failed build does not block the others' points),
                # skipped without starting when no build ran (all_done_min_one_success: a skipped upstream skips
                # it); the clocks are pinned once provisioning succeeded and the gate is done or skipped
                steps = board_tasks(board, points=points, pin_trigger_rule="none_failed_min_one_success")

                @task(task_id=NEEDED_TASK)
                def armcl_needed(points: list[dict], specs: dict = specs) -> list[dict]:
                    return needed_builds(points, specs)

                needed = armcl_needed(points)
                builds = ArmclBuildOperator.partial(
                    task_id=BUILD_TASK, board_conn_id=board, pool=pool_name(board), queue=site_queue(board),
                    points=points, map_index_template=BUILD_NAME,
                ).expand_kwargs(needed)

                @task(task_id="builds_done", trigger_rule="all_done_min_one_success")
                def builds_done(board: str = board, **context) -> list[str]:
                    return sweep_tasks.builds_done(board, context)

                gate = builds_done()
                runs = RunPointOperator.partial(
                    task_id="run", board_conn_id=board, pool=pool_name(board), queue=site_queue(board),
                    resume="{{ params.resume }}", cooldown_c="{{ params.cooldown_c or '' }}",
                    armcl_group=f"board_{board}", provision_task=steps.provision.task_id,
                    map_index_template=RUN_NAME,
                ).expand(point=points)
                steps.pin >> runs >> steps.restore
                steps.provision >> builds >> gate >> steps.pin
                [points, needed] >> gate
                ends += [runs, steps.restore]

        # summary stores what never ran and always updates the results Asset (regression_check follows it, also
        # after a sweep with failed points); verdict then fails the run when a point did not succeed
        @task(task_id="summary", trigger_rule="all_done", outlets=[Asset(RESULTS_ASSET)])
        def summary(**context) -> dict:
            return sweep_tasks.summarize(context)

        @task(task_id="verdict", retries=0)
        def verdict(counts: dict) -> None:
            sweep_tasks.verdict(counts)

        # summary after every board's points (``ends >> verdict(summary())`` would make only verdict wait for them:
        # summary ran first, stored every point as NotRun and verdict failed the sweep)
        summarized = summary()
        ends >> summarized
        verdict(summarized)
    return built
