"""The suite on several workers (pytest-xdist; ``./dev.sh test`` runs two): one lane for the board farm, the other
modules spread over the workers, each module whole on one worker.

A machine has one board farm at a time (``tests/farm.py``'s lock: fixed namespace names), so every module that
starts one is in a single work unit, ``farm``, run by one worker in collection order (the arm64 provision module
before the NEON sweep's, ``tests/integration/conftest.py``), first in the queue since it is the longest; every other
module is a work unit of its own, its module fixtures (an Airflow, a farm-free database) set up once. Without
workers (``-n 0``, a single module) nothing here changes the order.

What starts a farm is read from a module's source (:data:`STARTS_A_FARM`): a new farm module that this misses still
runs correctly, only its worker waits for the farm lock meanwhile.
"""

from __future__ import annotations

import os
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FARM = "farm"
STARTS_A_FARM = re.compile(r"\bfarm_fixture\b|\bFarm\(|\brequire_arm64_board\b|\bCeleryStack\b|"
                           r"^from tests\.celery_stack import .*\bavailable\b", re.M)  # the last: ./dev.sh stack


@cache
def starts_a_farm(path: str) -> bool:
    try:
        return bool(STARTS_A_FARM.search((ROOT / path).read_text()))
    except OSError:
        return False


def lane(nodeid: str) -> str:
    """The work unit of a test: ``farm``, or its module's path."""
    path = nodeid.split("::", 1)[0]
    return FARM if starts_a_farm(path) else path


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    config.option.loadscopereorder = False  # units in collection order: the farm's first (below)

    class Lanes(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return lane(nodeid)

    return Lanes(config, log)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items) -> None:
    """On a worker: the farm's tests first (the order among them and among the rest kept), so that the first
    worker starts the longest unit at once."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    items[:] = sorted(items, key=lambda item: lane(item.nodeid) != FARM)  # stable
