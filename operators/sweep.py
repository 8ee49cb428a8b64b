"""The sweep's trigger form and its plan of points, in plain Python (no Airflow import: unit-tested without a DagBag).

``form`` is the trigger form as JSON Schema, one field per Param (``dags/factory.py`` turns each into an Airflow
``Param``); ``plan`` turns validated params into one board's points; ``refusal`` says what the plan refuses in the
params (what the form cannot express: armcl points without a build; weights = random with accuracy points, a
precision other than fp32 or a release). The DAG wiring is ``dags/factory.py``, the task bodies
``operators/sweep_tasks.py``.
"""

from __future__ import annotations

import math
from itertools import product

from operators import runtime_spec
from operators.config import inventory
from requestflow.board.catalogue import (
    ARMCL_VARIANT,
    BACKENDS,
    CONFIGS,
    MODES,
    PRECISIONS,
    TF_COMPILERS,
    point_label,
)
from requestflow.board.latency_stats import PROFILES
from requestflow.board.run_record import ISOLATIONS

MODEL_IDS = [c.id for c in CONFIGS]
# the sweep's weights: the registry's real weights (each point needs them in the controller's data folder), or
# randomly initialised weights for every point (``requestflow run --weights random``: performance only)
WEIGHTS = ("registry", "random")
RELEASES = ("2018_02_22", "keras", "2017_06_14", "2018_08_02_quant")
INTEGERS = ("repetitions", "warmup", "batch_size", "threads", "image_limit")
# the runtime axis (issue #17): form field -> (the backend whose points it multiplies, title, an example)
RUNTIME_FIELDS = {"litert_specs": ("tflite", "LiteRT runtimes", "ai-edge-litert==1.4.0"),
                  "tf_specs": ("tf", "TensorFlow runtimes", "tensorflow-cpu==2.20.0")}
SPEC_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*==[0-9]+(\.[0-9]+){1,3}(\.post[0-9]+)?$"


def defaults(overrides: dict | None, builds: list[str], boards: list[str]) -> dict:
    """The form's default values, with ``overrides`` (the nightly config's params); boards the inventory lacks are
    dropped (a schedule needs valid defaults)."""
    d = {"boards": ["local"], "models": MODEL_IDS, "backends": ["tflite"], "modes": ["performance", "accuracy"],
         "precision": None, "release": None, "weights": "registry", "repetitions": 20, "warmup": 3, "profile": "quick",
         "batch_size": 1, "threads": None, "cpus": None, "cluster": "all", "image_limit": 500, "cooldown_c": None,
         "resume": False, "dry_run": False, "armcl_build": builds[:1] or None,
         **{f"armcl_{key}s": [choices[0]] for key, choices in ARMCL_VARIANT.items()},
         "tf_compilers": [TF_COMPILERS[0]], **{field: [] for field in RUNTIME_FIELDS}, "isolation": None}
    d.update(overrides or {})
    d["boards"] = [b for b in d["boards"] if b in boards] or boards[:1]
    return d


