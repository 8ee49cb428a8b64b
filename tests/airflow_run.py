"""Run one DAG with ``dag.test()`` in a fresh process (Airflow reads its configuration at import time, so each
run gets the environment the test gives it). Prints the run's final state as the last line, as JSON.

    python tests/airflow_run.py DAG_ID '{"models": [...]}'
"""

from __future__ import annotations

import json
import sys


def main() -> int:
    from airflow.dag_processing.dagbag import DagBag

    dag_id, conf = sys.argv[1], json.loads(sys.argv[2])
    bag = DagBag()
    if bag.import_errors:
        print(json.dumps({"import_errors": {k: str(v) for k, v in bag.import_errors.items()}}))
        return 1
    run = bag.dags[dag_id].test(run_conf=conf)
    print(json.dumps({"state": str(run.state), "run_id": run.run_id}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
