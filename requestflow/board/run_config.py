"""What a runner is asked to do: ``RunConfig`` (one point's settings, checked by ``validate`` before anything
runs), and where it runs: ``parse_cpus`` / ``pin_process`` (the CPU affinity), ``default_images`` (the shared
data's ImageNet images). ``requestflow.board.runner`` runs it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from requestflow.board import catalogue
from requestflow.board.files import shared_data_dir
from requestflow.errors import UserError


@dataclass
class RunConfig:
    model: str
    backend: str
    mode: str = "performance"
    weights: list[str] | None = None
    precision: str | None = None
    release: str | None = None
    images: str | None = None
    val_txt: str | None = None
    synset_words: str | None = None
    limit: int | None = None
    repetitions: int = 20
    warmup: int = 3
    batch_size: int = 1
    threads: int | None = None
    cpus: list[int] | None = None
    variant: dict | str | None = None  # the backend's variant (armcl: target, layout, conv_method...; tf: compiler)
    armcl_build: str | None = None  # the ArmCL build folder (armcl; default: armcl_program.find_build())
    allow_download: bool = True
    progress: bool = True
    command: list[str] = field(default_factory=list)
    min_duration_s: float = 0.0  # timed runs go on until the timed region lasted this long (and repetitions ran)
    profile: str | None = None  # quick or valid (latency_stats.PROFILES): recorded, with the settings it got
    power_meter: str | None = None  # hwmon[:ROOT], rapl[:ROOT], command:CMD, auto, none (requestflow.board.power)
    power_rate_hz: float = 200.0
    idle_s: float = 1.0  # the idle baseline before the warm-up, with a power meter

    def validate(self) -> None:
        catalogue.get_model(self.model)
        _choice("backend", self.backend, catalogue.BACKENDS)
        _choice("mode", self.mode, catalogue.MODES)
        from requestflow.board.backends import parse_variant
        self.variant = parse_variant(self.backend, self.variant)  # armcl's and tf's; refused for the others
        if self.armcl_build and self.backend != "armcl":
            raise UserError(f"--armcl-build is for the armcl backend, not {self.backend}")
        if self.precision is not None:
            _choice("precision", self.precision, catalogue.PRECISIONS)
            if self.backend in catalogue.FLOAT_BACKENDS and self.precision != "fp32":
                raise UserError(f"the {self.backend} backend runs fp32; to run dequantized {self.precision} weights, "
                                "give their .tflite with --weights (or --release 2018_08_02_quant) without "
                                "--precision")
        for name, minimum in (("repetitions", 1), ("warmup", 0), ("batch_size", 1), ("limit", 1), ("threads", 1)):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < minimum):
                raise UserError(f"--{name.replace('_', '-')} must be an integer >= {minimum}, got {value}")
        _check_measurement_settings(self)
        if self.cpus is not None:
            allowed = os.sched_getaffinity(0)
            unknown = sorted(set(self.cpus) - allowed)
            if not self.cpus or unknown:
                raise UserError(f"--cpus {','.join(map(str, self.cpus))}: CPU {unknown[0] if unknown else '?'} is "
                                f"not available here (available: {','.join(map(str, sorted(allowed)))})")


def _check_measurement_settings(config: RunConfig) -> None:
    from requestflow.board.latency_stats import PROFILES

    for name, value, minimum in (("min_duration_s", config.min_duration_s, 0.0),
                                 ("power_rate_hz", config.power_rate_hz, 1e-3), ("idle_s", config.idle_s, 0.0)):
        if (isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
                or value < minimum):
            raise UserError(f"--{name.replace('_', '-')} must be a number >= {minimum:g}, got {value}")
    if config.profile is not None and config.profile not in PROFILES:
        raise UserError(f"unknown profile {config.profile!r}; known: {', '.join(PROFILES)}")
    if config.power_meter not in (None, "none") and config.mode != "performance":
        raise UserError("--power-meter measures performance runs; accuracy runs are not timed")


def _choice(name: str, value: str, allowed) -> None:
    if value not in allowed:
        raise UserError(f"unknown {name} {value!r}; known: {', '.join(allowed)}")


MAX_CPUS = 8192  # Linux's largest CONFIG_NR_CPUS on the boards' architectures


def parse_cpus(text: str) -> list[int]:
    """``0-3,6`` -> [0, 1, 2, 3, 6]."""
    out: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part:
                low, high = part.split("-")
                if int(high) >= MAX_CPUS:  # before the range is made: 0-99999999999 would fill the memory
                    raise UserError(f"--cpus {text!r}: CPU {int(high)} is not available here (no board has more than "
                                    f"{MAX_CPUS} CPUs)")
                out.extend(range(int(low), int(high) + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise UserError(f"--cpus {text!r}: expected a list like 0-3,6") from None
    return sorted(set(out))


def pin_process(cpus: list[int]) -> None:
    """Pin every thread of this process to ``cpus`` (``sched_setaffinity(0)`` alone pins only the calling thread;
    threads started later inherit the mask)."""
    for task in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(task), cpus)
        except (ProcessLookupError, PermissionError):  # a thread that ended meanwhile
            pass
    os.sched_setaffinity(0, cpus)


def default_images() -> tuple[str | None, str | None]:
    data = shared_data_dir()
    if data and (data / "imagenet/val").is_dir():
        return str(data / "imagenet/val"), str(data / "imagenet/val.txt")
    return None, None
