"""What each sweep point needs from the controller before a board is touched: its weights and its images.

``prepare`` runs in a sweep's ``plan`` task. A point's weights are resolved exactly as the runner resolves them
(``requestflow.board.resolve``, the same code): the controller's data folder first (the shared data, or
requestflow's own, ``requestflow dataset import``), then the controller's download cache, then a download
(verified against the sha256 lock; ``$REQUESTFLOW_WEIGHTS_MIRROR`` for a local mirror). A point whose real weights
cannot be had runs on randomly initialised weights when it is a performance point (``weights: random``, labelled
random in its result and on the scoreboard; the plan task says why) and is refused, by name, when it is an accuracy
point. Accuracy points also need ImageNet validation images in the data folder; without them they are refused with
one line saying how to add them. Refused points are stored as failures of the sweep; the others run.

``files_for_points`` (in ``provision``) lists what to ship for the prepared points: data-folder files (weights the
data folder holds, the accuracy images) to the board's ``data/``, and downloaded release files to the board's
``cache/downloads/`` where the runner's own resolution finds them (the runner never downloads: ``--offline``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from requestflow.errors import UserError

IMAGES_HINT = ("accuracy needs ImageNet validation images: add them with `requestflow dataset import "
               "ILSVRC2012_img_val.tar --devkit ILSVRC2012_devkit_t12.tar.gz` (or point $REQUESTFLOW_DATA at a data "
               "folder holding them)")


def controller_data_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    """The controller's data folder: ``explicit``, else ``$REQUESTFLOW_DATA``, else the shared or requestflow's own
    data folder (``requestflow.board.files.shared_data_dir``). None when there is none."""
    from requestflow.board.files import shared_data_dir

    if explicit:
        return Path(explicit) if Path(explicit).is_dir() else None
    return shared_data_dir()


def has_images(data: Path | None) -> bool:
    """Whether ``data`` holds the ImageNet validation images and their ground truth the runner reads."""
    return data is not None and (data / "imagenet" / "val").is_dir() and (data / "imagenet" / "val.txt").is_file()


@dataclass
class Prepared:
    """The points that can run (weights pinned where the controller resolved them), those refused and why, and
    one note per point that falls back to random weights."""

    points: list[dict] = field(default_factory=list)
    refused: list[tuple[dict, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def controller_weights(point: dict, data: Path | None, allow_download: bool = True):
    """The real weights the controller has (or gets) for ``point``, as ``resolve.ResolvedWeights`` (origin
    ``local``: the data folder's, never another than ``data``; ``cache`` / ``download``: the controller's download
    cache). Raises
    ``resolve.WeightsUnavailable`` when there are none."""
    from requestflow.board import catalogue, resolve

    model = catalogue.get_model(point["model"])
    return resolve.resolve(model, point.get("backend", "tflite"), point.get("precision"), point.get("release"),
                           allow_download=allow_download, data=data, data_folder=data is not None)


def prepare(points: list[dict], data: Path | None, allow_download: bool = True) -> Prepared:
    """Resolve every point's weights and images on the controller (see the module's text)."""
    from requestflow.board.catalogue import point_label
    from requestflow.board.resolve import WeightsUnavailable

    prepared = Prepared()
    for point in points:
        accuracy = point.get("mode", "performance") == "accuracy"
        if accuracy and not has_images(data):
            prepared.refused.append((point, IMAGES_HINT))
            continue
        if point.get("weights") == "random":  # asked for (the sweep's weights = random)
            prepared.points.append(point)
            continue
        try:
            weights = controller_weights(point, data, allow_download)
        except WeightsUnavailable as exc:
            if accuracy:
                prepared.refused.append((point, f"accuracy needs real weights: {exc}"))
            else:
                prepared.points.append({**point, "weights": "random"})
                prepared.notes.append(f"{point_label(point)}: no real weights ({exc.reason}): performance on "
                                      "RANDOMLY INITIALISED weights, labelled random")
            continue
        if weights.origin == "local":
            prepared.points.append(point)  # the board finds the same files in its data folder
        else:  # the runner must take the very release the controller has: pinned
            prepared.points.append({**point, "release": weights.release})
    return prepared


@dataclass
class Shipment:
    """What provisioning copies to a board: ``(local path, path relative to the board's data dir)`` and
    ``(local path, path relative to the board's cache dir)``, each sorted by destination."""

    data: list[tuple[Path, str]]
    cache: list[tuple[Path, str]]


def files_for_points(points: list[dict], data_dir: str | os.PathLike | None) -> Shipment:
    """What the runner needs on the board for prepared ``points``: in its data folder, the weights the controller's
    data folder holds and, for accuracy points, ``val.txt``, ``synset_words.txt`` and the images the runner selects
    (the first ``limit`` in file name order); in its cache, a downloaded release's file at the place where the
    runner's own download would have left it (``downloads/<key>/<name>``).
    Points on random weights need no weights file; an accuracy point on random weights, or a point whose weights or
    images are not to be had, is a UserError naming it."""
    from requestflow.board.catalogue import point_label
    from requestflow.board.dataset import load_dataset
    from requestflow.board.download import cached_download_path
    from requestflow.board.files import cache_dir
    from requestflow.board.resolve import WeightsUnavailable

    data = Path(data_dir) if data_dir is not None and Path(data_dir).is_dir() else None
    chosen: dict[tuple[str, str], Path] = {}
    datasets: dict[int | None, object] = {}
    for point in points:
        label = point_label(point)
        accuracy = point.get("mode", "performance") == "accuracy"
        if point.get("weights") == "random":
            if accuracy:
                raise UserError(f"{label}: accuracy needs real weights, not random ones")
        else:
            try:
                weights = controller_weights(point, data)
            except WeightsUnavailable as exc:
                raise UserError(f"{label}: {exc}") from None
            if weights.origin == "local":
                for path in weights.paths:
                    chosen[("data", path.relative_to(data).as_posix())] = path
            else:
                archive = cached_download_path(weights.url)
                chosen[("cache", archive.relative_to(cache_dir()).as_posix())] = archive
        if accuracy:
            if not has_images(data):
                raise UserError(f"{label}: {IMAGES_HINT}")
            limit = point.get("limit")
            if limit not in datasets:
                # the runner's default images: <data>/imagenet/val, with val.txt beside it (runner.default_images)
                datasets[limit] = load_dataset(data / "imagenet" / "val", limit=limit)
            dataset = datasets[limit]
            for path in (dataset.val_txt, dataset.val_txt.parent / "synset_words.txt",
                         *(dataset.images_dir / name for name in dataset.files)):
                chosen[("data", path.relative_to(data).as_posix())] = path
    return Shipment(*([(path, relative) for (root, relative), path in sorted(chosen.items()) if root == where]
                      for where in ("data", "cache")))


def record_refused(engine, sweep: str, dag_id: str | None, board: str, refused: list[tuple[dict, str]],
                   log: Callable[[str], None] = print) -> None:
    """Store each refused point as a failure of the sweep (``Refused``), so that the sweep accounts for it."""
    from requestflow.board.catalogue import point_label
    from requestflow.results.sweeps import record_failure

    for point, reason in refused:
        log(f"REFUSED {point_label(point)}: {reason}")
        record_failure(engine, sweep, dag_id, board, point, "Refused", reason, attempts=0)
