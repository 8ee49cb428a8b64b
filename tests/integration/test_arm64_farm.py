"""An arm64 board in the test farm (issue #15, first slice): a real sshd in its own network namespace whose every
command runs as arm64 code (tests/farm.py's ARM64_ENTER: a private binfmt_misc instance handing aarch64 programs
to qemu-aarch64-static, chrooted into bookworm's arm64 userland). Over SSH, as a controller sees it: ``uname -m``
says aarch64, ``python3.11`` is aarch64 code, SFTP works on the board's work dir, and requestflow's runner run on
the board gives the x86 runner's tflite predictions with ``machine.emulated`` detected on the board itself.

Here the runner's dependencies come from ``operators.arm64_runner.runner_site`` and requestflow from this checkout,
shared with the board; ``tests/integration/test_arm64_provision.py`` provisions the same board through
``board_provision``
(the aarch64 wheelhouse, ``pip --no-index`` on the board). Not yet: ``./dev.sh farm up arm64``. Needs root, the
farm's tools and a Linux with binfmt_misc per user namespace (6.7 or later)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from requestflow.board.runner import RunConfig, run
from tests.farm import Farm, require_arm64_board

ROOT = Path(__file__).resolve().parents[2]
ARM64_CACHE = Path(os.environ.get("REQUESTFLOW_ARM64_CACHE") or Path.home() / ".cache" / "requestflow" / "arm64")
MODEL, WEIGHTS = "mobilenet-v1-0.25-128", "mobilenet_v1_0.25_128_quant.tflite"
IMAGES = 10


@pytest.fixture(scope="module")
def farm(tmp_path_factory, models_dir):
    require_arm64_board()
    from operators import arm64_runner as arm64

    userland = arm64.python_userland(ARM64_CACHE, log=lambda line: None)
    site = arm64.runner_site(ARM64_CACHE, log=lambda line: None)
    shared = [site, ROOT, models_dir.parent]
    with Farm(1, tmp_path_factory.mktemp("farm"), arm64=[1], arm64_rootfs=userland.path, shared=shared) as farm:
        farm.site = site
        yield farm
    # the board wrote its mount points into its session's overlay, never into the cached userland
    assert not (userland.path / str(site).lstrip("/")).exists()
    assert arm64.python_userland(ARM64_CACHE, log=lambda line: None).reused


def test_the_board_is_arm64_over_ssh(farm):
    board = farm.boards[0]
    with board.connection() as connection:
        machine = connection.run("uname -m", hide=True).stdout.strip()
        python = connection.run("python3.11 -c 'import platform; print(platform.machine())'", hide=True)
        cpu = connection.run("grep -m1 '^model name' /proc/cpuinfo", hide=True).stdout
        assert machine == "aarch64" and python.stdout.strip() == "aarch64"
        assert "Intel" in cpu or "AMD" in cpu  # qemu-user shows the host's CPU: what detection keys on
        # SFTP reaches the same work dir the board's commands see
        local = farm.dir / "note.txt"
        local.write_text("from the controller\n")
        connection.put(str(local), f"{board.work_dir}/note.txt")
        assert connection.run(f"cat {board.work_dir}/note.txt", hide=True).stdout == "from the controller\n"
    # nothing was registered on the host: binfmt_misc is not even mounted here
    assert not any(line.split()[1] == "/proc/sys/fs/binfmt_misc" for line in Path("/proc/mounts").read_text()
                   .splitlines())


def test_the_runner_on_the_board_gives_x86s_predictions_and_knows_it_is_emulated(farm, models_dir):
    board = farm.boards[0]
    out = f"{board.work_dir}/accuracy.json"
    env = (f"PYTHONPATH={farm.site}:{ROOT} REQUESTFLOW_CACHE={board.work_dir}/cache PYTHONDONTWRITEBYTECODE=1 "
           f"REQUESTFLOW_DATA={models_dir.parent}")
    with board.connection() as connection:
        result = connection.run(f"{env} python3.11 -m requestflow.cli run --model {MODEL} --backend tflite "
                                f"--mode accuracy --limit {IMAGES} --weights {models_dir / WEIGHTS} --quiet "
                                f"--out {out}", hide=True, warn=True, timeout=900)
        assert result.return_code == 0, result.stderr[-3000:]
    arm = json.loads(Path(out).read_text())
    x86 = run(RunConfig(model=MODEL, backend="tflite", mode="accuracy", limit=IMAGES, progress=False,
                        weights=[str(models_dir / WEIGHTS)]))
    assert [p["top5"] for p in arm["predictions"]] == [p["top5"] for p in x86["predictions"]]
    machine = arm["machine"]
    assert machine["arch"] == "aarch64" and machine["hostname"] == board.name
    assert machine["emulated"]["evidence"] == [
        "the runner's Python is aarch64 code and /proc/cpuinfo describes an x86_64 CPU"]
