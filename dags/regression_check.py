"""Airflow DAG regression_check: after every sweep, its results against each point's own history.

Scheduled on the asset that every sweep's ``summary`` task updates (``operators.config.RESULTS_ASSET``): each
update starts a run, which checks the sweep(s) whose events triggered it. One run at a time, so that sweeps are
checked in the order they finished.
"""

from airflow.sdk import Asset, Param

from dags.factory import dag
from operators.config import RESULTS_ASSET
from operators.regression_detect import RegressionCheckOperator
from requestflow.results.regression_compare import DEFAULT_ALPHA, DEFAULT_MIN_EFFECT, DEFAULT_WINDOW

DOC = f"""
### Regression check
Runs when a sweep updates the results asset `{RESULTS_ASSET}` (or by hand, with the sweep's run id in *Sweep*).
Every successful result of the sweep is compared with the earlier results of the same point (same identity,
other sweeps): **latency** by a Mann-Whitney U test on the raw samples (p < *alpha*) with a minimum change of the
median (*min effect*, raised to the run-to-run spread the history itself shows), **top-1/top-5** exactly. Changes
are stored (table `regression_detections`, view `regressions`) and shown on the scoreboard page; the task
`detect` **fails**, naming each unacknowledged one (point, metric, old -> new, p-value), so that Airflow's
alerting fires. A known step change stops alerting once acknowledged:
`requestflow regressions ack ID --reason TEXT` (its result becomes the point's baseline).
"""

with dag("regression_check", schedule=[Asset(RESULTS_ASSET)], max_active_runs=1,
         tags=["requestflow", "regressions"], doc=DOC,
         params={
             "sweep": Param(None, type=["null", "string"], minLength=1, maxLength=250, title="Sweep (run id)",
                            description="check this sweep; empty: the sweep(s) whose results asset event "
                                        "triggered the run"),
             "window": Param(DEFAULT_WINDOW, type="integer", minimum=1, maximum=100, title="History window",
                             description="the latest N earlier results of each point are its baseline"),
             "alpha": Param(DEFAULT_ALPHA, type="number", exclusiveMinimum=0, exclusiveMaximum=1, title="Alpha",
                            description="significance of the latency test"),
             "min_effect": Param(DEFAULT_MIN_EFFECT, type="number", minimum=0, maximum=5, title="Min effect",
                                 description="smallest change of median latency that counts (0.05 = 5%)"),
         }):
    RegressionCheckOperator(task_id="detect", sweep="{{ params.sweep or '' }}", window="{{ params.window }}",
                            alpha="{{ params.alpha }}", min_effect="{{ params.min_effect }}")
