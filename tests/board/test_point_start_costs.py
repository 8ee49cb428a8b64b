"""What every point's runner repeats, not repeated (issue #20): the OpenCL probe's answer remembered in the board's
cache (a point's document gets what the board's first point probed; anything the answer depends on, here an OpenCL
variable of the environment, changed makes a new probe; the probe itself a stand-in: no driver loaded), and a
board command parsed without importing the controller's commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from requestflow.board import opencl_probe
from requestflow.board.machine import machine_info


def test_probed_once_then_remembered_until_what_it_depends_on_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("REQUESTFLOW_CACHE", str(tmp_path))
    monkeypatch.delenv("POCL_DEVICES", raising=False)
    probes = []

    def probe() -> dict:
        probes.append(1)
        return {"available": True, "source": "pyopencl", "platforms": [{"name": f"probe {len(probes)}"}]}

    monkeypatch.setattr(opencl_probe, "opencl", probe)
    first = opencl_probe.opencl_remembered()
    assert opencl_probe.opencl_remembered() == first and len(probes) == 1
    assert machine_info(tmp_path, with_opencl=True)["opencl"] == first and len(probes) == 1
    monkeypatch.setenv("POCL_DEVICES", "basic")  # another device set: another answer, probed
    assert opencl_probe.opencl_remembered()["platforms"] == [{"name": "probe 2"}]
    (stored,) = [p for p in (tmp_path / "opencl").iterdir() if "probe 1" in p.read_text()]
    stored.write_text("{damaged")  # a damaged entry is probed again, not an error
    monkeypatch.delenv("POCL_DEVICES")
    assert opencl_probe.opencl_remembered()["platforms"] == [{"name": "probe 3"}]


def test_a_point_server_s_children_take_its_answer(monkeypatch):
    monkeypatch.setattr(opencl_probe, "_known", {"available": False, "source": None, "reason": "the server's"})
    assert opencl_probe.opencl_remembered()["reason"] == "the server's"


def test_a_board_command_does_not_import_the_controller_s_commands_and_help_lists_them():
    code = ("import sys; from requestflow.cli import main; main(['validate', '/nonexistent.json']); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('operators', 'airflow')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stderr[-2000:]
    from requestflow.cli import build_parser

    assert "sweep" in build_parser().format_help()  # the controller's, with everything else
