"""Least privilege in the results store (issue #21, docs/security.md), on the tests' PostgreSQL server (15): reads act
as requestflow_reader, writes as requestflow_writer, the migrations as the owner. Every attack of the issue is
refused with one line through ``requestflow sql`` and through the scoreboard page's engine, and leaves nothing behind
(no file, the same rows, no new relation or large object). The same on the embedded server: test_roles_embedded.py.

The login of these throwaway databases is the superuser ``postgres``: there the statement check and the revoked
``set_config`` hold what ``SET ROLE`` alone would not. A login that is not a superuser (made here, as an operator
would) is confined by the role itself: ``TestTheRoleIsTheBoundaryForALoginThatIsNotASuperuser`` runs the attacks
below the statement check.
"""

from __future__ import annotations

import contextlib
import threading
import uuid

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from requestflow.results import roles
from requestflow.results.database import head_revision, sqlalchemy_url, upgrade
from requestflow.results.query import read_only
from tests.databases import SERVER, throwaway_database
from tests.roles_checks import (
    ATTACKS,
    NOT_A_QUERY,
    attack_sql,
    footprint,
    one_line_error,
    owner_large_object,
    page_engine,
    run_on,
    target_folder,
)
from tests.scoreboard_seed import SEEDS, seed_store

FEW_SEEDS = SEEDS[:4]


@pytest.fixture(scope="module")
def store(models_dir):
    """A store seeded through a writer engine (the loads, board figures and REFRESH all as requestflow_writer):
    (owner URL, the oid of a large object the owner made)."""
    with throwaway_database() as url:
        owner = sqlalchemy_url(url)
        writer = roles.writer_engine(owner)
        seed_store(writer, models_dir, FEW_SEEDS)
        writer.dispose()
        yield owner, owner_large_object(owner)


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("REQUESTFLOW_DATABASE_URL", "AIRFLOW_CONN_REQUESTFLOW_RESULTS", roles.READER_ENV,
                 "AIRFLOW_CONN_REQUESTFLOW_RESULTS_READER", roles.SQL_TIMEOUT_ENV, roles.PAGE_TIMEOUT_ENV):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@contextlib.contextmanager
