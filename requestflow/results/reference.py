"""The published ReQuEST-ASPLOS'18 results as a read-only reference board, beside our own boards.

``shared/data/request-asplos18/hikey960-mobilenets.csv`` holds the original workflow's 144 HiKey960 points (its
README explains the columns; ``requestflow.results.reference_csv`` reads and checks it). Each row becomes two result
documents -- one performance, one accuracy -- that validate against ``result.schema.json`` and go through the one
loader (:func:`requestflow.results.load.load_documents`), into a board of kind ``reference`` that is ``read_only``:
normal loads, ``requestflow board`` edits and provisioning refuse it, and a second import of the same file changes
nothing.

The documents say what they are instead of pretending to be runs of ours:

- ``context.reference``: the source file, its sha256, the CSV line and the row as published, and what the
  published results do not give (see ``NOT_PUBLISHED``);
- ``performance``: one sample, the published **minimum** over the repetitions (50, without warm-up, one image per
  process), so its min = median = p90 = mean here; ``performance.published`` keeps the published min, mean and CK's
  density-estimated centre; ``repetitions`` / ``warmup`` are the original's (50 / 0);
- ``accuracy``: ``n`` = the images the published figure is over (500; 50,000 for the TensorFlow rows, whose
  metadata says 500), no per-image predictions (none were published);
- weights, dataset and machine are described, not hashed from files we do not have: ``weights.sha256`` and
  ``dataset.file_list_sha256`` are hashes of that description (``*_sha256_of`` says so).

The board's ``info`` carries the source, its sha256, the paper and the ``caveats`` (what a reader must know before
comparing these points with ours); the CLI and the scoreboard page show them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.engine import Engine

from requestflow.errors import UserError
from requestflow.results.reference_csv import Row, default_csv, read_csv

DEFAULT_BOARD = "hikey960-request-asplos18"
# The published results carry no run dates: the paper's month (ReQuEST at ASPLOS'18, March 2018), first day.
PUBLISHED_AT = "2018-03-01T00:00:00+00:00"
# The standard ILSVRC2012 val.txt (imagenet-2012-aux), the seed workflow's CK_IMAGENET_VAL_TXT; the shared data's
# imagenet/val.txt is the same file (tests/results/test_reference.py checks).
VAL_TXT_SHA256 = "4138c0cd92d2dffea9353a9339c9f352361b7c6c267d2ff989b366f154188257"
WEIGHTS_RELEASE = "2017_06_14"  # the paper: "Google released this set of weights on 14 June 2017"
HIKEY960_CPUS = list(range(8))

PAPER = {
    "title": "Multi-objective autotuning of MobileNets across the full software/hardware stack",
    "authors": ["Anton Lokhmotov", "Nikolay Chunosov", "Flavio Vella", "Grigori Fursin"],
    "venue": "ReQuEST at ASPLOS'18 (1st ACM SIGARCH Reproducible Quality-Efficient Systems Tournament to "
             "Co-design Pareto-efficient Deep Learning), Williamsburg, VA, USA",
    "date": "2018-03",
    "doi": "10.1145/3229762.3229767",
}
CITATION = ("A. Lokhmotov, N. Chunosov, F. Vella, G. Fursin. Multi-objective autotuning of MobileNets across the full "
            "software/hardware stack. ReQuEST at ASPLOS'18, Williamsburg, VA, USA, March 2018. "
            "doi:10.1145/3229762.3229767")
TRANSCRIBED_FROM = ("ctuning/ck-request-asplos18-results-mobilenets-armcl-opencl: "
                    "experiment/mobilenets-performance-*/ckp-*.flat.json")
NOT_PUBLISHED = ("per-image predictions", "individual latency samples and their median", "run dates",
                 "threads and CPU affinity", "clock settings", "timings of loading and setup (0 in the documents)",
                 "the weight and image files' hashes", "OS and Python versions")


@dataclass
class ImportReport:
    board: str
    source: Path
    sha256: str
    rows: int
    loaded: int = 0  # results
    unchanged: int = 0
    caveats: list[str] = field(default_factory=list)

    def describe(self) -> str:
        head = (f"{self.board}: {self.rows} published points from {self.source} (sha256 {self.sha256[:16]}) "
                + (f"imported as {self.loaded} results into a read-only reference board" if self.loaded else
                   "already imported: nothing changed"))
        return head + "\ncaveats:\n" + "\n".join(f"  - {c}" for c in self.caveats)


def caveats(rows: list[Row]) -> list[str]:
    """What a reader must know before comparing these points with ours (stored in the board's info)."""
    repetitions = sorted({r.repetitions for r in rows})
    runs = " or ".join(map(str, repetitions))
    images = sorted({r.accuracy_images for r in rows if r.library.accuracy_images is None})
    return [
        f"Latency is the published MINIMUM over {runs} runs without warm-up (one image per process): each point "
        "stores it as its only sample, so its median, p90 and mean here equal that minimum. Compare it with our "
        "boards' latency_min_s, not their median; the published mean and CK's centre are in each performance "
        "result's 'published' field.",
        f"Accuracy of the ArmCL rows is over the first {' or '.join(map(str, images)) or 'N'} ILSVRC2012 "
        "validation images, a different set from the shared 500 images our accuracy runs use: compare accuracies "
        "with care.",
        "The TensorFlow 1.7 rows carry the accuracy over all 50,000 validation images, although the original "
        "metadata labels them 500: they are stored as 50,000 images.",
        "ArmCL 17.12 is broken at resolutions other than 128 (its accuracy collapses): the published accuracy "
        "shows it.",
        "ArmCL ran on the Mali-G71 MP8 GPU through OpenCL, TensorFlow 1.7 on the CPU, with TF-slim's fp32 "
        f"MobileNets weights of {WEIGHTS_RELEASE.replace('_', '-')}. Not published, and only described in the "
        "documents: " + ", ".join(NOT_PUBLISHED) + ".",
        "No per-image predictions were published: these points cannot be compared image by image "
        "(requestflow diff).",
        f"Price (USD {rows[0].raw['price_usd']} on {rows[0].price_date}) and peak power "
        f"({rows[0].raw['peak_power_w']} W) are the values the original hard-coded for the HiKey960; energy is an "
        "upper bound from peak power.",
    ]


def board_row(path: Path, sha256: str, rows: list[Row]) -> dict:
    """The reference board as the loader creates it (``load_documents(reference=...)``)."""
    import requestflow

    first = rows[0]
    return {
        "kind": "reference", "read_only": True, "price_usd": first.price_usd,
        "price_date": dt.date.fromisoformat(first.price_date), "peak_power_w": first.peak_power_w,
        "info": {
            "title": "ReQuEST-ASPLOS'18 MobileNets on Linaro HiKey960: the published results",
            "source": str(path), "source_name": path.name, "sha256": sha256, "rows": len(rows),
            "transcribed_from": TRANSCRIBED_FROM, "paper": PAPER, "citation": CITATION,
            "caveats": caveats(rows), "not_published": list(NOT_PUBLISHED),
            "imported_by": f"requestflow {requestflow.__version__}",
        },
    }


def documents(path: Path, sha256: str, rows: list[Row]) -> list[tuple[str, dict]]:
    """(source name, result document) pairs: a performance and an accuracy document per row."""
    out = []
    for row in rows:
        for mode in ("performance", "accuracy"):
            out.append((f"{path.name}:{row.line} ({mode})", _document(path, sha256, row, mode)))
    return out


def _document(path: Path, sha256: str, row: Row, mode: str) -> dict:
    import requestflow
    from requestflow.board import resolve
    from requestflow.board.catalogue import get_model
    from requestflow.results.identity import sha256_of

    model = get_model(row.model_id)
    lib = row.library
    weights_description = {"published": "TF-slim MobileNets-v1 float checkpoint, the paper's weights",
                           "model": model.id, "release": WEIGHTS_RELEASE}
    accuracy_images = lib.accuracy_images or row.accuracy_images
    images = accuracy_images if mode == "accuracy" else row.accuracy_images
    backend = {"name": lib.backend, "library": lib.library, "version": lib.version,
               "build": {"published_as": row.raw["library"], "commit": lib.commit, "note": lib.note},
               "variant": {"target": "CL", "conv_method": row.conv_method} if lib.backend == "armcl" else {}}
    context = {
        "model": {"id": model.id, "width": model.width, "resolution": model.resolution, "classes": 1001,
                  "macs": model.macs, "params": model.params},
        "backend": backend,
        "precision": "fp32",
        "weights": {"sha256": sha256_of(weights_description), "random": False, "format": "checkpoint",
                    "source_precision": "fp32", "release": WEIGHTS_RELEASE,
                    "url": resolve.release_url(WEIGHTS_RELEASE, model),
                    "sha256_of": f"this description, not a file (the published results hash no file): "
                                 f"{weights_description}"},
        "dataset": _dataset(images),
        "mode": mode,
        "batch_size": 1,
        "threads": len(HIKEY960_CPUS),
        "cpu_affinity": HIKEY960_CPUS,
        "preprocessing": {"published": "the original CK workflow's own preprocessing; its parameters are not in "
                                       "the published results"},
        "repetitions": row.repetitions if mode == "performance" else None,
        "warmup": 0 if mode == "performance" else None,
        "reference": {
            "what": "a published result of the original ReQuEST-ASPLOS'18 workflow, not a run of requestflow",
            "source": path.name, "sha256": sha256, "line": row.line, "row": row.raw,
            "citation": CITATION, "not_published": list(NOT_PUBLISHED),
            "threads_and_affinity": "not published: the HiKey960's 8 CPUs, no pinning",
            "started_at": "not published: the paper's month (March 2018), first day",
        },
    }
    document = {
        "schema_version": 1,
        "requestflow_version": requestflow.__version__,
        "status": "ok",
        "started_at": PUBLISHED_AT,
        "finished_at": PUBLISHED_AT,
        "context": context,
        "machine": {
            "board_model": "Linaro HiKey960", "cpu_count": len(HIKEY960_CPUS), "arch": "aarch64",
            "cpu_model": "HiSilicon Kirin 960: 4x Arm Cortex-A73 <= 2362 MHz + 4x Arm Cortex-A53 <= 1844 MHz",
            "memory_bytes": 3 * 2**30, "os": None, "python": "not published",
            "opencl": {"device": "Arm Mali-G71 MP8 <= 1037 MHz", "specification": "2.0", "driver": "6.0"},
            "published_as": row.raw["platform"], "source": "the paper's Table 1",
        },
        "timings": {"weights_load_s": 0.0, "total_s": 0.0},  # not published (context.reference.not_published)
    }
    if mode == "performance":
        s = row.latency_min_s
        document["performance"] = {
            "unit": "s", "samples": [s], "n": 1, "min": s, "median": s, "mean": s, "p90": s, "p99": s, "max": s,
            "stdev": 0.0, "throughput_ips": 1 / s, "repetitions": row.repetitions, "warmup": 0, "batch_size": 1,
            "timed_region": "the original workflow's prediction time of one image, one image per process",
            "input": "dataset",
            "published": {"statistic": "min", "min_s": s, "mean_s": row.latency_mean_s,
                          "center_s": row.latency_center_s, "repetitions": row.repetitions, "warmup": 0,
                          "note": "only the min, mean and CK's density-estimated centre over the repetitions were "
                                  "published; the one sample here is the min"},
        }
    else:
        document["accuracy"] = {"n": accuracy_images, "top1": row.top1, "top5": row.top5, "selected": accuracy_images,
                                "failed_count": 0, "failed_images": [],
                                "published_images": row.accuracy_images}
        document["predictions"] = []  # none were published
    return document


def _dataset(images: int) -> dict:
    from requestflow.results.identity import sha256_of

    first, last = "ILSVRC2012_val_00000001.JPEG", f"ILSVRC2012_val_{images:08d}.JPEG"
    description = {"published": "ILSVRC2012 validation images, the first ones in file-name order", "first": first,
                   "last": last, "image_count": images, "val_txt_sha256": VAL_TXT_SHA256}
    return {"path": f"ILSVRC2012 validation set, {first}..{last} (published results; not the shared val/ images)",
            "image_count": images, "file_list_sha256": sha256_of(description), "val_txt_sha256": VAL_TXT_SHA256,
            "first": first, "last": last,
            "file_list_sha256_of": f"this description, not the files' sizes (not published): {description}"}


def import_reference(engine: Engine, csv_path: str | Path | None = None, board: str = DEFAULT_BOARD) -> ImportReport:
    """Import the published CSV as the read-only reference board ``board``: everything or nothing, once."""
    from requestflow.results import models as m
    from requestflow.results.load import load_documents

    if not board or not board.strip():
        raise UserError("a board name is needed for the reference board")
    path = Path(csv_path) if csv_path else default_csv()
    rows, sha256 = read_csv(path)
    row = board_row(path, sha256, rows)
    report = ImportReport(board=board, source=path, sha256=sha256, rows=len(rows), caveats=row["info"]["caveats"])
    with engine.connect() as connection:
        existing = connection.execute(select(m.Board.read_only, m.Board.info).where(m.Board.name == board)).first()
    if existing is not None and existing.read_only and (existing.info or {}).get("sha256") == sha256:
        # already this source's board (created in the same transaction as its results): nothing to do, even if
        # this requestflow would write the documents differently
        report.unchanged = 2 * len(rows)
        report.caveats = list((existing.info or {}).get("caveats") or report.caveats)
        return report
    loaded = load_documents(engine, documents(path, sha256, rows), board, reference=row)
    report.loaded, report.unchanged = len(loaded.loaded), len(loaded.unchanged)
    return report


def reference_boards(engine: Engine, names=None) -> dict[str, dict]:
    """The reference boards (all, or those among ``names``): name -> their ``info`` (source, paper, caveats)."""
    from requestflow.results.query import read_only

    _, rows = read_only(engine, "SELECT name, info FROM boards WHERE kind = 'reference' "
                                "AND (%(all)s OR name = ANY(%(names)s)) ORDER BY name",
                        {"all": names is None, "names": sorted(set(names or ()))})
    return {name: info or {} for name, info in rows}


def notes(engine: Engine, names=None) -> str:
    """Text for the CLI: each reference board among ``names``, its source and its caveats ('' when none)."""
    parts = []
    for name, info in reference_boards(engine, names).items():
        parts.append(f"{name} is a read-only reference board: {info.get('title', 'published results')} "
                     f"({info.get('source_name', '?')}, sha256 {str(info.get('sha256', ''))[:16]}; "
                     f"{info.get('citation', '')})\ncaveats:\n"
                     + "\n".join(f"  - {c}" for c in info.get("caveats") or ["none recorded"]))
    return "\n".join(parts)
