"""Local stand-ins for the network: an HTTP server on 127.0.0.1 serving a folder (counting what it answers) or
answering with a handler (``JsonHandler``: a stand-in API), and tar archives built from bytes (no test needs the
internet)."""

from __future__ import annotations

import io
import json
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
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

    with http_server(partial(Handler, directory=str(root))) as base:
        yield base, requests


@contextmanager
def http_server(handler) -> Iterator[str]:
    """The base URL of a threaded HTTP server on 127.0.0.1 answering with ``handler`` while in the block."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


class JsonHandler(BaseHTTPRequestHandler):
    """A stand-in API's handler: ``_send`` answers JSON; no request lines on the test's output."""

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def make_tar(path: Path, members: dict[str, bytes], mode: str = "w") -> Path:
    """A tar archive (``mode`` "w:gz" for a .tgz) whose members are named exactly as given (no normalisation)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path
