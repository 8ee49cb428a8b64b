"""Airflow DAG board_provision: get boards ready for sweeps, and see what they are.

Per chosen board, in the board's one-slot pool: deploy the runner (the project's wheel and a wheelhouse built on the
controller: no internet needed on the board), detect the platform and store it in the results store, and report
the clocks (pin then restore, so the log shows what this board lets us pin and why not). Every sweep runs the same
steps before its points; this DAG is for adding a board, or checking one.
"""

from airflow.sdk import Param, TaskGroup, task
from airflow.sdk.exceptions import AirflowSkipException

from dags.factory import board_tasks, dag
from operators.config import inventory

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

with dag("board_provision", doc=DOC, tags=["requestflow", "provisioning"],
         params={"boards": Param(BOARDS, type="array", items={"type": "string", "enum": BOARDS}, minItems=1,
                                 uniqueItems=True, title="Boards"),
                 "build_armcl": Param(True, type="boolean", title="Build ArmCL",
                                      description="the builds of config/armcl.json (cached on each board)")}):
    for board in BOARDS:
        with TaskGroup(group_id=f"board_{board}"):
            @task(task_id="chosen")
            def chosen(board: str = board, **context) -> None:
                if board not in context["params"]["boards"]:
                    raise AirflowSkipException(f"board {board} was not chosen")

            @task(task_id="armcl_wanted")
            def armcl_wanted(**context) -> None:
                if not context["params"]["build_armcl"]:
                    raise AirflowSkipException("Build ArmCL is off")

            steps = board_tasks(board)  # one build task per build of config/armcl.json, named after it
            chosen() >> steps.provision
            if steps.builds:
                steps.provision >> armcl_wanted() >> list(steps.builds.values())
