"""``requestflow dataset import``: ImageNet validation images into requestflow's data folder.

The ILSVRC2012 validation images cannot be redistributed: a user who has them (``ILSVRC2012_img_val.tar`` from
image-net.org, or a folder of its JPEGs) imports them once, with their ground truth: the official devkit
(``ILSVRC2012_devkit_t12.tar.gz``: ``data/ILSVRC2012_validation_ground_truth.txt`` gives each image's
ILSVRC2012_ID, ``data/meta.mat`` maps the IDs to WordNet ids and names), or the standard form the seed workflow
used (``val.txt``: ``FILE CLASS``, CLASS 0-based in sorted-WordNet-id order, and ``synset_words.txt``: line i =
class i; both from the ``caffe_ilsvrc12`` auxiliary archive, given as files or as that archive). The devkit is
converted to that form (class = the position of the image's WordNet id among the 1,000 sorted). Accuracy points
then run on them.

What is checked, before anything is written: every image's name (``ILSVRC2012_val_NNNNNNNN.JPEG``, N in
1..50,000, no duplicates) and JPEG signature; the count (an official archive holds all 50,000; ``partial`` accepts
fewer, e.g. a subset kept for quick checks); ``val.txt`` (one ``FILE CLASS`` per line, CLASS in 0..999, no file
twice, every imported image labelled; a complete one holds 50,000 images, 50 per class, as ILSVRC2012's does);
``synset_words.txt`` (1,000 distinct WordNet ids in sorted order). No checksum list of the official images is
pinned (none could be obtained here): the import writes ``SHA256SUMS`` of what it imported, so a later damage is
found (``requestflow dataset check``).

Nothing is written half: the images are written into a staging folder beside the target, which replaces
``<data>/imagenet`` in one rename once everything passed; an existing ``imagenet`` folder is kept unless
``replace``.
"""

from __future__ import annotations

import os
import re
import shutil
import tarfile
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from requestflow.board.files import sha256_file
from requestflow.errors import UserError

VALIDATION_IMAGES = 50_000
PER_CLASS = 50
NAME = re.compile(r"^ILSVRC2012_val_(\d{8})\.JPEG$")
WNID_LINE = re.compile(r"^(n\d{8}) \S")
JPEG_MAGIC = b"\xff\xd8\xff"


@dataclass
class Imported:
    folder: Path
    images: int
    classes: int
    complete: bool

    def describe(self) -> str:
        return (f"{self.images:,} validation image(s) of {self.classes} class(es) in {self.folder}"
                + ("" if self.complete else f" (a subset of the {VALIDATION_IMAGES:,})"))


def _check_name(name: str, where: str) -> str:
    match = NAME.match(name)
    if not match or not 1 <= int(match.group(1)) <= VALIDATION_IMAGES:
        raise UserError(f"{where}: {name!r} is not an ILSVRC2012 validation image name "
                        "(ILSVRC2012_val_00000001.JPEG .. ILSVRC2012_val_00050000.JPEG)")
    return name


@contextmanager
def _images(source: Path) -> Iterator[list[tuple[str, Callable[[], BinaryIO]]]]:
    """(name, opener) of every image of a tar archive or a folder, names checked, no duplicates."""
    if source.is_dir():
        entries = []
        for path in sorted(source.iterdir()):
            if path.is_file():
                entries.append((_check_name(path.name, str(source)), lambda p=path: open(p, "rb")))
        yield _no_duplicates(entries, source)
        return
    if not source.is_file():
        raise UserError(f"{source} does not exist (give ILSVRC2012_img_val.tar or a folder of its JPEGs)")
    try:
        tar = tarfile.open(source)
    except (tarfile.TarError, OSError) as exc:
        raise UserError(f"{source}: not a readable tar archive ({exc})") from None
    with tar:
        entries = []
        for member in tar.getmembers():
            if member.isdir():
                continue
            if not member.isfile():
                raise UserError(f"{source}: member {member.name!r} is not a regular file")
            name = _check_name(Path(member.name).name, str(source))
            entries.append((name, lambda m=member: tar.extractfile(m)))
        yield _no_duplicates(entries, source)


def _no_duplicates(entries: list, source: Path) -> list:
    counts = Counter(name for name, _ in entries)
    twice = sorted(name for name, n in counts.items() if n > 1)
    if twice:
        raise UserError(f"{source}: {twice[0]} appears {counts[twice[0]]} times")
    if not entries:
        raise UserError(f"{source}: no ILSVRC2012 validation images in it")
    return sorted(entries)


