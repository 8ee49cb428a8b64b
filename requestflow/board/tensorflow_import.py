"""Import TensorFlow without its start-up chatter on stderr (absl's pre-init banner and the oneDNN notice),
which ``TF_CPP_MIN_LOG_LEVEL`` no longer silences in 2.21. Any other line it prints is passed on unchanged."""

from __future__ import annotations

import os
import re
import sys
import tempfile

_NOISE = re.compile(r"All log messages before absl::InitializeLog|oneDNN custom operations are on|"
                    r"rebuild TensorFlow with the appropriate compiler flags|This TensorFlow binary is optimized")


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