def login(*memberships: str, inherit: bool = False):
    """A login role on the tests' server that is not a superuser, a member of ``memberships``: its name, dropped
    afterwards (roles are the server's, not a database's)."""
    name = f"rf_login_{uuid.uuid4().hex[:10]}"
    admin = create_engine(sqlalchemy_url(f"{SERVER}/postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f"CREATE ROLE {name} LOGIN {'INHERIT' if inherit else 'NOINHERIT'}")
        for role in memberships:
            connection.exec_driver_sql(f"GRANT {role} TO {name}")
    try:
        yield name
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"DROP ROLE {name}")
        admin.dispose()


def as_login(url: str, name: str) -> str:
    return make_url(url).set(username=name).render_as_string(hide_password=False)


def owner_rows(owner: str, sql: str) -> list[tuple]:
    """The rows of ``sql`` run with the owner's login (the test looking, not requestflow)."""
    engine = create_engine(owner)
    with engine.connect() as connection:
        rows = [tuple(row) for row in connection.execute(text(sql))]
    engine.dispose()
    return rows


class TestTheRoles:
    def test_the_migration_makes_two_roles_without_login_superuser_or_server_file_roles(self, store):
        owner, _ = store
        rows = owner_rows(owner, "SELECT rolname, rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls, "
                                 "ARRAY(SELECT b.rolname FROM pg_roles b WHERE pg_has_role(r.rolname, b.oid, 'USAGE') "
                                 "AND b.rolname LIKE 'pg\\_%') FROM pg_roles r "
                                 "WHERE rolname LIKE 'requestflow\\_%er' ORDER BY 1")
        assert rows == [("requestflow_reader", False, False, False, False, False, []),
                        ("requestflow_writer", False, False, False, False, False, [])]
        assert owner_rows(owner, "SELECT has_database_privilege('requestflow_reader', current_database(), 'TEMP'), "
                                 "has_database_privilege('requestflow_writer', current_database(), 'CREATE'), "
                                 "has_schema_privilege('requestflow_writer', 'public', 'CREATE')") \
            == [(False, False, False)]

    def test_the_reader_may_select_every_table_and_view_and_change_none(self, store):
        owner, _ = store
        privileges = owner_rows(owner, "SELECT c.relname, has_table_privilege('requestflow_reader', c.oid, 'SELECT'), "
                                       "has_table_privilege('requestflow_reader', c.oid, "
                                       "'INSERT, UPDATE, DELETE, TRUNCATE'), "
                                       "has_table_privilege('requestflow_writer', c.oid, 'INSERT'), "
                                       "has_table_privilege('requestflow_writer', c.oid, 'TRUNCATE') "
                                       "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                                       "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'v', 'm')")
        by_name = {name: rest for name, *rest in privileges}
        assert {"results", "samples", "scoreboard", "scoreboard_live", "pareto_frontier", "alembic_version"} \
            <= set(by_name)
        assert all(select and not change for select, change, _, _ in by_name.values())
        assert by_name["results"][2] and not by_name["results"][3]  # the writer: INSERT, never TRUNCATE
        assert not by_name["alembic_version"][2] and not by_name["scoreboard"][2]  # nor the schema, nor views

    def test_every_read_acts_as_the_reader_read_only_with_the_default_timeout(self, store, run_cli, clean_env):
        owner, _ = store
        code, stdout, _ = run_cli("sql", "SELECT session_user, current_user, current_setting('statement_timeout'), "
                                         "current_setting('transaction_read_only')", "--format", "csv", "--db", owner)
        assert code == 0 and stdout.splitlines()[1] == "postgres,requestflow_reader,30s,on"

    def test_the_page_reads_as_the_reader_with_its_own_timeout(self, store, clean_env):
        owner, _ = store
        clean_env.setenv("AIRFLOW_CONN_REQUESTFLOW_RESULTS", owner)
        with page_engine() as engine:
            assert run_on(engine, "SELECT current_user, current_setting('statement_timeout'), "
                                  "current_setting('transaction_read_only')") == [("requestflow_reader", "5s", "on")]
        clean_env.setenv(roles.PAGE_TIMEOUT_ENV, "2.5")
        with page_engine() as engine:
            assert run_on(engine, "SHOW statement_timeout") == [("2500ms",)]

    def test_every_write_acts_as_the_writer(self, store):
        owner, _ = store
        writer = roles.writer_engine(owner)
        with writer.begin() as connection:
            assert connection.execute(text("SELECT current_user, current_setting('transaction_read_only')")).one() \
                == ("requestflow_writer", "off")
        writer.dispose()

    def test_the_writer_has_no_ddl_no_alembic_version_and_no_server_files(self, store):
        owner, _ = store
        writer = roles.writer_engine(owner)
        before = footprint(owner)
        assert "not a query" in one_line_error(lambda: run_on(writer, "DROP TABLE samples"))
        assert "not a query" in one_line_error(lambda: run_on(writer, "TRUNCATE samples"))
        assert "permission denied for table alembic_version" in one_line_error(
            lambda: run_on(writer, "UPDATE alembic_version SET version_num = '0001'"))
        assert "permission denied for function pg_read_file" in one_line_error(
            lambda: run_on(writer, "SELECT pg_read_file('/etc/hostname')"))
        # below the statement check, the role itself: no DDL
        with writer.connect() as connection:
            connection.begin()
            cursor = connection.connection.driver_connection.cursor()
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="must be owner of table samples"):
                cursor.execute("DROP TABLE samples")
        writer.dispose()
        assert footprint(owner) == before


