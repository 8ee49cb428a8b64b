"""Least privilege in the results store (issue #21, docs/security.md): who each connection acts as.

Migrations run as the store's owner (the login of ``--db``, ``$REQUESTFLOW_DATABASE_URL``, the Connection
``requestflow_results``). Migration 0011 creates two roles without a login, cluster-wide and idempotently:

- ``requestflow_reader``: ``SELECT`` on the store's tables and views, nothing else (no file, program or large-object
  functions, no ``CREATE``/``TEMP``);
- ``requestflow_writer``: ``SELECT``/``INSERT``/``UPDATE``/``DELETE`` on the tables but the scoreboard (``SELECT``
  only), the sequences behind their ids, and the scoreboard's two SECURITY DEFINER functions (migration 0013):
  ``scoreboard_update(keys)``, which every write calls for the configurations it touched, and
  ``refresh_scoreboard()``, the whole table again (a ``REFRESH MATERIALIZED VIEW scoreboard`` sent through a writer
  engine, what loads ran before 0013, still runs as that function); no DDL.

Every other connection comes from ``reader_engine`` or ``writer_engine``: each transaction starts with
``SET LOCAL ROLE`` (and, for readers, ``READ ONLY`` and a ``statement_timeout``), so every statement in it runs with
that role's privileges. A login that cannot switch to the reader may give a reader URL instead (``--db-reader``,
``$REQUESTFLOW_READER_DATABASE_URL``, the Connection ``requestflow_results_reader``); with neither, reads are
refused with a message saying how to set it up, never run as the login itself.

``SET ROLE`` is a privilege boundary for a login that is not a superuser: such a login can only climb back to
itself or to roles it is a member of. A superuser login can climb back anywhere (``RESET ROLE``, ``SET ROLE``,
``SET SESSION AUTHORIZATION``, ``set_config('role', ...)``, a ``DO`` block), so besides the role: these engines
refuse every statement that is not a query or a data change (``check_statement``: first keyword, one statement),
and migration 0011 revokes ``set_config`` from PUBLIC in the store's database (a query cannot change the role).
The embedded default connects for reads and writes as ``requestflow_app``, a login that is not a superuser.
"""

from __future__ import annotations

import os
import re

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url

from requestflow.errors import UserError
from requestflow.results.role_sql import APP_LOGIN, READER, WRITER, ensure_role_sql, grant_membership_sql

READER_CONN_ID = "requestflow_results_reader"
READER_ENV = "REQUESTFLOW_READER_DATABASE_URL"
SQL_TIMEOUT_ENV, SQL_TIMEOUT_S = "REQUESTFLOW_SQL_TIMEOUT", 30.0  # requestflow sql, scoreboard, plot, diff
PAGE_TIMEOUT_ENV, PAGE_TIMEOUT_S = "REQUESTFLOW_PAGE_TIMEOUT", 5.0  # the scoreboard page's queries
SETUP_DOC = "docs/security.md"

# What a role engine runs. A query or a data change (the reader's read-only transaction and privileges refuse
# the latter with PostgreSQL's own message); SET only as SET TRANSACTION (export's snapshot, remove's dry run);
# savepoints (SQLAlchemy's nested transactions), but never COMMIT, ROLLBACK or BEGIN: the next statement would run
# in a new transaction, without the role.
QUERY_KEYWORDS = frozenset({"select", "with", "values", "table", "show", "explain", "insert", "update", "delete",
                            "merge"})


class RoleUnavailable(UserError):
    """The connection cannot act as the role (no such role yet, or the login is not a member): a set-up problem."""


class StatementRefused(UserError):
    """A statement that a role engine never runs (one that could change the session's role, or several at once)."""


