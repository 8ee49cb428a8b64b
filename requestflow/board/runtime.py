"""The runtime spec a runner's venv was installed for (issue #17), read on the board. Standard library only.

A board may hold several runner environments, one per runtime spec (``ai-edge-litert==1.4.0``,
``tensorflow-cpu==2.20.0``: ``operators.runtime_spec``). Provisioning writes the spec into the venv it installs
(``MARKER`` in ``sys.prefix``), so that every result of that runner says which runtime it ran on, whoever starts
it: the runner records it as ``context.backend.runtime``, part of the point's library build and so of its identity
(``requestflow.results.identity``). The board's default runner has no marker and records nothing: the identity of
every point stored before runtime specs existed is unchanged.
"""

from __future__ import annotations

import sys
from pathlib import Path

MARKER = "requestflow-runtime"


def current(prefix: str | None = None) -> str | None:
    """The runtime spec of the venv at ``prefix`` (default: this interpreter's), or None."""
    try:
        text = (Path(prefix or sys.prefix) / MARKER).read_text(errors="replace").strip()
    except OSError:
        return None
    return text or None


def annotate(backend_info: dict) -> dict:
    """``backend_info`` with ``runtime`` set when this runner was installed for a runtime spec."""
    spec = current()
    return {**backend_info, "runtime": spec} if spec else backend_info