@pytest.mark.parametrize("name", sorted(ATTACKS))
class TestEveryAttackIsRefusedWithOneLineAndWritesNothing:
    def test_through_requestflow_sql(self, store, run_cli, clean_env, name):
        owner, oid = store
        before = footprint(owner)
        with target_folder() as folder:
            sql, refusal, target = attack_sql(name, folder, oid)
            code, stdout, stderr = run_cli("sql", sql, "--db", owner)
            assert code == 2 and stdout == ""
            assert refusal in stderr and len(stderr.strip().splitlines()) == 1, stderr
            assert not target.exists() and list(folder.iterdir()) == []
        assert footprint(owner) == before

    def test_through_the_pages_engine(self, store, clean_env, name):
        owner, oid = store
        clean_env.setenv("AIRFLOW_CONN_REQUESTFLOW_RESULTS", owner)
        before = footprint(owner)
        with target_folder() as folder, page_engine() as engine:
            sql, refusal, target = attack_sql(name, folder, oid)
            assert refusal in one_line_error(lambda: run_on(engine, sql))
            assert not target.exists() and list(folder.iterdir()) == []
        assert footprint(owner) == before


def available_extensions() -> set[str]:
    engine = create_engine(sqlalchemy_url(f"{SERVER}/postgres"))
    with engine.connect() as connection:
        names = set(connection.exec_driver_sql(
            "SELECT name FROM pg_available_extensions WHERE name IN ('dblink', 'postgres_fdw')").scalars())
    engine.dispose()
    return names


class TestExtensionsThatReachAnotherSessionAreNoWayOut:
    """dblink and postgres_fdw, installed in the store by its owner (the tests' server ships both): a reader's
    connection through them to the same server as postgres needs a password, which the reader has not."""

    @pytest.fixture(scope="class")
    def with_extensions(self):
        missing = {"dblink", "postgres_fdw"} - available_extensions()
        if missing:
            pytest.skip(f"not installed on this server: {', '.join(sorted(missing))}")
        with throwaway_database() as url:
            owner = sqlalchemy_url(url)
            engine = create_engine(owner)
            with engine.begin() as connection:
                for statement in (
                        "CREATE EXTENSION dblink", "CREATE EXTENSION postgres_fdw",
                        "CREATE SERVER elsewhere FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host '127.0.0.1', "
                        f"dbname '{make_url(owner).database}')",
                        "CREATE USER MAPPING FOR PUBLIC SERVER elsewhere OPTIONS (user 'postgres')",
                        "CREATE FOREIGN TABLE remote_results (id int) SERVER elsewhere OPTIONS (table_name 'results')"):
                    connection.exec_driver_sql(statement)
            engine.dispose()
            yield owner

    @pytest.mark.parametrize("sql, refusal", [
        ("SELECT * FROM dblink('host=127.0.0.1 user=postgres dbname=postgres', "
         "'COPY pg_authid TO ''{file}''') AS t(x text)", "password is required"),
        ("SELECT dblink_connect('host=127.0.0.1 user=postgres dbname=postgres')", "password is required"),
        ("SELECT dblink_connect_u('host=127.0.0.1 user=postgres dbname=postgres')",
         "permission denied for function dblink_connect_u"),
        ("SELECT count(*) FROM remote_results", "password is required"),
        ("CREATE SERVER mine FOREIGN DATA WRAPPER postgres_fdw", NOT_A_QUERY),
    ])
    def test_the_reader_cannot_connect_through_them(self, with_extensions, run_cli, clean_env, sql, refusal):
        before = footprint(with_extensions)
        with target_folder() as folder:
            target = folder / "stolen"
            code, _, stderr = run_cli("sql", sql.format(file=target), "--db", with_extensions)
            assert code == 2 and refusal in stderr and len(stderr.strip().splitlines()) == 1, stderr
            assert not target.exists()
        assert footprint(with_extensions) == before


