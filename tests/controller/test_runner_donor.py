"""Which installed runner a new runner's venv is made from (operators.deploy.choose_donor), read from the board's
listing (``_split_donors``); and that the clone's commands pin, prune and repoint as documented. The real clones
are in tests/integration/test_deploy.py (same dependencies) and test_runtime_sweep.py (a spec from another venv)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from operators.deploy import _REPOINT, _split_donors, choose_donor

PY = "python /usr/bin/python3.11 3.11.7"
WANTED = {"tensorflow.whl": "t", "numpy.whl": "n", "litert-1.4.whl": "l14"}
SIZES = {"tensorflow.whl": 270, "numpy.whl": 17, "litert-1.4.whl": 20, "litert-2.3.whl": 22}


def test_the_listing_is_read_after_the_probes_own_lines():
    out = ("/w\nx86_64\npython 3.11 3.11.7 /usr/bin/python3.11\n--donors--\ndonor aaa\n" + PY
           + "\nnumpy.whl n\ntensorflow.whl t\ndonor bbb\n" + PY + "\n")
    lines, donors = _split_donors(out)
    assert lines == ["/w", "x86_64", "python 3.11 3.11.7 /usr/bin/python3.11"]
    assert donors == {"aaa": (PY, {"numpy.whl": "n", "tensorflow.whl": "t"}), "bbb": (PY, {})}
    assert _split_donors("/w\nx86_64\nDEPLOYED\n") == (["/w", "x86_64", "DEPLOYED"], {})


def test_the_same_wheels_are_an_exact_donor_before_any_other():
    donors = {"a": (PY, {"tensorflow.whl": "t", "numpy.whl": "n", "litert-2.3.whl": "l23"}), "b": (PY, dict(WANTED))}
    assert choose_donor(donors, PY, WANTED, SIZES) == ("b", True)


def test_a_donor_sharing_most_bytes_is_used_and_not_told_exact():
    donors = {"a": (PY, {"numpy.whl": "n"}), "b": (PY, {"tensorflow.whl": "t", "numpy.whl": "n",
                                                        "litert-2.3.whl": "l23"})}
    assert choose_donor(donors, PY, WANTED, SIZES) == ("b", False)


def test_no_donor_when_little_is_shared_the_python_differs_a_wheel_differs_or_it_is_itself():
    assert choose_donor({"a": (PY, {"numpy.whl": "n"})}, PY, WANTED, SIZES) == (None, False)
    assert choose_donor({"a": ("python /usr/bin/python3.11 3.11.9", dict(WANTED))}, PY, WANTED, SIZES) == \
        (None, False)
    assert choose_donor({"a": (PY, {**WANTED, "tensorflow.whl": "other"})}, PY, WANTED, SIZES) == (None, False)
    assert choose_donor({"a": (PY, dict(WANTED))}, PY, WANTED, SIZES, own="a") == (None, False)


def test_a_hard_linked_copy_is_pointed_at_its_own_folder_without_touching_the_donors_files(tmp_path):
    donor = tmp_path / "runner" / "old" / "venv"
    (donor / "bin").mkdir(parents=True)
    (donor / "pyvenv.cfg").write_text(f"home = /usr/bin\ncommand = /usr/bin/python3 -m venv {donor}\n")
    (donor / "bin" / "tool").write_text(f"#!{donor}/bin/python\nimport tool\n")
    os.chmod(donor / "bin" / "tool", 0o755)
    (donor / "bin" / "data").write_text("nothing to change\n")
    os.symlink("/usr/bin/python3", donor / "bin" / "python")
    clone = tmp_path / "runner" / "new" / "venv.clone"
    clone.parent.mkdir()
    subprocess.run(["cp", "-al", str(donor), str(clone)], check=True)
    subprocess.run([sys.executable, "-c", _REPOINT, str(donor), str(clone)], check=True)
    new = tmp_path.resolve() / "runner" / "new" / "venv"
    assert (clone / "bin" / "tool").read_text() == f"#!{new}/bin/python\nimport tool\n"
    assert os.access(clone / "bin" / "tool", os.X_OK)
    assert (clone / "pyvenv.cfg").read_text().endswith(f"-m venv {new}\n")
    assert (donor / "bin" / "tool").read_text() == f"#!{donor}/bin/python\nimport tool\n"  # the donor's own
    assert (clone / "bin" / "data").samefile(donor / "bin" / "data")  # unchanged files stay shared
    assert os.readlink(clone / "bin" / "python") == "/usr/bin/python3"
    assert not Path(f"{clone}/bin/tool.new").exists()
