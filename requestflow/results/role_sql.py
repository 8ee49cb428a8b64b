"""The SQL of the store's roles (``requestflow.results.roles``), shared by migration 0011 and by
``database.upgrade``, which grants again after every later migration. No import of the rest of requestflow."""

from __future__ import annotations

import re

READER = "requestflow_reader"
WRITER = "requestflow_writer"
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
        # data changes on plain tables only (not through views), never on Alembic's own table
        f"""DO $$ DECLARE t record; BEGIN
              FOR t IN SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                       WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND c.relname <> 'alembic_version'
              LOOP EXECUTE format('GRANT INSERT, UPDATE, DELETE ON public.%I TO {WRITER}', t.relname); END LOOP;
            END $$""",
        # nor on views (default privileges grant to every new relation, a view or a materialized one too)
        f"""DO $$ DECLARE t record; BEGIN
              FOR t IN SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                       WHERE n.nspname = 'public' AND c.relkind IN ('v', 'm')
              LOOP EXECUTE format('REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON public.%I FROM {WRITER}', t.relname);
              END LOOP;
            END $$""",
        f"REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON TABLE alembic_version FROM {WRITER}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {WRITER}",
        "REVOKE ALL ON FUNCTION refresh_scoreboard() FROM PUBLIC",
        f"GRANT EXECUTE ON FUNCTION refresh_scoreboard() TO {WRITER}",
    ]


def _identifier(name: str) -> str:
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise ValueError(f"not a plain role name: {name!r}")
    return name
