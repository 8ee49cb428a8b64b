"""RegressionCheckOperator: detect the regressions of the sweep(s) that updated the results asset, and fail (so that
Airflow's alerting fires) while some are unacknowledged.

Which sweeps: the ``sweep`` argument when it is given (templated; the ``regression_check`` DAG passes its param
``sweep``, for a manual check of one sweep), else the run ids of the Airflow runs whose asset events triggered this
run (``context["triggering_asset_events"]``: each event's ``source_run_id``; several when sweeps finished while
a check was queued). The detection itself is ``requestflow.results.regressions.detect``, on the store of the
``ResultsHook``; this operator only chooses the sweeps and turns unacknowledged regressions into a failure whose
message names each one (point, metric, old -> new, p-value).
"""

from __future__ import annotations

from functools import cached_property

from airflow.sdk import BaseOperator

from operators.config import RESULTS_ASSET
from requestflow.results.database import CONN_ID
from requestflow.results.regression_compare import DEFAULT_ALPHA, DEFAULT_MIN_EFFECT, DEFAULT_WINDOW

MAX_LISTED = 20  # regressions named in the failure message (all of them are in the log and the store)


def triggering_sweeps(context, asset_uri: str = RESULTS_ASSET) -> list[str]:
    """The run ids (in order, without repeats) of the runs whose events of the asset ``asset_uri`` triggered this
    run; none for a run that no asset event triggered (manual, ``dag.test()``)."""
    events = context.get("triggering_asset_events") or {}
    sweeps: list[str] = []
    for asset, asset_events in events.items():
        if getattr(asset, "uri", None) != asset_uri:
            continue
        for event in asset_events:
            run_id = getattr(event, "source_run_id", None)
            if run_id and run_id not in sweeps:
                sweeps.append(run_id)
    return sweeps


class RegressionCheckOperator(BaseOperator):
    """Detect and store the regressions of a sweep; fail (no retry) while any of them is unacknowledged."""

    template_fields = ("sweep", "window", "alpha", "min_effect")
    ui_color = "#f9e0e0"

    def __init__(self, *, sweep: str | None = None, window: int | str = DEFAULT_WINDOW,
                 alpha: float | str = DEFAULT_ALPHA, min_effect: float | str = DEFAULT_MIN_EFFECT,
                 asset_uri: str = RESULTS_ASSET, results_conn_id: str = CONN_ID, **kwargs) -> None:
        super().__init__(**kwargs)
        self.sweep = sweep
        self.window = window
        self.alpha = alpha
        self.min_effect = min_effect
        self.asset_uri = asset_uri
        self.results_conn_id = results_conn_id

    @cached_property
    def hook(self):
        from operators.results_hook import ResultsHook

        return ResultsHook(self.results_conn_id)

    def sweeps(self, context) -> list[str]:
        explicit = str(self.sweep or "").strip()
        return [explicit] if explicit else triggering_sweeps(context, self.asset_uri)

    def execute(self, context) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from requestflow.errors import UserError
        from requestflow.results.regression_compare import Settings
        from requestflow.results.regressions import detect

        try:  # templated values arrive as text
            settings = Settings(window=int(self.window), alpha=float(self.alpha),
                                min_effect=float(self.min_effect))
        except (TypeError, ValueError) as exc:
            raise AirflowFailException(f"bad settings: window {self.window!r}, alpha {self.alpha!r}, min_effect "
                                       f"{self.min_effect!r} ({exc})") from None
        except UserError as exc:
            raise AirflowFailException(f"bad settings: {exc}") from None
        sweeps = self.sweeps(context)
        if not sweeps:
            raise AirflowFailException(f"no sweep to check: no event of the asset {self.asset_uri} triggered this "
                                       "run; trigger it with the param sweep (a sweep's run id) to check one")
        reports = []
        with self.hook.engine() as engine:
            for sweep in sweeps:
                try:
                    report = detect(engine, sweep, settings.window, settings.alpha, settings.min_effect)
                except UserError as exc:  # an unknown sweep: no retry will find it
                    raise AirflowFailException(str(exc)) from None
                self.log.info("%s", report.summary())
                reports.append(report)
        open_ = [(r.sweep, f) for r in reports for f in r.unacknowledged]
        if open_:
            lines = [f"{f.describe()}  [sweep {sweep}]" for sweep, f in open_[:MAX_LISTED]]
            more = f"\n... and {len(open_) - MAX_LISTED} more (requestflow regressions)" if len(open_) > MAX_LISTED \
                else ""
            raise AirflowFailException(
                f"{len(open_)} unacknowledged regression(s) in sweep(s) {', '.join(sweeps)}:\n" + "\n".join(lines)
                + more + "\nacknowledge a known step change with: requestflow regressions ack ID --reason TEXT")
        return {"sweeps": sweeps, "checked": sum(r.checked for r in reports),
                "regressions": sum(len(r.findings) for r in reports), "stored": sum(r.stored for r in reports)}
