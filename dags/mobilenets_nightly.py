"""Airflow DAG mobilenets_nightly: the sweep on a schedule, configured by config/nightly.json (in the repo)."""

from operators.config import nightly
from operators.sweep import build

CONFIG = nightly()
DOC = f"""
### Nightly MobileNets-v1 sweep
Schedule `{CONFIG['schedule']}`, settings from `config/nightly.json`. Same tasks as `mobilenets_sweep`.
"""

dag = build("mobilenets_nightly", schedule=CONFIG["schedule"], defaults=CONFIG["params"], doc=DOC,
            tags=["requestflow", "nightly"])