class TestRunawayQueries:
    def test_pg_sleep_is_cut_by_the_timeout_of_requestflow_sql(self, store, run_cli, clean_env):
        owner, _ = store
        code, _, stderr = run_cli("sql", "SELECT pg_sleep(60)", "--timeout", "0.5", "--db", owner)
        assert code == 2 and "longer than the statement timeout of 0.5 s and was cancelled" in stderr
        clean_env.setenv(roles.SQL_TIMEOUT_ENV, "0.5")
        code, _, stderr = run_cli("sql", "SELECT pg_sleep(60)", "--db", owner)
        assert code == 2 and "statement timeout of 0.5 s" in stderr

    def test_pg_sleep_is_cut_by_the_timeout_of_the_page(self, store, clean_env):
        owner, _ = store
        clean_env.setenv("AIRFLOW_CONN_REQUESTFLOW_RESULTS", owner)
        clean_env.setenv(roles.PAGE_TIMEOUT_ENV, "0.5")
        with page_engine() as engine:
            assert "canceling statement due to statement timeout" in one_line_error(
                lambda: run_on(engine, "SELECT pg_sleep(60)"))

    def test_a_timeout_that_is_not_a_number_of_seconds_is_refused(self, store, run_cli, clean_env):
        owner, _ = store
        clean_env.setenv(roles.SQL_TIMEOUT_ENV, "soon")
        code, _, stderr = run_cli("sql", "SELECT 1", "--db", owner)
        assert code == 2 and "$REQUESTFLOW_SQL_TIMEOUT must be a number of seconds" in stderr


class TestTheRoleIsTheBoundaryForALoginThatIsNotASuperuser:
    """Below the statement check (the driver's own cursor), as a login that is a member of the roles: once the
    transaction has switched to requestflow_reader, nothing climbs back above what that login may do."""

    @pytest.mark.parametrize("role, sql, refusal", [
        (roles.READER, "SET ROLE postgres", "permission denied to set role"),
        (roles.READER, "SET SESSION AUTHORIZATION postgres", "permission denied to set session authorization"),
        (roles.READER, "SELECT set_config('role', 'postgres', true)", "permission denied for function set_config"),
        (roles.READER, "COPY results TO '/tmp/rf-never-written'", "COPY to a file"),
        (roles.READER, "COPY results TO PROGRAM 'true'", "COPY to or from an external program"),
        (roles.READER, "DO $$ BEGIN EXECUTE 'SET ROLE postgres'; END $$", "permission denied to set role"),
        (roles.READER, "SELECT pg_read_file('/etc/hostname')", "permission denied for function pg_read_file"),
        # the writer's transactions are not read-only: its privileges alone refuse
        (roles.WRITER, "CREATE TEMP TABLE t (x int)", "permission denied to create temporary tables"),
        (roles.WRITER, "CREATE TABLE t (x int)", "permission denied for schema public"),
        (roles.WRITER, "COPY results FROM PROGRAM 'true'", "COPY to or from an external program"),
        (roles.WRITER, "SELECT lo_from_bytea(0, 'x')", "permission denied for function lo_from_bytea"),
        (roles.WRITER, "SET ROLE postgres", "permission denied to set role"),
    ])
    def test_the_role_refuses_the_climb(self, store, role, sql, refusal):
        owner, _ = store
        before = footprint(owner)
        with login(roles.READER, roles.WRITER) as name:
            engine = (roles.reader_engine(owner, (as_login(owner, name), "test"), None) if role == roles.READER
                      else roles.writer_engine(as_login(owner, name)))
            with engine.connect() as connection:
                connection.begin()
                cursor = connection.connection.driver_connection.cursor()
                assert cursor.execute("SELECT current_user").fetchone() == (role,)
                with pytest.raises(psycopg.Error) as refused:
                    cursor.execute(sql)
                assert refusal in str(refused.value)
            engine.dispose()
        assert footprint(owner) == before

    def test_after_reset_role_the_login_itself_reads_nothing(self, store):
        owner, _ = store
        with login(roles.READER, roles.WRITER) as name:
            reader = roles.reader_engine(owner, (as_login(owner, name), "test"), None)
            with reader.connect() as connection:
                connection.begin()
                cursor = connection.connection.driver_connection.cursor()
                cursor.execute("RESET ROLE")
                assert cursor.execute("SELECT current_user").fetchone() == (name,)
                with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for table results"):
                    cursor.execute("SELECT count(*) FROM results")
            reader.dispose()


