"""A runtime spec that cannot be installed fails only its points (issue #17), the parts without a sweep:
``provision_runtimes`` hands each failing spec to its ``failed`` callback with that spec's points and goes on, and the
provision task's callback stores them at once for a refusal but lets a transient error fail the task (Airflow retries
it) until its last attempt. The sweep itself: tests/controller/test_build_failure_sweep.py."""

from __future__ import annotations

import platform
from types import SimpleNamespace

import pytest

from operators import results_hook
from operators.board_hook import LocalBoard
from operators.provision import ProvisionBoardOperator, RuntimeInstallFailed, provision_runtimes
from requestflow.errors import UserError

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64", reason="the excluded spec is x86_64's")
EXCLUDED = "ai-edge-litert==1.3.0"  # requestflow requires >= 1.4 on x86_64: refused before any bundle or download
POINTS = [{"model": "mobilenet-v1-0.25-128", "backend": "tflite", "mode": "accuracy", "runtime": EXCLUDED},
          {"model": "mobilenet-v1-0.25-128", "backend": "tflite", "mode": "performance"}]


def test_a_refused_spec_goes_to_the_callback_with_its_points_only():
    calls = []
    pythons, failures = provision_runtimes(LocalBoard(), POINTS, None, log=lambda line: None,
                                           failed=lambda spec, points, exc: calls.append((spec, points, exc)))
    assert pythons == {} and list(failures) == [EXCLUDED]
    assert failures[EXCLUDED].startswith(f"UserError: runtime spec {EXCLUDED}: requestflow requires ai-edge-litert")
    [(spec, points, exc)] = calls
    assert (spec, points, type(exc)) == (EXCLUDED, POINTS[:1], UserError)


def test_without_a_callback_the_error_fails_provisioning_as_before():
    with pytest.raises(UserError, match=f"runtime spec {EXCLUDED}: requestflow requires"):
        provision_runtimes(LocalBoard(), POINTS, None, log=lambda line: None)


@pytest.mark.parametrize("try_number, error, stored", [
    (1, UserError("refused"), True),          # no retry can help: stored at once
    (1, RuntimeError("index timed out"), False),  # a retry may: the task fails, Airflow retries it
    (3, RuntimeError("index timed out"), True),   # its last attempt (retries 2)
])
def test_the_provision_task_stores_the_points_once_no_retry_can_help(monkeypatch, try_number, error, stored):
    recorded = []
    monkeypatch.setattr(results_hook, "fail_points_on_last_attempt",
                        lambda operator, context, points, exc: recorded.append((points, exc)))
    operator = ProvisionBoardOperator(task_id="provision", board_conn_id="local", points=POINTS, retries=2)
    operator._stored = []
    failed = operator._runtime_failed({"ti": SimpleNamespace(try_number=try_number), "run_id": "r"})
    if not stored:
        with pytest.raises(RuntimeError, match="index timed out"):
            failed(EXCLUDED, POINTS[:1], error)
        assert recorded == [] and operator._stored == []
        return
    failed(EXCLUDED, POINTS[:1], error)
    [(points, exc)] = recorded
    assert points == POINTS[:1] and operator._stored == POINTS[:1] and isinstance(exc, RuntimeInstallFailed)
    assert str(exc) == f"board local: runtime {EXCLUDED} could not be installed: {type(error).__name__}: {error}"
