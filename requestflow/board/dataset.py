"""ImageNet validation images in the seed workflow's layout, and their Inception preprocessing.

Layout: a folder of ``ILSVRC2012_val_*.JPEG``, ``val.txt`` (``FILE CLASS``, CLASS 0-based in 0..999) and
``synset_words.txt`` (line i = class i). A run takes the first N images in file-name order, or all.

Preprocessing, exactly as the shared data's reference accuracies were computed: convert to RGB (grayscale, CMYK,
palette and alpha images included), central crop of 87.5% per side (TensorFlow's ``central_crop`` rounding),
Pillow bilinear resize to the model's resolution; the result is uint8 pixels, given as they are to uint8 models
and scaled by ``x / 127.5 - 1`` for float ones. The uint8 tensors are cached on disk, keyed by everything that
determines them (file list and sizes, resolution, every parameter, Pillow's version).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from requestflow.board.files import cache_dir, canonical_json, sha256_file, sha256_text
from requestflow.errors import UserError

IMAGE_PATTERN = re.compile(r"^ILSVRC2012_val_\d+\.JPEG$", re.IGNORECASE)
CROP_FRACTION = 0.875
PREPROCESS_VERSION = 1


def preprocessing_parameters(resolution: int, input_dtype: str) -> dict:
    from PIL import __version__ as pillow_version
    return {
        "version": PREPROCESS_VERSION,
        "color": "RGB",
        "central_crop_fraction": CROP_FRACTION,
        "crop_rounding": "tf.image.central_crop: offset = int((size - size * fraction) / 2)",
        "resize": "bilinear",
        "resize_library": f"pillow {pillow_version}",
        "resolution": resolution,
        "layout": "NHWC",
        "input_dtype": input_dtype,
        "scaling": "x / 127.5 - 1" if input_dtype == "float32" else "none (uint8 0..255)",
    }


def preprocess_image(path: str | os.PathLike, resolution: int) -> np.ndarray:
    """uint8 [resolution, resolution, 3]; raises OSError / ValueError for an unreadable image."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        width, height = image.size
        left = int((width - width * CROP_FRACTION) / 2)
        top = int((height - height * CROP_FRACTION) / 2)
        image = image.crop((left, top, width - left, height - top))
        image = image.resize((resolution, resolution), Image.BILINEAR)
        return np.asarray(image, dtype=np.uint8)


@dataclass(frozen=True)
class Dataset:
    """The selected images, their true classes, and the class names."""

    images_dir: Path
    files: tuple[str, ...]
    labels: tuple[int, ...]
    val_txt: Path
    val_txt_sha256: str
    class_names: tuple[str, ...]

    @property
    def file_list_sha256(self) -> str:
        """A hash of the selected file names with their sizes and true classes, in order."""
        rows = [f"{name} {(self.images_dir / name).stat().st_size} {label}"
                for name, label in zip(self.files, self.labels, strict=True)]
        return sha256_text("\n".join(rows))

    def describe(self) -> dict:
        return {"path": str(self.images_dir), "image_count": len(self.files),
                "file_list_sha256": self.file_list_sha256, "val_txt": str(self.val_txt),
                "val_txt_sha256": self.val_txt_sha256, "first": self.files[0], "last": self.files[-1]}


def read_class_names(path: Path) -> tuple[str, ...]:
    """``synset_words.txt``: ``nXXXXXXXX name, synonyms`` per line -> the names, line i = class i."""
    try:
        lines = [line.rstrip("\n") for line in path.read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise UserError(f"cannot read class names {path}: {exc.strerror}") from None
    if len(lines) != 1000:
        raise UserError(f"{path}: {len(lines)} class names, expected 1000")
    return tuple(line.split(" ", 1)[1] if re.match(r"^n\d{8} ", line) else line for line in lines)


# a val.txt line as the loop below reads it, for the common case: FILE, whitespace, a class of 1-3 digits
_TRUTH_LINE = re.compile(r"^[ \t]*(\S+)[ \t]+(\d{1,3})[ \t]*$", re.MULTILINE)
_NON_BLANK = re.compile(r"^[ \t]*\S", re.MULTILINE)


def read_truth(val_txt: Path) -> dict[str, str]:
    """``val.txt``: file name -> its class (digits, 0..999). All 50,000 lines are checked; a run of 500 images reads
    them in one regular expression (what the line-by-line reading below accepts), the line-by-line reading only
    when some line is not of that common form, to accept it or name it."""
    text = val_txt.read_text()
    pairs = _TRUTH_LINE.findall(text)
    if "\r" not in text and len(pairs) == len(_NON_BLANK.findall(text)):
        return dict(pairs)
    truth = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit() or not 0 <= int(parts[1]) < 1000:
            raise UserError(f"{val_txt}:{number}: expected 'FILE CLASS' with CLASS in 0..999, got {line!r}")
        truth[parts[0]] = parts[1]
    return truth


def load_dataset(images_dir: str | os.PathLike, val_txt: str | os.PathLike | None = None,
                 synset_words: str | os.PathLike | None = None, limit: int | None = None) -> Dataset:
    images_dir = Path(images_dir)
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1, got {limit}")
    if not images_dir.is_dir():
        raise UserError(f"image folder {images_dir} does not exist")
    val_txt = Path(val_txt) if val_txt else images_dir.parent / "val.txt"
    synset_words = Path(synset_words) if synset_words else val_txt.parent / "synset_words.txt"
    if not val_txt.is_file():
        raise UserError(f"ground truth {val_txt} does not exist (pass --val-txt)")
    truth = read_truth(val_txt)
    files = sorted(name for name in os.listdir(images_dir) if IMAGE_PATTERN.match(name))
    if not files:
        raise UserError(f"no ILSVRC2012_val_*.JPEG images in {images_dir}")
    files = files[:limit] if limit else files
    missing = [name for name in files if name not in truth]
    if missing:
        raise UserError(f"image {missing[0]} is missing from {val_txt}"
                        + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return Dataset(images_dir, tuple(files), tuple(int(truth[name]) for name in files), val_txt,
                   sha256_file(val_txt), read_class_names(synset_words))


@dataclass
class Preprocessed:
    pixels: np.ndarray  # uint8 [n_ok, R, R, 3], in dataset order without the failed images
    ok: list[int]  # indices into the dataset's files
    failed: list[dict]  # {"file", "error"}
    cached: bool


def cache_folder(dataset: Dataset, resolution: int) -> Path:
    """The preprocessed cache's entry of ``dataset`` at ``resolution``: keyed by the selected files (names, sizes,
    classes) and every preprocessing parameter (the uint8 pixels: the same for every precision)."""
    parameters = preprocessing_parameters(resolution, "uint8")
    return cache_dir("preprocessed") / sha256_text(canonical_json({"files": dataset.file_list_sha256,
                                                                   "parameters": parameters}))


def load_cached(folder: Path) -> Preprocessed | None:
    """The cache entry in ``folder``; None when absent or damaged (it is then rebuilt)."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        pixels = np.load(folder / "pixels.npy", mmap_mode="r")
        if pixels.shape[0] >= len(meta["ok"]):
            return Preprocessed(pixels[: len(meta["ok"])], meta["ok"], meta["failed"], True)
    except (OSError, ValueError, KeyError):
        pass
    return None