def form(overrides: dict | None, builds: list[str], boards: list[str] | None = None) -> dict[str, dict]:
    """The trigger form: name -> ``{"default": value, "description": text, **JSON Schema}`` for every field, which
    Airflow validates before anything runs. ``builds`` are the ArmCL build names (``config/armcl.json``), ``boards``
    the inventory (default: ``operators.config.inventory()``)."""
    boards = inventory() if boards is None else boards
    d = defaults(overrides, builds, boards)

    def choices(name: str, values, **more) -> dict:  # a non-empty list of distinct values, each one of ``values``
        return {"default": d[name], "type": "array", "items": {"type": "string", "enum": list(values)},
                "minItems": 1, "uniqueItems": True, **more}

    return {
        "boards": choices("boards", boards, title="Boards", description=f"from the inventory: {', '.join(boards)}"),
        "models": choices("models", MODEL_IDS, title="Models", description="MobileNets-v1 configs (default: all 16)"),
        "backends": choices("backends", BACKENDS, title="Backends"),
        "modes": choices("modes", MODES, title="Modes"),
        "precision": {"default": d["precision"], "type": ["null", "string"], "enum": [None, *PRECISIONS],
                      "title": "Precision", "description": "which registry weights (empty: what each backend finds "
                      "first)"},
        "release": {"default": d["release"], "type": ["null", "string"], "title": "Weights release",
                    "enum": [None, *RELEASES]},
        "weights": {"default": d["weights"], "type": "string", "enum": list(WEIGHTS), "title": "Weights",
                    "description": "registry: real weights (every point needs them in the data folder); random: "
                    "He-initialised fp32 weights for every point, performance only (latency does not depend on "
                    "weight values; labelled random_weights on the scoreboard)"},
        "repetitions": {"default": d["repetitions"], "type": "integer", "minimum": 1, "maximum": 100000,
                        "title": "Repetitions"},
        "warmup": {"default": d["warmup"], "type": "integer", "minimum": 0, "maximum": 10000, "title": "Warm-up runs"},
        "profile": {"default": d["profile"], "type": "string", "enum": list(PROFILES), "title": "Profile",
                    "description": "performance points: quick runs the repetitions and warm-up above as given; valid "
                    "(MLPerf SingleStream) at least 64 timed runs, 3 warm-up and 60 s of timed region, raising the "
                    "values above to those minima; recorded in each result (performance.profile)"},
        "batch_size": {"default": d["batch_size"], "type": "integer", "minimum": 1, "maximum": 256,
                       "title": "Batch size"},
        "threads": {"default": d["threads"], "type": ["null", "integer"], "minimum": 1, "maximum": 256,
                    "title": "Threads"},
        "cpus": {"default": d["cpus"], "type": ["null", "string"], "pattern": r"^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$",
                 "title": "CPU affinity", "description": "e.g. 4-7 (the big cluster of a HiKey960)"},
        "cluster": {"default": d["cluster"], "type": "string", "enum": ["all", "big", "LITTLE"], "title": "CPU cluster",
                    "description": "big.LITTLE boards: run on one cluster (instead of CPU affinity)"},
        "image_limit": {"default": d["image_limit"], "type": "integer", "minimum": 1, "maximum": 50000,
                        "title": "Images (accuracy)"},
        "cooldown_c": {"default": d["cooldown_c"], "type": ["null", "number"], "minimum": 20, "maximum": 110,
                       "title": "Cool-down below (C)",
                       "description": "before each point, wait until the board is below this temperature"},
        "resume": {"default": d["resume"], "type": "boolean", "title": "Resume",
                   "description": "skip points already stored with the same identity"},
        "dry_run": {"default": d["dry_run"], "type": "boolean", "title": "Dry run",
                    "description": "list the points only"},
        # a list since issue #17 (one point per build); one name, as the field was before, is still accepted
        "armcl_build": {"default": d["armcl_build"], "type": ["array", "string", "null"], "uniqueItems": True,
                        "items": {"type": "string", "enum": builds},
                        "if": {"type": "string"}, "then": {"enum": builds},
                        "title": "ArmCL builds", "description": "armcl points: one per build of config/armcl.json "
                        "(e.g. ArmCL 20.08 and 24.11), each made (or reused) on each board before its points"},
        **{f"armcl_{key}s": choices(f"armcl_{key}s", values, title=f"ArmCL {key.replace('_', ' ')}s",
                                    description=f"armcl points: one per combination ({', '.join(values)})")
           for key, values in ARMCL_VARIANT.items()},
        "tf_compilers": choices("tf_compilers", TF_COMPILERS, title="TensorFlow compilers",
                                description="tf points: one per compiler (graph: tf.function; xla: jit_compile)"),
        **{field: {"default": d[field], "type": "array", "uniqueItems": True, "title": title,
                   "items": {"type": "string", "pattern": SPEC_PATTERN}, "description": f"{backend} points: one per "
                   f"runtime spec, each a runner venv of its own on the board (e.g. {example}); empty: the "
                   "board's runner"}
           for field, (backend, title, example) in RUNTIME_FIELDS.items()},
        "isolation": {"default": d["isolation"], "type": ["null", "string"], "enum": [None, *ISOLATIONS],
                      "title": "Isolation", "description": "how each point's runner process starts (ADR 0009): "
                      "fresh (a process started for it) or fork (a child of the board's point server, which only "
                      "imported: no interpreter start, no imports per point); empty: each board's own (its "
                      "Connection's extra isolation, else $REQUESTFLOW_ISOLATION, else fresh). Recorded in each "
                      "result; not part of the point's identity"},
    }
