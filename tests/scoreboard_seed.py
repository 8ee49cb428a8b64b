"""Scoreboard data for the plot and scoreboard-page tests: real runner documents (a TFLite performance run and an
accuracy run on shared images) turned into chosen points, loaded with ``load_documents`` like any result.

The points make a non-trivial frontier: per board, some points are dominated, one ties another on latency, a random-
weight point is faster and takes no part, and a few rows lack latency or accuracy.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from requestflow.board.catalogue import get_model
from requestflow.board.quality import assess
from requestflow.board.runner import RunConfig, run, statistics
from requestflow.results.boards import set_board
from requestflow.results.load import load_documents
from requestflow.results.query import read_only

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = {"hikey960": ("manual__2026-11-28T10:00:00+00:00", "mobilenets_sweep"),
          "firefly": ("scheduled__2026-11-27T02:00:00+00:00", "mobilenets_nightly")}
LIBRARIES = {"tf": ("tensorflow", "2.21.0"), "tflite": ("ai-edge-litert", "2.3.0"), "armcl": ("armcl", "24.11")}


def armcl_variant(conv_method: str) -> dict:
    return {"target": "CL", "layout": "NHWC", "conv_method": conv_method, "tuner": "NONE"}


# what each backend's runner records as its variant by default (the page shows their labels: graph, XNNPACK, ...)
DEFAULT_VARIANTS = {"tf": {"graph": "tf.function", "jit_compile": False},
                    "tflite": {"delegate": "default (XNNPACK)", "pieces": 1, "exported_from_canonical": False},
                    "armcl": armcl_variant("DEFAULT")}


@dataclass(frozen=True)
class Seed:
    board: str
    model: str
    backend: str
    precision: str
    median_s: float | None  # None: no performance result
    top1: float | None  # None: no accuracy result
    images: int = 500
    variant: dict = field(default_factory=dict, hash=False)
    random: bool = False
    version: str | None = None  # its library's version; None: LIBRARIES' (not part of the key)
    p90_s: float | None = None  # a tail: the p90 of its samples; None: samples_around's (1.24 x the median)

    def key(self) -> tuple:
        return (self.board, self.model, self.backend, json.dumps(self.backend_variant(), sort_keys=True)) + (
            (self.version,) if self.version else ())

    def library(self) -> tuple[str, str]:
        """(library, version) its documents record."""
        library, version = LIBRARIES[self.backend]
        return library, self.version or version

    def backend_variant(self) -> dict:
        """The variant its documents record: its own, else the one its backend's runner records by default."""
        return dict(self.variant) or DEFAULT_VARIANTS[self.backend]




SEEDS = (
    #     board       model                    backend   precision median   top-1
    Seed("hikey960", "mobilenet-v1-0.25-128", "tflite", "uint8", 0.0020, 0.40),  # frontier: fastest
    Seed("hikey960", "mobilenet-v1-0.25-128", "tf", "fp32", 0.0030, 0.40),  # as accurate, slower: beaten
    Seed("hikey960", "mobilenet-v1-0.25-224", "tf", "fp32", 0.0060, 0.45),  # beaten by 0.5-160 tflite
    Seed("hikey960", "mobilenet-v1-0.5-160", "tflite", "uint8", 0.0050, 0.58),  # frontier
    Seed("hikey960", "mobilenet-v1-0.5-160", "tf", "fp32", 0.0090, 0.59),  # frontier (more accurate)
    Seed("hikey960", "mobilenet-v1-0.75-192", "armcl", "fp32", 0.0110, 0.66, 50, armcl_variant("GEMM")),  # frontier
    Seed("hikey960", "mobilenet-v1-0.75-192", "armcl", "fp32", 0.0130, 0.66, 50, armcl_variant("DIRECT")),  # beaten
    Seed("hikey960", "mobilenet-v1-0.75-192", "tf", "fp32", 0.0200, 0.66),  # beaten
    Seed("hikey960", "mobilenet-v1-1.0-224", "tflite", "uint8", 0.0180, 0.70),  # frontier
    Seed("hikey960", "mobilenet-v1-1.0-224", "tf", "fp32", 0.0300, 0.71),  # frontier: most accurate
    Seed("hikey960", "mobilenet-v1-0.5-128", "tflite", "uint8", 0.0010, 0.30, random=True),  # random: no part
    Seed("hikey960", "mobilenet-v1-1.0-128", "tflite", "uint8", 0.0080, None),  # performance only
    Seed("hikey960", "mobilenet-v1-1.0-192", "tf", "fp32", None, 0.69),  # accuracy only
    Seed("firefly", "mobilenet-v1-0.25-128", "tflite", "uint8", 0.0040, 0.40),  # frontier of firefly
    Seed("firefly", "mobilenet-v1-0.5-160", "tf", "fp32", 0.0700, 0.59),  # beaten
    Seed("firefly", "mobilenet-v1-1.0-224", "tf", "fp32", 0.0600, 0.71),  # frontier of firefly
)
BOARDS = {"hikey960": {"price_usd": 239, "service_life_years": 3, "peak_power_w": 4.5},
          "firefly": {"price_usd": 199, "service_life_years": 3, "peak_power_w": 10.0}}


