"""Least privilege (issue #21, docs/security.md): the roles requestflow_reader and requestflow_writer.

Both are NOLOGIN and made only when missing: roles belong to the whole PostgreSQL server, databases (a lab's store,
the tests' throwaway ones) come and go on it, several migrating at once. Everything else is per database:

- reader: SELECT on every table and view; writer: SELECT, INSERT, UPDATE, DELETE on the tables (not on
  ``alembic_version``), the id sequences, and ``refresh_scoreboard()``: PostgreSQL 15 lets only a materialized
  view's owner REFRESH it, so the function (SECURITY DEFINER, owned by the owner, fixed search_path) does it for the
  writer; the writer gets no DDL. ``requestflow.results.database.upgrade`` grants again after every later
  migration (tables and views it makes), and default privileges cover objects the migrating login creates.
- PUBLIC loses TEMP on this database (no temporary tables for the roles), EXECUTE on the large-object functions
  (lo_creat, lo_from_bytea, lo_put...: nobody but the owner uses them) and EXECUTE on ``set_config`` here: a
  query run as the reader by a superuser login must not be able to set ``role`` back (``SET ROLE`` is the boundary
  only for logins that are not superusers; requestflow's role engines refuse the ``SET``/``RESET``/``DO``
  statements themselves).
- A migrating login that is not a superuser becomes a member of both roles (it switches to them for reads and
  writes); a superuser needs no membership.

Refuses to go on if a role of that name exists with more than it should (a superuser, a login with CREATEROLE,
membership in pg_read_server_files & co.): someone made it by hand.

Revision ID: 0011
Revises: 0010
"""

from alembic import op

from requestflow.results.role_sql import READER, WRITER, ensure_role_sql, grants_sql

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

DANGEROUS = ("pg_read_server_files", "pg_write_server_files", "pg_execute_server_program", "pg_signal_backend",
             "pg_read_all_data", "pg_write_all_data")


def upgrade() -> None:
    for role in (READER, WRITER):
        op.execute(ensure_role_sql(role))
        op.execute(f"""DO $$ BEGIN
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}' AND (rolsuper OR rolcreaterole OR rolcreatedb
                       OR rolreplication OR rolbypassrls))
               OR EXISTS (SELECT FROM unnest(ARRAY{list(DANGEROUS)}) AS d(name)
                          WHERE pg_has_role('{role}', d.name, 'USAGE')) THEN
              RAISE EXCEPTION 'role {role} exists with more privileges than requestflow gives it (superuser, '
                'CREATEROLE, CREATEDB, REPLICATION, BYPASSRLS or membership in pg_read_server_files and the like): '
                'remove them or drop the role, then migrate again';
            END IF; END $$""")
    op.execute("""CREATE FUNCTION refresh_scoreboard() RETURNS void LANGUAGE plpgsql SECURITY DEFINER
                  SET search_path = pg_catalog, public
                  AS $$ BEGIN REFRESH MATERIALIZED VIEW public.scoreboard; END $$""")
    for statement in grants_sql():
        op.execute(statement)
    op.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {READER}, {WRITER}")
    op.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT INSERT, UPDATE, DELETE ON TABLES TO {WRITER}")
    op.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {WRITER}")
    op.execute("DO $$ BEGIN EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database()); END $$")
    op.execute("REVOKE EXECUTE ON FUNCTION pg_catalog.set_config(text, text, boolean) FROM PUBLIC")
    op.execute(large_objects_sql("REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC"))
    op.execute(migrator_membership_sql())


def large_objects_sql(statement: str, but: tuple[str, ...] = ()) -> str:
    """``statement`` (with %s for the function) for every large-object function of pg_catalog except ``but``."""
    return f"""DO $$ DECLARE f regprocedure; BEGIN
        FOR f IN SELECT p.oid::regprocedure FROM pg_proc p WHERE p.pronamespace = 'pg_catalog'::regnamespace
                 AND (p.proname LIKE 'lo\\_%' OR p.proname IN ('loread', 'lowrite'))
                 AND p.proname <> ALL (ARRAY{list(but)}::text[]) LOOP
          EXECUTE format('{statement}', f);
        END LOOP; END $$"""


def migrator_membership_sql() -> str:
    return f"""DO $$ DECLARE r text; BEGIN
        IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
          FOREACH r IN ARRAY ARRAY['{READER}', '{WRITER}'] LOOP
            IF NOT pg_has_role(current_user, r, 'MEMBER') THEN
              EXECUTE format('GRANT %I TO %I', r, current_user);
            END IF;
          END LOOP;
        END IF;
        EXCEPTION WHEN unique_violation OR duplicate_object THEN NULL; END $$"""


def downgrade() -> None:
    # as PostgreSQL has them: lo_import and lo_export (the server's files) never were PUBLIC's
    op.execute(large_objects_sql("GRANT EXECUTE ON FUNCTION %s TO PUBLIC", but=("lo_import", "lo_export")))
    op.execute("GRANT EXECUTE ON FUNCTION pg_catalog.set_config(text, text, boolean) TO PUBLIC")
    op.execute("DO $$ BEGIN EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO PUBLIC', current_database()); END $$")
    op.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON TABLES FROM {READER}, {WRITER}")
    op.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON SEQUENCES FROM {WRITER}")
    op.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {READER}, {WRITER}")
    op.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {WRITER}")
    op.execute(f"REVOKE ALL ON SCHEMA public FROM {READER}, {WRITER}")
    op.execute("DROP FUNCTION refresh_scoreboard()")
    op.execute(f"DO $$ BEGIN EXECUTE format('REVOKE ALL ON DATABASE %I FROM {READER}, {WRITER}', "
               "current_database()); END $$")
    # the roles stay: they belong to the server, and other databases on it may use them