def plan(board: str, p: dict) -> list[dict]:
    """The points of ``board`` for the sweep's params (none when the board was not chosen)."""
    if board not in p["boards"]:
        return []
    keys = list(ARMCL_VARIANT)
    armcl_variants = [dict(zip(keys, values, strict=True)) for values in
                      product(*(p.get(f"armcl_{key}s") or [ARMCL_VARIANT[key][0]] for key in keys))]
    # tf's default compiler is no variant at all: the point of every tf result stored before compilers existed
    tf_variants = [None if c == TF_COMPILERS[0] else {"compiler": c} for c in p.get("tf_compilers") or TF_COMPILERS[:1]]
    runtimes = runtime_axis(p)
    armcl_builds = armcl_build_names(p.get("armcl_build"))
    if "armcl" in p["backends"] and not armcl_builds:
        raise ValueError("armcl points need an ArmCL build: choose one (config/armcl.json)")
    if p.get("isolation") not in (None, *ISOLATIONS):  # a conf from the REST API or the CLI, not the form
        raise ValueError(f"isolation must be {' or '.join(ISOLATIONS)} (or empty: the board's), not "
                         f"{p['isolation']!r}")
    if p.get("cooldown_c") is not None and not math.isfinite(p["cooldown_c"]):  # NaN passes minimum and maximum
        raise ValueError(f"cooldown_c must be a finite temperature, not {p['cooldown_c']}")
    random = p.get("weights", "registry") == "random"
    if random and p.get("precision") not in (None, "fp32"):
        raise ValueError(f"weights = random runs fp32 weights, not precision {p['precision']}: leave precision "
                         "empty (or choose fp32), or choose weights = registry")
    if random and p.get("release"):
        raise ValueError(f"weights = random uses no release ({p['release']} names registry weights): leave the "
                         "release empty, or choose weights = registry")
    # JSON Schema's "integer" admits 3.0 (a trigger's conf from the REST API or the CLI): the runner wants 3
    p = {**p, **{key: int(p[key]) for key in INTEGERS if isinstance(p.get(key), float)}}
    points = []
    for model, backend, mode in product(p["models"], p["backends"], p["modes"]):
        for variant, runtime, build in product({"armcl": armcl_variants, "tf": tf_variants}.get(backend, [None]),
                                               runtimes.get(backend) or [None],
                                               armcl_builds if backend == "armcl" else [None]):
            point = {"model": model, "backend": backend, "mode": mode, "precision": p.get("precision"),
                     "release": p.get("release"), "batch_size": p["batch_size"], "threads": p.get("threads"),
                     "cpus": p.get("cpus"), "cluster": None if p.get("cluster") in (None, "all") else p["cluster"],
                     "variant": variant, "armcl_build": build,
                     "weights": "random" if random else None, "runtime": runtime, "isolation": p.get("isolation")}
            if mode == "performance":
                point.update({"repetitions": p["repetitions"], "warmup": p["warmup"], **profiled(p)})
            else:
                point["limit"] = p["image_limit"]
            points.append({k: v for k, v in point.items() if v is not None})
    if random:
        _refuse_accuracy_on_random_weights(points)
    return points


def armcl_build_names(value) -> list[str]:
    """The sweep's ArmCL builds: the field's list, or one name (its form before issue #17), or none."""
    return [value] if isinstance(value, str) else list(value or [])


def runtime_axis(p: dict) -> dict[str, list[str]]:
    """backend -> the runtime specs its points run on (``operators.runtime_spec``: checked, canonical), from the
    form's ``litert_specs`` and ``tf_specs``; refused for a backend the sweep does not run."""
    axis = {}
    for field, (backend, _title, _example) in RUNTIME_FIELDS.items():
        specs = runtime_spec.parse_all(p.get(field), backend)
        if specs and backend not in p["backends"]:
            raise ValueError(f"{field} chooses the runtimes of {backend} points: add {backend} to the backends")
        axis[backend] = [spec.text for spec in specs]
    return axis


def profiled(p: dict) -> dict:
    """A performance point's ``profile`` and, for valid, its repetitions and warm-up raised to the profile's minima
    (the runner would record a profile whose minima it was not given as custom); none without a profile."""
    name = p.get("profile")
    if name is None:
        return {}
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}")
    if name == "quick":  # today's defaults: the form's values as given (the runner records custom below them)
        return {"profile": name}
    minima = PROFILES[name]
    return {"profile": name, "repetitions": max(p["repetitions"], minima["min_repetitions"]),
            "warmup": max(p["warmup"], minima["warmup"])}


def _refuse_accuracy_on_random_weights(points: list[dict]) -> None:
    """weights = random with accuracy points: refused before any board is touched, naming them. Random weights have
    no accuracy (the runner refuses them), and dropping the points silently would leave the sweep with fewer points
    than the form asked for (the default modes include accuracy): the user chooses, explicitly."""
    labels = [point_label(p) for p in points if p["mode"] == "accuracy"]
    if labels:
        shown = ", ".join(labels[:5]) + (f" and {len(labels) - 5} more" if len(labels) > 5 else "")
        raise ValueError(f"weights = random measures performance only, and accuracy needs real weights: "
                         f"{len(labels)} accuracy point(s) cannot run ({shown}): choose modes = performance only, "
                         "or weights = registry")


def refusal(p: dict) -> str | None:
    """What the plan tasks refused in the sweep's params (``plan`` is a function of the params alone, so summary
    asks it again), or None."""
    for board in p["boards"]:
        try:
            plan(board, p)
        except ValueError as exc:
            return f"the sweep's params are refused: {exc}"
    return None

