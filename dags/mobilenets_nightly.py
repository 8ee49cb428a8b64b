"""Airflow DAG mobilenets_nightly: the sweep on a schedule, configured by config/nightly.json (in the repo)."""

from dags.factory import sweep_dag
from operators.config import nightly

CONFIG = nightly()
DOC = f"""
### Nightly MobileNets-v1 sweep
Schedule `{CONFIG['schedule']}`, settings from `config/nightly.json`. Same tasks as `mobilenets_sweep`.
"""

dag = sweep_dag("mobilenets_nightly", schedule=CONFIG["schedule"], overrides=CONFIG["params"], doc=DOC,
                tags=["requestflow", "nightly"])
