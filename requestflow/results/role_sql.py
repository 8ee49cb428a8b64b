"""The SQL of the store's roles (``requestflow.results.roles``), shared by migration 0011 and by
``database.upgrade``, which grants again after every later migration. No import of the rest of requestflow."""

from __future__ import annotations

import re

READER = "requestflow_reader"
WRITER = "requestflow_writer"
# tables the writer reads only: Alembic's, and the scoreboard, which only its functions write (migration 0013)
NO_WRITES = ("alembic_version", "scoreboard")
# pg_advisory_xact_lock's key for "maintaining the scoreboard" (any constant; this one spells "rf-score"), taken by
# the functions that write it (migration 0013) and, on a store before 0013, by load.update_scoreboard
SCOREBOARD_LOCK = 0x72662D73636F7265
APP_LOGIN = "requestflow_app"  # the embedded default's login for reads and writes (migrations: postgres)


def ensure_role_sql(role: str, attributes: str = "NOLOGIN") -> str:
    """CREATE ROLE unless it exists. Roles are cluster-wide while databases come and go on one server, several
    migrating at once: the loser of a race gets duplicate_object / unique_violation, caught here."""
    _identifier(role)
    return (f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN "
            f"CREATE ROLE {role} {attributes} NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS; "
            f"END IF; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$")


def grant_membership_sql(role: str, member: str) -> str:
    """GRANT role TO member, when the role exists, tolerating a concurrent identical grant."""
    _identifier(role), _identifier(member)
    return (f"DO $$ BEGIN IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') AND NOT "
            f"pg_has_role('{member}', '{role}', 'MEMBER') THEN GRANT {role} TO {member}; END IF; "
            f"EXCEPTION WHEN unique_violation OR duplicate_object THEN NULL; END $$")


def grants_sql() -> list[str]:
    """The roles' privileges in the current database (idempotent; run again after every migration, so that the
    tables and views a later migration (re)creates are covered too)."""
    return [
        f"GRANT USAGE ON SCHEMA public TO {READER}, {WRITER}",
        f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {READER}",  # tables, views, materialized views
        f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {WRITER}",
        # data changes on plain tables only (not through views), never on Alembic's own table nor on the tables
        # that SECURITY DEFINER functions maintain (the scoreboard: scoreboard_update, migration 0013)
        f"""DO $$ DECLARE t record; BEGIN
              FOR t IN SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                       WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
                         AND c.relname <> ALL (ARRAY{list(NO_WRITES)})
              LOOP EXECUTE format('GRANT INSERT, UPDATE, DELETE ON public.%I TO {WRITER}', t.relname); END LOOP;
            END $$""",
        # nor on views (default privileges grant to every new relation, a view or a materialized one too)
        f"""DO $$ DECLARE t record; BEGIN
              FOR t IN SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                       WHERE n.nspname = 'public' AND c.relkind IN ('v', 'm')
              LOOP EXECUTE format('REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON public.%I FROM {WRITER}', t.relname);
              END LOOP;
            END $$""",
        *(f"REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON TABLE {table} FROM {WRITER}" for table in NO_WRITES),
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {WRITER}",
        "REVOKE ALL ON FUNCTION refresh_scoreboard() FROM PUBLIC",
        f"GRANT EXECUTE ON FUNCTION refresh_scoreboard() TO {WRITER}",
        f"""DO $$ BEGIN IF to_regprocedure('scoreboard_update(text[])') IS NOT NULL THEN
              REVOKE ALL ON FUNCTION scoreboard_update(text[]) FROM PUBLIC;
              GRANT EXECUTE ON FUNCTION scoreboard_update(text[]) TO {WRITER};
            END IF; END $$""",
    ]


def _identifier(name: str) -> str:
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise ValueError(f"not a plain role name: {name!r}")
    return name