@functools.cache
def templates(models_dir: Path) -> tuple[dict, dict]:
    """A real performance and a real accuracy document (TFLite, mobilenet-v1-0.25-128 uint8, 8 shared images)."""
    quant = str(models_dir / "mobilenet_v1_0.25_128_quant.tflite")
    perf = run(RunConfig(model="mobilenet-v1-0.25-128", backend="tflite", weights=[quant], repetitions=5, warmup=1,
                         progress=False, command=["requestflow", "run"]))
    acc = run(RunConfig(model="mobilenet-v1-0.25-128", backend="tflite", mode="accuracy", weights=[quant], limit=8,
                        progress=False, command=["requestflow", "run"]))
    assert perf["status"] == acc["status"] == "ok"
    return perf, acc


def samples_around(median: float, n: int = 21, spread: float = 0.3) -> list[float]:
    """``n`` (odd) samples whose median is exactly ``median``, from 0.85 x to 1.3 x it, not in order."""
    half = n // 2
    low = [median * (1 - spread / 2 * (half - i) / half) for i in range(half)]
    high = [median * (1 + spread * (i + 1) / half) for i in range(half)]
    out = low + [median] + high
    return out[1::2] + out[0::2]


def samples_tailed(median: float, p90: float, n: int = 21) -> list[float]:
    """``n`` (odd) samples whose median is exactly ``median`` and whose p90 (numpy's, linear) is ``p90``: the three
    slowest are ``p90`` (which must be above 1.07 x the median), the rest within 15% of the median."""
    half = n // 2
    low = [median * (1 - 0.15 * (half - i) / half) for i in range(half)]
    high = [median * (1 + 0.01 * (i + 1)) for i in range(half - 3)] + [p90] * 3
    out = low + [median] + high
    return out[1::2] + out[0::2]


def command(seed: Seed, mode: str) -> list[str]:
    words = ["requestflow", "run", "--model", seed.model, "--backend", seed.backend, "--mode", mode,
             "--precision", seed.precision, "--out", "result.json", "--quiet", "--offline"]
    return words + (["--repetitions", "21", "--warmup", "5"] if mode == "performance" else
                    ["--limit", str(seed.images)])


def documents(seed: Seed, perf_template: dict, acc_template: dict) -> list[tuple[str, dict]]:
    """The runner documents of one seeded point."""
    model = get_model(seed.model)
    out = []
    for template, mode in ((perf_template, "performance"), (acc_template, "accuracy")):
        if (seed.median_s if mode == "performance" else seed.top1) is None:
            continue
        document = copy.deepcopy(template)
        context = document["context"]
        context["model"].update(id=model.id, width=model.width, resolution=model.resolution, macs=model.macs,
                                params=model.params)
        library, version = seed.library()
        context["backend"].update(name=seed.backend, library=library, version=version, variant=seed.backend_variant())
        context["precision"] = seed.precision
        weights_sha = hashlib.sha256(f"{seed.model} {seed.precision} {seed.random}".encode()).hexdigest()
        context["weights"].update(sha256=weights_sha, random=seed.random)
        document["command"] = command(seed, mode)
        if mode == "performance":
            samples = samples_around(seed.median_s) if seed.p90_s is None else samples_tailed(seed.median_s, seed.p90_s)
            document["performance"].update(statistics(samples, context["batch_size"]), repetitions=len(samples),
                                           warmup=5, quality=assess(samples))  # the verdict on these samples
            context.update(repetitions=len(samples), warmup=5)
        else:
            document["accuracy"].update(n=seed.images, top1=seed.top1, top5=min(1.0, seed.top1 + 0.2))
            context["dataset"].update(image_count=seed.images,
                                      file_list_sha256=hashlib.sha256(f"images {seed.images}".encode()).hexdigest())
        out.append((f"{seed.board} {seed.model} {seed.backend} {seed.variant} {mode}", document))
    return out


def seed_store(engine, models_dir: Path, seeds=SEEDS) -> dict[tuple, str]:
    """Load the seeded points (and the boards' price and power); their point ids by :meth:`Seed.key`."""
    perf, acc = templates(models_dir)
    for board, (sweep, dag_id) in SWEEPS.items():
        batch = [pair for seed in seeds if seed.board == board for pair in documents(seed, perf, acc)]
        load_documents(engine, batch, board=board, sweep=sweep, dag_id=dag_id)
        set_board(engine, board, **BOARDS[board])
    _, rows = read_only(engine, "SELECT board, model, backend, variant, library_version, point_id FROM scoreboard")
    ids = {(b, m, be, json.dumps(json.loads(v), sort_keys=True), lv): p for b, m, be, v, lv, p in rows}
    assert len(ids) == len(seeds), (len(ids), len(seeds))
    return {seed.key(): ids[seed.key()[:4] + (seed.library()[1],)] for seed in seeds}


def frontier_by_hand(seeds, ids: dict[tuple, str]) -> set[str]:
    """Per board and image set, the seeded points no other point of that board and image set beats (median latency
    lower, top-1 higher: at least as good on both, better on one); random weights and points without both figures
    take no part."""
    candidates = [s for s in seeds if not s.random and s.median_s is not None and s.top1 is not None]

    def beats(b: Seed, a: Seed) -> bool:
        return (b.board == a.board and b.images == a.images and b.median_s <= a.median_s and b.top1 >= a.top1
                and (b.median_s < a.median_s or b.top1 > a.top1))

    return {ids[a.key()] for a in candidates if not any(beats(b, a) for b in candidates)}
