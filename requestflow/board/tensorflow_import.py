"""Import TensorFlow without its start-up chatter on stderr (absl's pre-init banner and the oneDNN notice),
which ``TF_CPP_MIN_LOG_LEVEL`` no longer silences in 2.21. Any other line it prints is passed on unchanged."""

from __future__ import annotations

import os
import re
import sys
import tempfile

_NOISE = re.compile(r"All log messages before absl::InitializeLog|oneDNN custom operations are on|"
                    r"rebuild TensorFlow with the appropriate compiler flags|This TensorFlow binary is optimized")


def quiet_tensorflow() -> None:
    """The environment ``requestflow run`` imports TensorFlow in (the CLI and the point server's preload)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def import_tensorflow():
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines():
                if line.strip() and not _NOISE.search(line):
                    print(line, file=sys.stderr)
    return tensorflow


def exit_now(code: int) -> None:
    """End the process without the interpreter's teardown. TensorFlow's takes 1-2 s after the result is written
    (measured here: 1.8 s from a tf run's last line to its exit, 0.1 s for tflite): outside the runner's clock,
    but on every point of a sweep, which waits for the process to end. Everything of ours is done by then (the
    document written atomically, the output printed): only the streams and the log handlers need flushing."""
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
