"""Airflow DAG mobilenets_sweep: MobileNets-v1 x backends x modes on the chosen boards, triggered from the UI's form."""

from dags.factory import sweep_dag

DOC = """
### MobileNets-v1 sweep
Trigger with the form: boards, models, backends, modes, repetitions, warm-up, batch size, threads, CPU affinity,
images for accuracy, weights. *Weights* `random` runs every point on randomly initialised weights (performance
only: for configs without real weights; labelled `random_weights` on the scoreboard). Each board runs one point at a
time (its pool `board_<name>` has one slot); boards run in parallel. Results land in the results store (Connection
`requestflow_results`), keyed by this run's id; the `summary` task prints this sweep's scoreboard.
"""

dag = sweep_dag("mobilenets_sweep", schedule=None, overrides=None, doc=DOC, tags=["requestflow", "sweep"])