class TestALoginThatCannotSwitchRoles:
    """The operator gave requestflow a login that is not a member of the roles (a managed PostgreSQL)."""

    @pytest.fixture
    def outsider(self, store):
        owner, _ = store
        with login() as name:
            admin = create_engine(owner)
            with admin.begin() as connection:  # enough to see that the schema is at the head, nothing else
                connection.exec_driver_sql(f"GRANT SELECT ON alembic_version TO {name}")
            yield as_login(owner, name), name
            with admin.begin() as connection:
                connection.exec_driver_sql(f"REVOKE ALL ON alembic_version FROM {name}")
            admin.dispose()

    def test_reads_are_refused_with_how_to_set_it_up_never_run_as_the_login(self, outsider, run_cli, clean_env):
        url, name = outsider
        code, stdout, stderr = run_cli("scoreboard", "--db", url)
        assert code == 2 and stdout == "" and len(stderr.strip().splitlines()) == 1
        for words in (f"the login {name} cannot act as requestflow_reader and no reader URL is set",
                      f"GRANT requestflow_reader TO {name}", "--db-reader", roles.READER_ENV,
                      "requestflow_results_reader", "docs/security.md"):
            assert words in stderr

    def test_writes_are_refused_with_how_to_set_it_up(self, outsider, run_cli, clean_env):
        url, name = outsider
        code, _, stderr = run_cli("board", "firefly", "--price-usd", "1", "--db", url)
        assert code == 2 and f"the login {name} cannot act as requestflow_writer" in stderr

    @pytest.mark.parametrize("how", ["--db-reader", roles.READER_ENV, "AIRFLOW_CONN_REQUESTFLOW_RESULTS_READER"])
    def test_a_reader_url_is_used_instead(self, store, outsider, run_cli, clean_env, how):
        owner, _ = store
        url, _ = outsider
        with login(roles.READER) as reader_name:
            reader = as_login(owner, reader_name)
            extra = ["--db-reader", reader] if how == "--db-reader" else []
            if not extra:
                clean_env.setenv(how, reader)
            code, stdout, _ = run_cli("sql", "SELECT session_user, current_user, count(*) FROM scoreboard "
                                             "GROUP BY 1, 2", "--format", "csv", "--db", url, *extra)
            assert code == 0 and stdout.splitlines()[1] == f"{reader_name},requestflow_reader,{len(FEW_SEEDS)}"

    def test_a_reader_url_whose_login_is_not_a_reader_is_refused(self, store, outsider, run_cli, clean_env):
        owner, _ = store
        url, name = outsider
        code, _, stderr = run_cli("scoreboard", "--db", url, "--db-reader", url)
        assert code == 2 and f"the reader URL (--db-reader) logs in as {name}, which cannot act as " \
                              "requestflow_reader" in stderr

    def test_the_page_says_so_as_a_503(self, store, outsider, clean_env, monkeypatch):
        from tests.scoreboard_app import logged_in_client

        url, name = outsider
        clean_env.setenv("AIRFLOW_CONN_REQUESTFLOW_RESULTS", url)
        with page_engine() as engine, logged_in_client(monkeypatch, engine) as client:
            response = client.get("/scoreboard/")
        assert response.status_code == 503 and f"the login {name} cannot act as requestflow_reader" in response.text


