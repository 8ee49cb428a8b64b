"""The controller's configuration, in one place: where the checkout is, the board inventory and its pools, the
ArmCL builds and the nightly sweep's settings (``config/*.json``), the results Asset, the retry delay.

Everything here is plain Python (no Airflow import), read when asked: DAG files, operators, the CLI's controller
commands and the tests all take their settings from these functions.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the checkout: dags/, operators/, plugins/, config/
CONFIG = ROOT / "config"
BOARD_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"
RESULTS_ASSET = "requestflow://results/scoreboard"  # updated by every sweep; regression detection follows it


def inventory() -> list[str]:
    """The boards: ``$REQUESTFLOW_BOARDS`` (comma-separated), else ``config/boards.json``; each name checked."""
    env = os.environ.get("REQUESTFLOW_BOARDS")
    names = [b.strip() for b in env.split(",") if b.strip()] if env else \
        json.loads((CONFIG / "boards.json").read_text())["boards"]
    for name in names:
        if not re.match(BOARD_NAME, name):
            raise ValueError(f"board name {name!r} in the inventory is not a valid name ({BOARD_NAME})")
    return names


LOCAL_SETTINGS = {"install_packages": bool}  # the local board's settings in config/boards.json's "local"


def local_settings() -> dict:
    """The local board's settings (``config/boards.json``'s ``"local"``, its keys those of LOCAL_SETTINGS, as an SSH
    board's Connection extras say them): ``{"install_packages": true}`` lets its ArmCL builds install missing build
    tools (``operators.build_tools``). A key not allowed, or a value of the wrong type, is a ValueError naming it."""
    values = json.loads((CONFIG / "boards.json").read_text()).get("local") or {}
    for name, value in values.items():
        if name not in LOCAL_SETTINGS:
            raise ValueError(f"config/boards.json: unknown setting {name!r} of the local board; known: "
                             f"{', '.join(LOCAL_SETTINGS)}")
        if not isinstance(value, LOCAL_SETTINGS[name]):
            raise ValueError(f"config/boards.json: the local board's {name} must be true or false, got {value!r}")
    return values


def pool_name(board: str) -> str:
    """The board's Airflow pool (1 slot): every task that touches the board runs in it."""
    return f"board_{board}"


def retry_delay_s() -> float:
    """Seconds between a task's attempts: 30, or $REQUESTFLOW_RETRY_DELAY_S (the tests' farm faults use 1)."""
    return float(os.environ.get("REQUESTFLOW_RETRY_DELAY_S", "30"))


def configured_builds() -> dict[str, dict]:
    """The ArmCL builds of ``config/armcl.json`` as written (name -> spec); ``operators.armcl_spec.checked_builds``
    checks each spec. ``$REQUESTFLOW_ARMCL_CONFIG`` names another file of the same form (a test's builds)."""
    path = os.environ.get("REQUESTFLOW_ARMCL_CONFIG") or CONFIG / "armcl.json"
    return json.loads(Path(path).read_text())["builds"]


def nightly() -> dict:
    """``config/nightly.json``: the nightly sweep's schedule and params."""
    return json.loads((CONFIG / "nightly.json").read_text())
