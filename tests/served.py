"""Local stand-ins for the network: an HTTP server on 127.0.0.1 serving a folder, counting what it answers, and
tar archives built from bytes (no test needs the internet)."""

from __future__ import annotations

import io
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@contextmanager
def http_folder(root: Path) -> Iterator[tuple[str, list[str]]]:
    """``(base URL, paths requested)`` of a threaded HTTP server on 127.0.0.1 serving ``root`` while in the block."""
    requests: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):  # keep the test output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def make_tar(path: Path, members: dict[str, bytes], mode: str = "w") -> Path:
    """A tar archive (``mode`` "w:gz" for a .tgz) whose members are named exactly as given (no normalisation)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path