class TestTheFeaturesWorkUnderTheRoles:
    def test_the_page_shows_the_scoreboard_through_the_reader(self, store, clean_env, monkeypatch):
        from tests.scoreboard_app import logged_in_client

        owner, _ = store
        clean_env.setenv("AIRFLOW_CONN_REQUESTFLOW_RESULTS", owner)
        with page_engine() as engine, logged_in_client(monkeypatch, engine) as client:
            response = client.get("/scoreboard/")
            data = client.get("/scoreboard/data.json", accept="application/json")
        assert response.status_code == 200 and "mobilenet-v1-0.25-128" in response.text
        assert data.status_code == 200 and '"rows"' in data.text

    def test_the_cli_reads_and_writes(self, store, run_cli, clean_env, tmp_path):
        owner, _ = store
        assert run_cli("scoreboard", "--format", "csv", "--db", owner)[0] == 0
        query = ("SELECT DISTINCT cost_per_million_images_usd FROM scoreboard WHERE board = 'hikey960' "
                 "AND latency_median_s IS NOT NULL ORDER BY 1")
        before = run_cli("sql", query, "--format", "csv", "--db", owner)[1]
        assert run_cli("board", "hikey960", "--price-usd", "478", "--db", owner)[0] == 0  # UPDATE, REFRESH: writer
        after = run_cli("sql", query, "--format", "csv", "--db", owner)[1]
        assert len(before.splitlines()) == len(after.splitlines()) > 2 and before != after
        assert run_cli("plot", "--out", tmp_path / "p.svg", "--db", owner)[0] == 0
        assert run_cli("export", tmp_path / "a.zip", "--db", owner)[0] == 0
        assert run_cli("regressions", "--db", owner)[0] == 0


class TestAnUpgradeOfAStoreMadeBeforeTheRoles:
    def test_it_makes_and_uses_the_roles_and_keeps_every_row(self, models_dir, run_cli, clean_env):
        with throwaway_database(schema=False) as url:
            owner = sqlalchemy_url(url)
            upgrade(owner, revision="0010")
            raw = create_engine(owner)
            seed_store(raw, models_dir, FEW_SEEDS)  # as before the roles: the owner's login
            raw.dispose()
            before = footprint(owner)
            code, stdout, _ = run_cli("db", "upgrade", "--db", owner)
            assert code == 0
            after = footprint(owner)
            assert after["rows"] == {**before["rows"], "alembic_version": 1} and after["large_objects"] == 0
            code, stdout, _ = run_cli("sql", "SELECT current_user, count(*) FROM scoreboard GROUP BY 1", "--format",
                                      "csv", "--db", owner)
            assert code == 0 and stdout.splitlines()[1] == f"requestflow_reader,{len(FEW_SEEDS)}"
            assert "permission denied for function pg_read_file" in run_cli(
                "sql", "SELECT pg_read_file('/etc/hostname')", "--db", owner)[2]
            assert run_cli("board", "hikey960", "--peak-power-w", "5", "--db", owner)[0] == 0

    def test_down_to_0010_gives_public_its_privileges_back_and_up_again_keeps_the_rows(self, store):
        from alembic import command

        from requestflow.results.database import alembic_config

        with throwaway_database() as url:
            owner = sqlalchemy_url(url)
            engine = create_engine(owner)
            with engine.begin() as connection:
                command.downgrade(alembic_config(owner, connection), "0010")
            with engine.connect() as connection:
                assert connection.execute(text(
                    "SELECT has_function_privilege('public', 'set_config(text, text, boolean)', 'EXECUTE'), "
                    "has_database_privilege('public', current_database(), 'TEMP'), "
                    "has_function_privilege('public', 'lo_export(oid, text)', 'EXECUTE'), "
                    "to_regprocedure('refresh_scoreboard()') IS NULL")).one() == (True, True, False, True)
            upgrade(owner)
            with engine.connect() as connection:
                assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one() \
                    == head_revision()
            engine.dispose()


