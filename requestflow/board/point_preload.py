"""What the point server (``requestflow.board.point_server``) imports before it forks, and the checks that make its
forks safe: ``preload`` (per profile: numpy, Pillow, LiteRT or TensorFlow, the runner's modules; nothing created;
the machine's OpenCL platforms probed once in a fresh interpreter, which the children report instead of probing),
``fork_safety`` (no thread, no TensorFlow runtime), ``module_files`` / ``stamp`` (what a reinstall or an edit of
them would rewrite: a server whose imports went stale ends).
"""

from __future__ import annotations

import gc
import importlib
import os
import sys
import time

# what each profile (point_client.PROFILES) imports before it forks, besides the runner's own modules
PRELOADS = {"tflite": ("numpy", "PIL.Image", "tflite"), "tf": ("numpy", "PIL.Image", "tensorflow"),
            "armcl": ("numpy", "PIL.Image")}
BOARD_MODULES = ("requestflow.board.board_commands", "requestflow.board.runner", "requestflow.board.backends",
                 "requestflow.board.machine", "requestflow.board.dataset", "requestflow.board.image_stream",
                 "requestflow.board.resolve",
                 "requestflow.board.weights", "requestflow.board.quality", "requestflow.board.latency_stats",
                 "requestflow.board.calibration", "requestflow.board.power", "tqdm")


def preload(profile: str) -> dict:
    """Import what the profile's points import, nothing created; what was imported and how long it took."""
    from requestflow.board.tensorflow_import import quiet_tensorflow

    quiet_tensorflow()  # the environment a fresh `requestflow run` imports TensorFlow in
    start = time.perf_counter()
    for name in (*PRELOADS[profile], *BOARD_MODULES, f"requestflow.board.backends.{profile}_backend"):
        if name == "tensorflow":
            from requestflow.board.tensorflow_import import import_tensorflow

            import_tensorflow()
        elif name == "tflite":
            from requestflow.board.importers import tflite_interpreter_class

            tflite_interpreter_class()  # LiteRT's module (else TensorFlow's): the class, no interpreter
        else:
            try:
                importlib.import_module(name)
            except ImportError:  # what this board lacks the point will lack too
                pass
    from requestflow.board.opencl_probe import probe_for_children

    probe_for_children()  # the machine's OpenCL, asked once in a fresh interpreter: no driver thread here
    gc.collect()
    gc.freeze()
    heavy = ("numpy", "PIL", "ai_edge_litert", "tensorflow", "tqdm")
    return {"preload": profile, "preloaded": [name for name in heavy if name in sys.modules],
            "preload_s": round(time.perf_counter() - start, 3)}


def module_files() -> dict[str, tuple[int, int]]:
    """Size and mtime of each imported module of requestflow, and of the heavy packages' ``__init__``: what a
    reinstall or an edit rewrites, making this server's imports stale."""
    import requestflow

    root = os.path.dirname(requestflow.__file__)
    files = {}
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if path and (path.startswith(root + os.sep) or (
                "." not in name and name in ("numpy", "PIL", "ai_edge_litert", "tensorflow", "tqdm"))):
            try:
                info = os.stat(path)
            except OSError:
                continue
            files[path] = (info.st_size, info.st_mtime_ns)
    return files


def fork_safety() -> str | None:
    """Why this process must not fork for a point (None: it may): threads, or TensorFlow's runtime started."""
    import threading

    if threading.active_count() > 1:
        return f"{threading.active_count()} Python threads"
    threads = len(os.listdir("/proc/self/task"))
    if threads > 1:
        return f"{threads} threads (a library started a pool at import)"
    context = sys.modules.get("tensorflow.python.eager.context")
    if context is not None and getattr(context, "_context", None) is not None:
        return "TensorFlow's eager context exists"
    return None


def trial_fork() -> None:
    """One child that exits at once: fork handlers (OpenBLAS') stop their pools in the server, as at every fork."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


def stamp(path: str) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_size, info.st_mtime_ns