def timeout_from_env(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise UserError(f"${name} must be a number of seconds (0: no limit), got {raw!r}")
    return value


# --- where the reader connects ------------------------------------------------------------------------------------

def reader_url(explicit: str | None = None) -> tuple[str, str] | None:
    """(SQLAlchemy URL, where it came from) of a separate reader login, or None: ``--db-reader``,
    ``$REQUESTFLOW_READER_DATABASE_URL``, the Airflow Connection ``requestflow_results_reader``."""
    from requestflow.results.database import connection_url_from_env, sqlalchemy_url

    if explicit:
        return sqlalchemy_url(explicit), "--db-reader"
    if os.environ.get(READER_ENV):
        return sqlalchemy_url(os.environ[READER_ENV]), READER_ENV
    airflow = connection_url_from_env(READER_CONN_ID)
    if airflow:
        return sqlalchemy_url(airflow), f"Airflow Connection {READER_CONN_ID}"
    return None


def login_url(url: str) -> str:
    """The URL that reads and writes connect with: ``url`` itself, except on the embedded server, where the
    superuser ``postgres`` only migrates and ``requestflow_app`` (no superuser) is made and used instead."""
    from requestflow.results.embedded import is_embedded

    parsed = make_url(url)
    if not (is_embedded(url) and parsed.username in (None, "", "postgres")):
        return url
    ensure_app_login(url)
    return parsed.set(username=APP_LOGIN, password=None).render_as_string(hide_password=False)


def ensure_app_login(owner_url: str) -> None:
    """Create the embedded default's login ``requestflow_app`` (not a superuser, NOINHERIT: without SET ROLE it
    holds no privilege of the store) and make it a member of both roles once they exist. Idempotent."""
    engine = create_engine(owner_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql(ensure_role_sql(APP_LOGIN, "LOGIN NOINHERIT"))
            for role in (READER, WRITER):
                connection.exec_driver_sql(grant_membership_sql(role, APP_LOGIN))
    finally:
        engine.dispose()


# --- engines that act as a role ------------------------------------------------------------------------------------

def reader_engine(url: str, reader: tuple[str, str] | None = None, timeout_s: float | None = None) -> Engine:
    """An engine whose every transaction is READ ONLY, runs as requestflow_reader and is cut after ``timeout_s``
    seconds per statement (None or 0: no limit). Through ``reader`` (a reader URL and its origin) when given,
    else through ``url``'s login (``login_url``)."""
    target, origin = reader if reader else (login_url(url), None)
    return _role_engine(target, READER, timeout_s, origin)


def writer_engine(url: str) -> Engine:
    """An engine whose every transaction runs as requestflow_writer."""
    return _role_engine(login_url(url), WRITER, None, None)


def _role_engine(url: str, role: str, timeout_s: float | None, reader_origin: str | None) -> Engine:
    import psycopg

    engine = create_engine(url, pool_pre_ping=True)
    setup = (["SET TRANSACTION READ ONLY"] if role == READER else []) + [f"SET LOCAL ROLE {role}"]
    if timeout_s:
        setup.append(f"SET LOCAL statement_timeout = {max(1, round(timeout_s * 1000))}")
    login = make_url(url).username or "(default user)"

    @event.listens_for(engine, "begin")
    def act_as_role(connection) -> None:
        driver = connection.connection.driver_connection
        if driver.autocommit:  # SET LOCAL would be a no-op: never run a statement outside the role
            raise StatementRefused(f"the results store's {role} connections run every statement in a transaction; "
                                   "AUTOCOMMIT is refused")
        try:
            for statement in setup:
                driver.execute(statement)
        except psycopg.errors.UndefinedObject:
            raise RoleUnavailable(f"the results store has no role {role} yet: run `requestflow db upgrade` with "
                                  f"the store's owner login (migration 0011 creates it; {SETUP_DOC})") from None
        except psycopg.errors.InsufficientPrivilege:
            raise RoleUnavailable(_cannot_switch(role, login, reader_origin)) from None

    @event.listens_for(engine, "before_cursor_execute", retval=True)
    def only_queries(connection, cursor, statement, parameters, context, executemany):
        if role == WRITER and _REFRESH.fullmatch(statement):  # load.refresh_scoreboard's, as the owner would
            return "SELECT refresh_scoreboard()", parameters
        check_statement(statement, role)
        return statement, parameters

    engine._requestflow_timeout_s = timeout_s  # for query.read_only's message
    return engine


def _cannot_switch(role: str, login: str, reader_origin: str | None) -> str:
    if reader_origin:
        return (f"the reader URL ({reader_origin}) logs in as {login}, which cannot act as {role}: as the store's "
                f"owner run `GRANT {role} TO {login}`, or give a login that is a member of {role} ({SETUP_DOC})")
    if role == READER:
        return (f"the login {login} cannot act as {role} and no reader URL is set: as the store's owner run "
                f"`GRANT {role} TO {login}`, or give a login that is a member of {role} with --db-reader URL, "
                f"${READER_ENV} or the Airflow Connection {READER_CONN_ID} ({SETUP_DOC}); reads never run as the "
                "login itself")
    return (f"the login {login} cannot act as {role}: as the store's owner run `GRANT {role} TO {login}` "
            f"(`requestflow db upgrade` does it for the login that migrates; {SETUP_DOC})")


# --- statements a role engine runs ----------------------------------------------------------------------------------

def check_statement(sql: str, role: str = READER) -> None:
    """Refuse, with one line, what a role engine never runs: several statements in one string, and anything but a
    query or a data change (``SET ROLE``, ``RESET``, ``SET SESSION AUTHORIZATION``, ``DO``, ``COPY``, ``CREATE``,
    ``LOAD``...)."""
    words, count = _lex(sql)
    if count > 1:
        raise StatementRefused("SQL refused: one statement at a time (cannot insert multiple commands into a "
                               "prepared statement)")
    if not words:
        return
    first = words[0]
    if first in QUERY_KEYWORDS:
        return
    if first == "set" and words[1:2] == ["transaction"] and not (role == READER and "write" in words):
        return
    if first in ("savepoint", "release") or words[:2] == ["rollback", "to"]:  # nested transactions; not the role's
        return  # SET LOCAL, made before any savepoint
    shown = " ".join(words[:3]).upper()
    raise StatementRefused(f"SQL refused: {shown} ... is not a query (SELECT, WITH, VALUES, TABLE, SHOW, EXPLAIN); "
                           f"as {role} nothing may change the session's role or settings, run code or reach files")


_REFRESH = re.compile(r"\s*REFRESH\s+MATERIALIZED\s+VIEW\s+(public\.)?scoreboard\s*;?\s*", re.I)
_WORD = re.compile(r"[A-Za-z_][A-Za-z_0-9$]*")
_DOLLAR = re.compile(r"\$([A-Za-z_][A-Za-z_0-9]*)?\$")


def _lex(sql: str) -> tuple[list[str], int]:
    """(the first statement's first words, lower case, up to 12; how many statements): strings, quoted names,
    dollar quotes and comments (nested /* */) skipped, as PostgreSQL's lexer does."""
    words: list[str] = []
    statements, pending, i, n = 0, False, 0, len(sql)
    while i < n:
        c = sql[i]
        if sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif sql.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if sql.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif sql.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == ";":
            statements += pending
            pending, i = False, i + 1
        elif c.isspace():
            i += 1
        else:
            pending = True
            if c in "'\"":
                escapes = c == "'" and i > 0 and sql[i - 1] in "eE" and (i < 2 or not sql[i - 2].isalnum())
                i += 1
                while i < n:
                    if escapes and sql[i] == "\\":
                        i += 2
                    elif sql[i] == c:
                        if sql.startswith(c * 2, i):
                            i += 2
                        else:
                            break
                    else:
                        i += 1
                i += 1
            elif c == "$" and (tag := _DOLLAR.match(sql, i)):
                end = sql.find(tag.group(0), tag.end())
                i = n if end < 0 else end + len(tag.group(0))
            elif (word := _WORD.match(sql, i)):
                if statements == 0 and len(words) < 12:
                    words.append(word.group(0).lower())
                i = word.end()
            else:
                i += 1
    return words, statements + pending