def read_ground_truth(val_txt: Path) -> dict[str, int]:
    """``val.txt`` checked line by line: ``FILE CLASS``, CLASS in 0..999, no file twice."""
    truth: dict[str, int] = {}
    try:
        lines = val_txt.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read ground truth {val_txt}: {exc}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit() or not 0 <= int(parts[1]) < 1000:
            raise UserError(f"{val_txt}:{number}: expected 'FILE CLASS' with CLASS in 0..999, got {line!r}")
        name = _check_name(parts[0], f"{val_txt}:{number}")
        if name in truth:
            raise UserError(f"{val_txt}:{number}: {name} is labelled twice")
        truth[name] = int(parts[1])
    if len(truth) == VALIDATION_IMAGES:
        counts = Counter(truth.values())
        odd = sorted(c for c in range(1000) if counts.get(c, 0) != PER_CLASS)
        if odd:
            raise UserError(f"{val_txt}: class {odd[0]} has {counts.get(odd[0], 0)} images; ILSVRC2012's validation "
                            f"set has {PER_CLASS} per class (is this another data set's ground truth?)")
    elif not truth:
        raise UserError(f"{val_txt}: no 'FILE CLASS' lines")
    return truth


def check_synset_words(path: Path) -> None:
    """1,000 lines ``nXXXXXXXX words``, WordNet ids distinct and sorted (class i = the i-th id in sorted order)."""
    try:
        lines = [line for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read class names {path}: {exc}") from None
    if len(lines) != 1000:
        raise UserError(f"{path}: {len(lines)} class lines, expected 1000")
    ids = []
    for number, line in enumerate(lines, start=1):
        match = WNID_LINE.match(line)
        if not match:
            raise UserError(f"{path}:{number}: expected 'nXXXXXXXX name, synonyms', got {line[:60]!r}")
        ids.append(match.group(1))
    if ids != sorted(set(ids)):
        raise UserError(f"{path}: WordNet ids are not distinct and sorted; val.txt's classes index them in sorted "
                        "order")


def _member_files(source: Path, wanted: tuple[str, ...], staging: Path, what: str) -> dict[str, Path]:
    """The files named ``wanted`` (base names) of a tar archive or a folder (searched recursively), copied into
    ``staging`` when they come from an archive."""
    found: dict[str, Path] = {}
    if source.is_dir():
        for name in wanted:
            matches = sorted(source.rglob(name))
            if matches:
                found[name] = matches[0]
    else:
        try:
            with tarfile.open(source) as tar:
                for member in tar.getmembers():
                    name = Path(member.name).name
                    if member.isfile() and name in wanted and name not in found:
                        target = staging / ".labels" / name  # removed before the folder is put in place
                        target.parent.mkdir(exist_ok=True)
                        target.write_bytes(tar.extractfile(member).read())
                        found[name] = target
        except (tarfile.TarError, OSError) as exc:
            raise UserError(f"{source}: not a readable tar archive or folder ({exc})") from None
    missing = [name for name in wanted if name not in found]
    if missing:
        raise UserError(f"{source}: no {missing[0]} in it (expected the {what})")
    return found


def devkit_labels(meta_mat: Path, ground_truth: Path, val_txt: Path, synset_words: Path) -> None:
    """Write ``val.txt`` and ``synset_words.txt`` from the devkit's ``meta.mat`` and validation ground truth."""
    from requestflow.board import matfile

    synsets = matfile.read(meta_mat).get("synsets")
    if not isinstance(synsets, list) or not all(isinstance(s, dict) for s in synsets):
        raise UserError(f"{meta_mat}: no struct array 'synsets' (the devkit's data/meta.mat has one)")
    leaves = [s for s in synsets if s.get("num_children") == 0]
    ids = sorted(int(s.get("ILSVRC2012_ID") or 0) for s in leaves)
    if ids != list(range(1, 1001)):
        raise UserError(f"{meta_mat}: {len(leaves)} leaf synsets with IDs {ids[:1]}..{ids[-1:]}; ILSVRC2012 has "
                        "1,000, with IDs 1..1000")
    wnids = [s.get("WNID") for s in leaves]
    if len(set(wnids)) != 1000 or not all(isinstance(w, str) and WNID_LINE.match(f"{w} x") for w in wnids):
        raise UserError(f"{meta_mat}: the leaf synsets' WNIDs are not 1,000 distinct WordNet ids")
    ordered = sorted(leaves, key=lambda s: s["WNID"])
    class_of_id = {int(s["ILSVRC2012_ID"]): k for k, s in enumerate(ordered)}
    lines = []
    try:
        text = ground_truth.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {ground_truth}: {exc}") from None
    for number, line in enumerate(text.splitlines(), start=1):
        value = line.strip()
        if not value.isdigit() or int(value) not in class_of_id:
            raise UserError(f"{ground_truth}:{number}: expected an ILSVRC2012_ID in 1..1000, got {line!r}")
        lines.append(f"ILSVRC2012_val_{number:08d}.JPEG {class_of_id[int(value)]}")
    if len(lines) > VALIDATION_IMAGES:
        raise UserError(f"{ground_truth}: {len(lines):,} lines; the validation set has {VALIDATION_IMAGES:,} images")
    val_txt.write_text("\n".join(lines) + "\n")
    synset_words.write_text("".join(f"{s['WNID']} {' '.join(str(s.get('words') or s['WNID']).split())}\n"
                                    for s in ordered))


@contextmanager
def _labels(labels: Path | None, val_txt: Path | None, synset_words: Path | None, staging: Path,
            devkit: Path | None = None):
    """(val.txt, synset_words.txt) paths: given as files, taken from the caffe_ilsvrc12 archive ``labels``, or
    converted from the official devkit."""
    if sum(bool(x) for x in (labels, devkit, val_txt or synset_words)) > 1:
        raise UserError("give one ground truth: --devkit, --labels, or --val-txt with --synset-words")
    if devkit is not None:
        files = _member_files(devkit, ("meta.mat", "ILSVRC2012_validation_ground_truth.txt"), staging,
                              "ILSVRC2012 devkit")
        devkit_labels(files["meta.mat"], files["ILSVRC2012_validation_ground_truth.txt"], staging / "val.txt",
                      staging / "synset_words.txt")
        yield staging / "val.txt", staging / "synset_words.txt"
        return
    if labels is not None:
        files = _member_files(labels, ("val.txt", "synset_words.txt"), staging, "caffe_ilsvrc12 archive")
        yield files["val.txt"], files["synset_words.txt"]
        return
    if val_txt is None or synset_words is None:
        raise UserError("the ground truth is needed: --devkit ILSVRC2012_devkit_t12.tar.gz, --labels "
                        "caffe_ilsvrc12.tar.gz, or --val-txt val.txt --synset-words synset_words.txt")
    for path in (val_txt, synset_words):
        if not path.is_file():
            raise UserError(f"{path} does not exist")
    yield val_txt, synset_words


def import_validation_set(source: str | os.PathLike, data: str | os.PathLike, *, val_txt=None, synset_words=None,
                          labels=None, devkit=None, partial: bool = False, replace: bool = False,
                          log: Callable[[str], None] = print) -> Imported:
    """Check ``source`` and its ground truth, then make ``<data>/imagenet/{val/,val.txt,synset_words.txt,SHA256SUMS}``
    in one rename (see the module's text). A UserError names the first problem; nothing is left behind."""
    source, data = Path(source), Path(data)
    target = data / "imagenet"
    if target.exists() and not replace:
        raise UserError(f"{target} exists already: pass --replace to replace it")
    data.mkdir(parents=True, exist_ok=True)
    staging = data / f".imagenet.incoming-{uuid.uuid4().hex[:12]}"
    (staging / "val").mkdir(parents=True)
    try:
        with _labels(Path(labels) if labels else None, Path(val_txt) if val_txt else None,
                     Path(synset_words) if synset_words else None, staging,
                     Path(devkit) if devkit else None) as (truth_file, words_file):
            check_synset_words(words_file)
            truth = read_ground_truth(truth_file)
            with _images(source) as images:
                unlabelled = [name for name, _ in images if name not in truth]
                if unlabelled:
                    raise UserError(f"{unlabelled[0]} has no label in {truth_file}"
                                    + (f" (and {len(unlabelled) - 1} more)" if len(unlabelled) > 1 else ""))
                if len(images) != VALIDATION_IMAGES and not partial:
                    raise UserError(f"{source}: {len(images):,} images; the ILSVRC2012 validation set has "
                                    f"{VALIDATION_IMAGES:,} (pass --partial to import a subset)")
                log(f"importing {len(images):,} image(s) from {source}")
                sums = []
                for number, (name, opener) in enumerate(images, start=1):
                    out = staging / "val" / name
                    with opener() as handle, open(out, "wb") as copy:
                        head = handle.read(len(JPEG_MAGIC))
                        if head != JPEG_MAGIC:
                            raise UserError(f"{source}: {name} is not a JPEG file (starts with {head!r})")
                        copy.write(head)
                        shutil.copyfileobj(handle, copy, 1 << 20)
                    sums.append(f"{sha256_file(out)}  val/{name}")
                    if number % 5000 == 0:
                        log(f"  {number:,} / {len(images):,}")
            lines = [f"{name} {truth[name]}" for name in sorted(truth)]
            (staging / "val.txt").write_text("\n".join(lines) + "\n")
            if words_file != staging / "synset_words.txt":
                shutil.copyfile(words_file, staging / "synset_words.txt")
        shutil.rmtree(staging / ".labels", ignore_errors=True)
        for name in ("val.txt", "synset_words.txt"):
            sums.append(f"{sha256_file(staging / name)}  {name}")
        (staging / "SHA256SUMS").write_text("\n".join(sorted(sums, key=lambda s: s.split("  ")[1])) + "\n")
        old = None
        if target.exists():
            old = data / f".imagenet.old-{uuid.uuid4().hex[:12]}"
            os.rename(target, old)
        os.rename(staging, target)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    classes = len({truth[name] for name, _ in images})
    return Imported(target, len(images), classes, len(images) == VALIDATION_IMAGES)


def check_imported(data: str | os.PathLike) -> list[str]:
    """Files of ``<data>/imagenet`` whose sha256 differs from its ``SHA256SUMS`` (or that are missing)."""
    folder = Path(data) / "imagenet"
    sums = folder / "SHA256SUMS"
    if not sums.is_file():
        raise UserError(f"{sums} does not exist: nothing imported with `requestflow dataset import` there")
    bad = []
    for line in sums.read_text().splitlines():
        digest, _, relative = line.partition("  ")
        path = folder / relative
        if not path.is_file() or sha256_file(path) != digest:
            bad.append(relative)
    return bad