class TestRolesAreTheServersAndDatabasesComeAndGo:
    def test_two_migrations_creating_the_same_role_at_once_both_succeed(self):
        """The second CREATE ROLE waits for the first transaction, then finds the name taken: caught, not an
        error. The first is held open until the second is seen waiting on it."""
        from requestflow.results.role_sql import ensure_role_sql

        name = f"rf_race_{uuid.uuid4().hex[:10]}"
        admin_url = sqlalchemy_url(f"{SERVER}/postgres")
        first, second = create_engine(admin_url), create_engine(admin_url)
        errors, done = [], threading.Event()
        try:
            with first.connect() as a:
                a.exec_driver_sql(ensure_role_sql(name))  # created, not committed
                first_pid = a.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()

                def other():
                    try:
                        with second.begin() as b:
                            b.exec_driver_sql(ensure_role_sql(name))
                    except Exception as exc:
                        errors.append(exc)
                    done.set()

                thread = threading.Thread(target=other)
                thread.start()
                watcher = create_engine(admin_url)
                with watcher.connect() as w:
                    while not w.exec_driver_sql(
                            f"SELECT count(*) FROM pg_stat_activity WHERE {first_pid} = ANY(pg_blocking_pids(pid))"
                    ).scalar_one():
                        assert not done.wait(0.05), "the second CREATE ROLE did not wait for the first"
                watcher.dispose()
                a.commit()
            thread.join()
            assert errors == []
        finally:
            with first.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
                c.exec_driver_sql(f"DROP ROLE IF EXISTS {name}")
            first.dispose()
            second.dispose()

    def test_several_databases_migrate_at_once(self):
        """Three ``requestflow db upgrade`` processes, each on its own new database of the one server."""
        import subprocess
        import sys

        with contextlib.ExitStack() as stack:
            urls = [stack.enter_context(throwaway_database(schema=False)) for _ in range(3)]
            processes = [subprocess.Popen([sys.executable, "-m", "requestflow.cli", "db", "upgrade", "--db", url],
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                         for url in urls]
            outputs = [(process.wait(), process.stdout.read()) for process in processes]
            assert [code for code, _ in outputs] == [0, 0, 0], outputs
            for url in urls:
                engine = create_engine(sqlalchemy_url(url))
                with engine.connect() as connection:
                    assert connection.exec_driver_sql(
                        "SELECT has_table_privilege('requestflow_reader', 'results', 'SELECT')").scalar_one()
                engine.dispose()


class TestTheStatementCheck:
    @pytest.mark.parametrize("sql", [
        "SELECT 1", "  (SELECT 1) UNION SELECT 2", "with x as (select 1) select * from x", "VALUES (1)",
        "TABLE results",
        "SHOW statement_timeout", "EXPLAIN SELECT 1", "/* a /* nested */ comment */ SELECT 1", "-- a comment\nSELECT 1",
        "SELECT ';' AS semicolon", "SELECT 'it''s; fine'", "SELECT E'\\'; RESET ROLE'", "SELECT $$;$$, $t$ ; $t$",
        'SELECT 1 AS ";"', "SELECT 1;", "SELECT 1 ; -- done", "SET TRANSACTION READ ONLY",
        "SAVEPOINT sa_savepoint_1", "RELEASE SAVEPOINT sa_savepoint_1", "ROLLBACK TO SAVEPOINT sa_savepoint_1",
        "DELETE FROM samples",  # a data change: the read-only transaction and the privileges refuse it
    ])
    def test_queries_pass(self, sql):
        roles.check_statement(sql)

    @pytest.mark.parametrize("sql", [
        "SET ROLE postgres", "set local role postgres", "RESET ALL", "DO $$ BEGIN END $$", "COPY results TO STDOUT",
        "CREATE TEMP TABLE t (x int)", "LOAD 'plpgsql'", "PREPARE p AS SELECT 1", "DISCARD ALL", "CALL p()",
        "SET TRANSACTION READ WRITE", "SELECT 1; SELECT 2", "SELECT 'a'; RESET ROLE", "SELECT $x$ $x$; RESET ROLE",
        "SELECT E'\\''; RESET ROLE", "/* SELECT */ RESET ROLE", "(RESET ROLE)", "COMMIT", "ROLLBACK", "BEGIN",
        "END", "ABORT",
    ])
    def test_anything_else_is_refused_with_one_line(self, sql):
        with pytest.raises(roles.StatementRefused) as refused:
            roles.check_statement(sql)
        assert "\n" not in str(refused.value)

    def test_read_only_runs_the_check_on_any_engine(self, store):
        owner, _ = store
        raw = create_engine(owner)
        with pytest.raises(roles.StatementRefused, match="RESET ROLE"):
            read_only(raw, "RESET ROLE")
        raw.dispose()
