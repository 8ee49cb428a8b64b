"""Shared fixtures. Tests use the real shared data (../shared/data): in CI its absence is a failure, not a skip."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

import pytest

from tests.lanes import pytest_collection_modifyitems, pytest_xdist_make_scheduler  # noqa: F401 - workers' lanes
from tests.leftovers import pytest_sessionfinish, pytest_sessionstart  # noqa: F401 - the leftover-process check
from tests.slow_log import pytest_configure, pytest_runtest_logreport  # noqa: F401 - slow phases printed as they end

ROOT = Path(__file__).resolve().parents[1]

# Airflow reads its configuration when first imported: give the test session its own home (never ~/airflow), the
# project's DAGs, and no examples, before any test module imports it.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="rf-airflow-home-"))
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(ROOT / "dags"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")


def _absl_writes_to_the_real_stderr() -> None:
    """absl's logging handler (TensorFlow's) keeps the ``sys.stderr`` of the moment absl is imported, under pytest a
    capture stream, and closes it when logging is configured again (Airflow's first import does: ``dictConfig``
    closes the existing handlers) unless it is the ``sys.stderr`` of that moment. A test running TensorFlow, then
    one importing Airflow under ``capsys``: pytest's own stream closed, the process dead ("lost sys.stderr"; seen
    when the workers' module order put tests/results/test_archive.py before test_quality.py). Its stream is the
    process's real stderr instead, which absl never closes and pytest's fd capture still captures."""
    try:
        import absl.logging
    except ImportError:
        return
    absl.logging.get_absl_handler().python_handler.stream = sys.__stderr__


_absl_writes_to_the_real_stderr()


def _shared_data() -> Path | None:
    env = os.environ.get("REQUESTFLOW_DATA")
    candidate = Path(env) if env else ROOT.parent / "shared" / "data"
    return candidate if (candidate / "README.md").is_file() else None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    data = _shared_data()
    if data is None:
        if os.environ.get("CI"):
            pytest.fail("the shared data folder (../shared/data or $REQUESTFLOW_DATA) is missing in CI")
        pytest.skip("shared data folder not available")
    return data


@pytest.fixture(scope="session")
def models_dir(data_dir) -> Path:
    return data_dir / "models"


@pytest.fixture(scope="session")
def val_dir(data_dir) -> Path:
    return data_dir / "imagenet" / "val"


@pytest.fixture(autouse=True, scope="session")
def _isolated_state(tmp_path_factory):
    """A cache and a weights lock of the session's own: tests never touch ~/.cache or the committed lock."""
    saved = {k: os.environ.get(k) for k in ("REQUESTFLOW_CACHE", "REQUESTFLOW_WEIGHTS_LOCK", "TF_CPP_MIN_LOG_LEVEL",
                                            "POCL_CACHE_DIR")}
    os.environ["REQUESTFLOW_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ["REQUESTFLOW_WEIGHTS_LOCK"] = str(tmp_path_factory.mktemp("lock") / "weights.lock.json")
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    # PoCL's compiled kernels are the machine's, like the ArmCL builds (tests/armcl_real.py): kept across CI runs
    os.environ.setdefault("POCL_CACHE_DIR", str(Path.home() / ".cache" / "requestflow" / "pocl"))
    data = _shared_data()
    if data is not None:
        os.environ.setdefault("REQUESTFLOW_DATA", str(data))
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def run_cli(capsys):
    """Run the CLI in-process: (exit code, stdout, stderr)."""
    from requestflow.cli import main

    def run(*argv: str):
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


_SESSION_AFFINITY = os.sched_getaffinity(0)


@pytest.fixture(autouse=True)
def _restore_cpu_affinity():
    """Runs with --cpus pin this (test) process: give every thread the session's CPUs back after each test (also
    after a module fixture's run, which pinned the process before this fixture of the module's first test)."""
    saved = _SESSION_AFFINITY
    yield
    if os.sched_getaffinity(0) != saved:
        from requestflow.board.runner import pin_process

        pin_process(sorted(saved))


@pytest.fixture(autouse=True)
def _drop_logging_to_closed_streams():
    """Airflow configures logging when a test first imports it (``requestflow replay`` builds a board hook): a root
    StreamHandler on that test's captured stdout, which pytest closes after the test. Later log records (Alembic's,
    at every migration) would then print "--- Logging error ---" into other tests' stderr: drop such handlers."""
    yield
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(getattr(handler, "stream", None), "closed", False):
            root.removeHandler(handler)


@pytest.fixture(scope="session")
def board_work_root(tmp_path_factory) -> Path:
    """Work dirs of the simulated boards, kept for the whole session: a runner deployed to board rfb1 by one test
    module is reused by the next one, as it would be on a real board."""
    return tmp_path_factory.mktemp("boards")
