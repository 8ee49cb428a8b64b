"""The controller's runner bundles do not fill its disk (operators/bundle.py prune_bundles): every edit of
requestflow's sources makes a new bundle (some 360 MB for x86_64); a new one removes those beyond the few used last,
unless used within the last hours (a provisioning may still be sending its wheels)."""

from __future__ import annotations

import os
import time

from operators.bundle import prune_bundles


def bundle(folder, name: str, used_h_ago: float) -> None:
    (folder / name).mkdir()
    (folder / name / "wheel.whl").write_bytes(b"w")
    manifest = folder / name / "manifest.json"
    manifest.write_text("{}")
    when = time.time() - used_h_ago * 3600
    os.utime(manifest, (when, when))


def test_the_bundles_used_last_and_recently_stay_the_others_go(tmp_path):
    for name, hours in (("new", 0), ("second", 1), ("third", 2), ("recent", 2.5), ("old", 5), ("older", 50)):
        bundle(tmp_path, name, hours)
    (tmp_path / ".build-1-abc").mkdir()  # a build in progress: not a bundle
    (tmp_path / "damaged").mkdir()  # no manifest: not a bundle either (the next build of it replaces it)
    lines: list[str] = []
    gone = prune_bundles(tmp_path, keep=3, after_s=3 * 3600, log=lines.append)
    assert sorted(gone) == ["old", "older"]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == [
        ".build-1-abc", "damaged", "new", "recent", "second", "third"]
    assert lines == ["removed 2 runner bundle(s) not used for 3 h: old, older"]
    assert prune_bundles(tmp_path, keep=3, after_s=3 * 3600, log=lines.append) == [] and len(lines) == 1
