"""The ``armcl`` backend: requestflow's native MobileNets-v1 program (``native/mobilenet``) on the Arm Compute
Library's graph API, one process per point, driven over a pipe (the protocol is in ``mobilenet.cpp``).

``load()`` writes the canonical weights folder (cached by the weights' sha256), compiles or reuses the program for
the ArmCL build (``armcl_program``), decides the OpenCL shim from the OpenCL device (``clshim.needs_shim``: PoCL
needs it, ADR 0006), starts the program and waits for ``READY`` (graph finalized, kernels compiled, tuning done:
all of it setup). ``invoke()`` sends one batch and reads its scores back. ``measure()`` lets the program time
itself: the runner uses it instead of its own loop, so each sample is one graph run on the device with no pipe in
it.

The variant (part of the point's identity) is the runner's ``--variant``: a JSON object, or ``key=value`` pairs
separated by commas, with any of ``target`` (CL | NEON, default CL), ``layout`` (NHWC | NCHW, default NHWC),
``conv_method`` (DEFAULT | GEMM | DIRECT | WINOGRAD, default DEFAULT; WINOGRAD applies where a layer allows it),
``conv_methods_file`` (lines ``<layer> <METHOD>`` for conv0, pw1..pw13, logits), ``tuner`` (NONE | RAPID | NORMAL |
EXHAUSTIVE, default NONE; the tuner file is kept in the cache per build, device, model, layout and batch, and
reused). fp32 only. The build is the runner's ``--armcl-build`` folder, else ``armcl_program.find_build()``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import select
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from requestflow.board.backends.base import FloatBackend, imagenet_scores, to_float_input
from requestflow.board.catalogue import ARMCL_VARIANT
from requestflow.errors import UserError

CHOICES = ARMCL_VARIANT
DEFAULTS = {key: choices[0] for key, choices in ARMCL_VARIANT.items()}
TIMED_REGION = ("one ArmCL graph run of one batch inside the native program, input already on the device: all "
                "kernels, the output mapped back and the queue finished")
_READY_TIMEOUT_S = 3600  # EXHAUSTIVE tuning on a slow device takes long
_REPLY_TIMEOUT_S = 600


def parse_variant(given: dict | str | None, source: str = "--variant") -> dict:
    """The variant with its defaults filled in, from a dict, or text: a JSON object or ``key=value,key=value``.
    Bad input is refused naming ``source``, the key and the known values."""
    if isinstance(given, str):
        given = _variant_text(given, source)
    given = dict(given or {})
    given.pop("conv_methods_sha256", None)  # a parsed variant again: recomputed from the file below
    unknown = sorted(set(given) - set(DEFAULTS) - {"conv_methods_file"})
    if unknown:
        raise UserError(f"{source}: unknown key {unknown[0]!r}; known: {', '.join([*DEFAULTS, 'conv_methods_file'])}")
    variant = dict(DEFAULTS)
    for key, allowed in CHOICES.items():
        if key in given:
            value = str(given[key]).upper()
            if value not in allowed:
                raise UserError(f"{source}: {key} {given[key]!r}; known: {', '.join(allowed)}")
            variant[key] = value
    if given.get("conv_methods_file"):
        path = Path(given["conv_methods_file"])
        if not path.is_file():
            raise UserError(f"{source}: conv_methods_file {path} does not exist")
        variant["conv_methods_file"] = str(path)
        # the file's content, not its name, is what identifies the variant
        variant["conv_methods_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return variant


def _variant_text(text: str, source: str) -> dict:
    text = text.strip()
    if not text:
        return {}
    if text.startswith(("{", "[", '"')):
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise UserError(f"{source} is not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise UserError(f"{source} must be a JSON object or key=value pairs, e.g. layout=NCHW,tuner=RAPID")
        return value
    out = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise UserError(f"{source}: {part.strip()!r} is not key=value (e.g. layout=NCHW,conv_method=GEMM)")
        out[key.strip()] = value.strip()
    return out


def canonical_folder(weights) -> Path:
    """A canonical weights folder for ``weights`` (CanonicalWeights), written once per sha256 under the cache."""
    from requestflow.board.files import cache_dir

    folder = cache_dir("armcl-weights") / f"{weights.model.id}-{weights.sha256[:16]}"
    if not (folder / "manifest.json").is_file():
        weights.save(folder)
    return folder


class ArmclBackend(FloatBackend):
    name = "armcl"
    timed_region = TIMED_REGION

    def __init__(self, model, weights, batch_size: int, threads: int, variant: dict | str | None = None,
                 build: str | os.PathLike | None = None):
        super().__init__(model, weights, batch_size, threads)
        self.variant = parse_variant(variant)
        self.build_dir = Path(build) if build else None
        self._process = None
        self._shim_counts = None
        self._emulated = None

    def load(self) -> None:
        from requestflow.board import armcl_program, clshim
        from requestflow.board.files import cache_dir
        from requestflow.board.opencl_probe import opencl

        variant = self.variant
        self._build = self.build_dir or armcl_program.find_build()
        if not (self._build / "build.json").is_file():
            raise UserError(f"--armcl-build {self._build} is not a complete ArmCL build (no build.json)")
        provenance = json.loads((self._build / "build.json").read_text())
        self._build_info = {"key": provenance.get("key", self._build.name), "options": provenance.get("options"),
                            "source_sha256": (provenance.get("source") or {}).get("sha256")}
        options = provenance.get("options") or {}
        self._version = provenance.get("version") or "24.11"
        if variant["target"] == "NEON" and options.get("neon") != "1":
            raise UserError(f"target NEON, but ArmCL build {self._build.name[:16]} has neon={options.get('neon')} "
                            f"(and NEON cannot run on {platform.machine()})")
        if variant["target"] == "CL" and options.get("opencl") != "1":
            raise UserError(f"target CL, but ArmCL build {self._build.name[:16]} has no OpenCL")
        self._program = armcl_program.compile_program(self._build)
        folder = canonical_folder(self.weights.canonical_for(self.model))
        descriptor, name = tempfile.mkstemp(prefix="armcl-clshim-", suffix=".jsonl")
        os.close(descriptor)
        self._stats = Path(name)
        self._stats.unlink()  # the shim appends to it at exit: a fresh file per run
        env = dict(os.environ)
        self._shim = None
        if variant["target"] == "CL":
            self._opencl = opencl()
            extra, self._shim = clshim.prepare(self._opencl, stats_path=self._stats)
            env.update(extra)
        from requestflow.board.emulation import detect, program_launch

        try:  # an aarch64 program on x86_64 runs under the emulator of $REQUESTFLOW_EMULATOR, and says so
            launch, self._emulated = program_launch(self._program["path"])
        except ValueError as exc:
            raise UserError(str(exc)) from None
        # a runner that is itself emulated (qemu-user: platform.machine() says aarch64) must not look like ARM
        self._emulated = self._emulated or detect()
        command = [*launch, "--weights", str(folder), "--resolution", str(self.model.resolution),
                   "--batch", str(self.batch_size), "--target", variant["target"], "--layout", variant["layout"],
                   "--conv-method", variant["conv_method"], "--tuner", variant["tuner"],
                   "--threads", str(self.threads)]
        if variant.get("conv_methods_file"):
            command += ["--conv-methods-file", variant["conv_methods_file"]]
        self._tuner_file = None
        if variant["tuner"] != "NONE":
            device = ((self._shim or {}).get("device") or {}).get("name") or "device"
            # per tuner mode too: ArmCL does not tune a kernel its file already holds, so a RAPID file would
            # silently stand in for EXHAUSTIVE tuning
            key = hashlib.sha256(json.dumps([self._build_info["key"], self._program["sha256"], device,
                                             self.model.id, variant["layout"], self.batch_size,
                                             variant["tuner"]]).encode()).hexdigest()
            self._tuner_file = (cache_dir("armcl-tuner") /
                                f"{self.model.id}-{variant['layout']}-{variant['tuner']}-{key[:16]}.csv")
            self._tuner_reused = self._tuner_file.is_file()
            command += ["--tuner-file", str(self._tuner_file)]
        self._stderr = tempfile.TemporaryFile()
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=self._stderr, env=env)
        self._ready = self._expect("READY", _READY_TIMEOUT_S)
        if self._ready["classes"] != self.classes:
            raise RuntimeError(f"the program built {self._ready['classes']} classes, the weights have {self.classes}")
        self._x = np.zeros((self.batch_size, self.model.resolution, self.model.resolution, 3), np.float32)
        self._out = None

    def _line(self, timeout: float) -> bytes:
        stdout = self._process.stdout
        if not select.select([stdout], [], [], timeout)[0]:
            raise RuntimeError(f"the ArmCL program did not answer within {timeout:.0f} s")
        return stdout.readline()

    def _expect(self, word: str, timeout: float):
        line = self._line(timeout).decode(errors="replace").rstrip("\n")
        if not line.startswith(word + " "):
            self._process.wait(timeout=30) if not line else None
            raise RuntimeError(f"the ArmCL program failed: {line or 'no answer'}{self._stderr_tail()}")
        return json.loads(line[len(word) + 1:]) if word != "SCORES" else int(line.split()[1])

    def _stderr_tail(self) -> str:
        self._stderr.seek(0)
        lines = self._stderr.read().decode(errors="replace").splitlines()
        # an OpenCL compiler's log is mostly warnings: its error lines first, then the end
        errors = [line for line in lines if "error" in line.lower() and not line.startswith("warning")][:10]
        tail = "\n".join(dict.fromkeys([*errors, *lines[-5:]]))[-3000:].strip()
        code = self._process.poll()
        return (f" (exit status {code})" if code is not None else "") + (f"; stderr: {tail}" if tail else "")

    def set_input(self, batch: np.ndarray) -> None:
        self._x = np.ascontiguousarray(to_float_input(batch), np.float32)

    def invoke(self) -> None:
        self._process.stdin.write(b"INFER\n" + self._x.tobytes())
        self._process.stdin.flush()
        count = self._expect("SCORES", _REPLY_TIMEOUT_S)
        data = self._process.stdout.read(count * 4)
        if len(data) != count * 4:
            raise RuntimeError(f"the ArmCL program's scores were cut short{self._stderr_tail()}")
        self._out = np.frombuffer(data, np.float32).reshape(self.batch_size, -1)

    def measure(self, warmup: int, repetitions: int) -> list[float]:
        """Times measured by the program (seconds per repetition, warm-up excluded) on the last ``set_input``."""
        self._process.stdin.write(b"INFER\n" + self._x.tobytes())  # the batch onto the device, its scores kept
        self._process.stdin.flush()
        count = self._expect("SCORES", _REPLY_TIMEOUT_S)
        self._out = np.frombuffer(self._process.stdout.read(count * 4), np.float32).reshape(self.batch_size, -1)
        self._process.stdin.write(f"TIME {warmup} {repetitions}\n".encode())
        self._process.stdin.flush()
        return [float(s) for s in self._expect("TIMES", _REPLY_TIMEOUT_S + repetitions * 60)["samples"]]

    def scores(self) -> np.ndarray:
        return imagenet_scores(self._out)

    def info(self) -> dict:
        variant = {key: self.variant[key] for key in ("target", "conv_method", "tuner", "layout")}
        if "conv_methods_sha256" in self.variant:
            variant["conv_methods_sha256"] = self.variant["conv_methods_sha256"]
        # ADR 0006: whether the shim ran, and which, changes the measurement
        variant["opencl_shim"] = self._shim["sha256"] if self._shim and self._shim.get("used") else None
        out = {"name": self.name, "library": "arm_compute", "version": self._version,
               "build": {**self._build_info, "program_sha256": self._program["sha256"]},
               "variant": variant, "threads": self.threads,
               "program": {"path": self._program["path"], "compile_s": self._program.get("compile_s"),
                           "reused": self._program["reused"], "finalize_s": self._ready.get("finalize_s"),
                           "first_run_s": self._ready.get("first_run_s"),
                           "conv_methods": self._ready.get("conv_methods")}}
        if self._shim is not None:
            out["opencl_shim"] = self._shim
            device = self._shim.get("device") or {}
            if "pocl" in f"{device.get('platform')} {device.get('name')} {device.get('version')}".lower():
                out["device_note"] = ("the CL device is PoCL on the CPU, reached through requestflow's OpenCL "
                                      "forwarding shim (ADR 0006, issue #5): these are not Mali GPU timings")
        if self._emulated is not None:
            emulated = self._emulated
            out["emulated"] = emulated
            code = emulated.get("program_arch") or emulated.get("python_arch") or platform.machine()
            host = emulated.get("host_arch") or emulated.get("cpu_arch") or "another machine"
            out["untested"] = (f"{self.variant['target']} run as {code} code under "
                               f"{emulated['version'] or emulated['emulator']} on {host} (emulated): "
                               "predictions are a correctness check, timings are meaningless")
        elif self.variant["target"] == "NEON" and platform.machine() not in ("aarch64", "arm64", "armv7l"):
            out["untested"] = f"NEON on {platform.machine()}: not verified"
        if self._tuner_file is not None:
            out["tuner_file"] = {"path": str(self._tuner_file), "reused": self._tuner_reused}
        return out

    def after_close(self) -> dict:
        """The OpenCL shim's counters of this run (enqueues, those given a driver-chosen local size, build options
        dropped), read from the file the program's shim wrote at exit."""
        if self._shim is None or not self._shim.get("used"):
            return {}
        from requestflow.board.clshim import COUNTERS

        counts = self._shim_counts or {}
        return {"opencl_shim": {**self._shim, "counts": {name: counts.get(name)
                                                          for name in ("processes", "loaded", *COUNTERS)}}}

    def close(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        try:
            if process.poll() is None:
                try:
                    process.stdin.write(b"QUIT\n")
                    process.stdin.flush()
                    process.stdin.close()
                except (BrokenPipeError, OSError):
                    pass
                try:
                    process.wait(timeout=60)  # writes the tuner file on the way out
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        finally:
            for stream in (process.stdout, self._stderr):
                stream.close()
        from requestflow.board import clshim

        if self._shim is not None and self._shim.get("used"):
            deadline = time.monotonic() + 5
            while not self._stats.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            self._shim_counts = clshim.read_stats(self._stats)
            self._stats.unlink(missing_ok=True)
