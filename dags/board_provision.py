"""Airflow DAG board_provision: get boards ready for sweeps, and see what they are.

Per chosen board, in the board's one-slot pool: deploy the runner (the project's wheel and a wheelhouse built on the
controller: no internet needed on the board), detect the platform and store it in the results store, and report
the clocks (pin then restore, so the log shows what this board lets us pin and why not). Every sweep runs the same
steps before its points; this DAG is for adding a board, or checking one.
"""

import pendulum
from airflow.sdk import DAG, Param, TaskGroup, task
from airflow.sdk.exceptions import AirflowSkipException

from operators.armcl import ArmclBuildOperator, checked_builds
from operators.config import inventory, pool_name, retry_delay_s
from operators.provision import ClocksOperator, ProvisionBoardOperator

DOC = """
### Provision boards
For each chosen board: deploy the runner to its work dir (reused while unchanged), detect and store its platform
(CPU, clusters, frequencies, OS, compilers, memory, GPU, OpenCL, temperatures, known board), and check clock
pinning (pinned, then restored; what could not be pinned is logged with the reason), then build the ArmCL libraries
of `config/armcl.json` when *Build ArmCL* is on (a first build takes minutes to hours depending on the board; its
provenance lands in the results store, `library_builds`). Boards run in parallel; each task sits in the board's pool
`board_<name>`, so it never overlaps a benchmark on that board.
"""

BOARDS = inventory()
ARMCL_BUILDS = checked_builds()  # specs checked at parse time

with DAG(dag_id="board_provision", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
         catchup=False, tags=["requestflow", "provisioning"], doc_md=DOC,
         default_args={"retries": 2, "retry_delay": pendulum.duration(seconds=retry_delay_s())},
         params={"boards": Param(BOARDS, type="array", items={"type": "string", "enum": BOARDS}, minItems=1,
                                 uniqueItems=True, title="Boards"),
                 "build_armcl": Param(True, type="boolean", title="Build ArmCL",
                                      description="the builds of config/armcl.json (cached on each board)")}) as dag:
    for board in BOARDS:
        with TaskGroup(group_id=f"board_{board}"):
            @task(task_id="chosen")
            def chosen(board: str = board, **context) -> None:
                if board not in context["params"]["boards"]:
                    raise AirflowSkipException(f"board {board} was not chosen")

            provision = ProvisionBoardOperator(task_id="provision", board_conn_id=board, pool=pool_name(board))
            pin = ClocksOperator(task_id="pin_clocks", board_conn_id=board, action="pin", pool=pool_name(board))
            restore = ClocksOperator(task_id="restore_clocks", board_conn_id=board, action="restore",
                                     pool=pool_name(board))

            @task(task_id="armcl_wanted")
            def armcl_wanted(**context) -> None:
                if not context["params"]["build_armcl"]:
                    raise AirflowSkipException("Build ArmCL is off")

            chosen() >> provision >> pin >> restore.as_teardown(setups=pin)
            builds = [ArmclBuildOperator(task_id=name, board_conn_id=board, spec=spec, pool=pool_name(board))
                      for name, spec in ARMCL_BUILDS.items()]
            if builds:
                provision >> armcl_wanted() >> builds
