"""Every task that works on a board has a deadline (issue #22): Airflow's execution_timeout, unless given one."""

from __future__ import annotations

import datetime as dt

from operators.provision import CLOCKS_TIMEOUT, PROVISION_TIMEOUT, ClocksOperator, ProvisionBoardOperator
from operators.run_point import RunPointOperator

POINT = {"model": "mobilenet-v1-0.25-128", "backend": "tflite", "mode": "accuracy"}


def test_provisioning_pinning_and_running_a_point_have_a_deadline():
    assert ProvisionBoardOperator(task_id="p", board_conn_id="local").execution_timeout == PROVISION_TIMEOUT
    for action in ("pin", "restore"):
        assert ClocksOperator(task_id=action, board_conn_id="local", action=action).execution_timeout == CLOCKS_TIMEOUT
    run = RunPointOperator(task_id="r", board_conn_id="local", point=POINT, setup_s=60, mode_caps_s={"accuracy": 100})
    assert run.execution_timeout > dt.timedelta(seconds=160)  # the outer guard, past the point's own deadline


def test_a_deadline_given_is_kept():
    given = dt.timedelta(minutes=3)
    provision = ProvisionBoardOperator(task_id="p", board_conn_id="local", execution_timeout=given)
    assert provision.execution_timeout == given
    assert ClocksOperator(task_id="c", board_conn_id="local", action="pin",
                          execution_timeout=given).execution_timeout == given
