"""How the results store's commands reach the store: the ``--db`` and ``--db-reader`` options, ``open_store`` (the
schema brought up to date, then an engine acting as requestflow_writer or requestflow_reader), and the values of the
filter options several commands take. The controller's commands (``operators.commands``) use them too.
"""

from __future__ import annotations

from requestflow.errors import UserError

DB_HELP = ("PostgreSQL URL (default: $REQUESTFLOW_DATABASE_URL, the Airflow Connection requestflow_results, else the "
           "embedded PostgreSQL)")
DB_READER_HELP = ("PostgreSQL URL of a login that is a member of requestflow_reader, for reads when the --db login "
                  "cannot switch to it (default: $REQUESTFLOW_READER_DATABASE_URL, the Airflow Connection "
                  "requestflow_results_reader; docs/security.md)")


def add_reader_option(parser) -> None:
    parser.add_argument("--db-reader", metavar="URL", help=DB_READER_HELP)


def listed_values(args, keys) -> dict[str, list[str]]:
    """{key: [value, ...]} of the options ``--KEY VALUE...`` named by ``keys`` (None: not given, an empty list),
    each value split at commas but ``variant``'s (JSON text) and ``sweep``'s (a run id), empty values dropped."""
    return {key: [v for value in getattr(args, key) or [] for v in
                  (value.split(",") if key not in ("variant", "sweep") else [value]) if v] for key in keys}


def open_store(args, role: str = "writer", timeout_s: float | None = None):
    """(engine, url) of the results store: its schema brought up to date with the ``--db`` login (the owner's,
    ``url``), then an engine whose every transaction acts as requestflow_writer, or with ``role="reader"`` as
    requestflow_reader (read-only, through ``--db-reader`` when given; each statement cut after ``timeout_s``
    seconds, default ``--timeout`` or $REQUESTFLOW_SQL_TIMEOUT or 30 s; 0: no limit). See requestflow.results.roles."""
    from requestflow.results import roles
    from requestflow.results.database import resolve_url, upgrade

    url, _ = resolve_url(args.db)
    try:
        upgrade(url)
        if role != "reader":
            return roles.writer_engine(url), url
        reader = roles.reader_url(getattr(args, "db_reader", None))
        if timeout_s is None:
            timeout_s = getattr(args, "timeout", None)
            if timeout_s is None:
                timeout_s = roles.timeout_from_env(roles.SQL_TIMEOUT_ENV, roles.SQL_TIMEOUT_S)
            elif timeout_s < 0:
                raise UserError(f"--timeout must be a number of seconds, 0 for no limit; got {timeout_s:g}")
        return roles.reader_engine(url, reader, timeout_s), url
    except UserError:
        raise
    except Exception as exc:  # connection refused, authentication, ...: one line naming the database
        from sqlalchemy.engine import make_url
        raise UserError(f"cannot use the results database {make_url(url).render_as_string(hide_password=True)}: "
                        f"{str(getattr(exc, 'orig', None) or exc).strip().splitlines()[0]}") from None

