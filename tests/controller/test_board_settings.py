"""A board Connection is read by name (allowlist), with clear errors, and never shows its secrets."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from operators.board_settings import BoardSettings, site_queue
from requestflow.errors import UserError

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


@dataclass
class FakeConnection:
    host: str | None = "10.0.0.2"
    login: str | None = "linaro"
    port: int | None = None
    password: str | None = None
    extra_dejson: dict = field(default_factory=lambda: {"key_file": "/keys/hikey", "host_key": HOST_KEY})


class TestReadingABoardConnection:
    def test_takes_the_named_fields_and_defaults(self):
        settings = BoardSettings.from_connection("hikey960", FakeConnection())
        assert (settings.host, settings.user, settings.port) == ("10.0.0.2", "linaro", 22)
        assert settings.key_file == "/keys/hikey" and settings.host_key == HOST_KEY
        assert settings.python == "python3" and settings.work_dir == "~/requestflow"
        assert settings.no_host_key_check is False and settings.service_life_years == 3.0

    def test_coerces_extras_given_as_text_by_the_ui(self):
        conn = FakeConnection(extra_dejson={"key_file": "/k", "host_key": HOST_KEY, "sudo": "true",
                                            "price_usd": "239", "peak_power_w": "12.5", "price_date": "2017-06-01"})
        settings = BoardSettings.from_connection("b", conn)
        assert settings.sudo is True and settings.price_usd == 239.0 and settings.peak_power_w == 12.5

    def test_the_emulator_a_board_runs_under(self):
        conn = FakeConnection(extra_dejson={"key_file": "/k", "host_key": HOST_KEY, "emulator": "qemu-user"})
        assert BoardSettings.from_connection("arm64", conn).emulator == "qemu-user"
        assert BoardSettings.from_connection("b", FakeConnection()).emulator is None

    def test_an_unknown_extra_is_refused_by_name(self):
        conn = FakeConnection(extra_dejson={"keyfile": "/k", "host_key": HOST_KEY})
        with pytest.raises(UserError, match="unknown extra 'keyfile'"):
            BoardSettings.from_connection("b", conn)

    def test_extras_that_would_pass_through_to_paramiko_are_refused(self):
        conn = FakeConnection(extra_dejson={"key_file": "/k", "host_key": HOST_KEY, "sock": "evil",
                                            "disabled_algorithms": {"pubkeys": []}})
        with pytest.raises(UserError, match="unknown extra 'disabled_algorithms'"):
            BoardSettings.from_connection("b", conn)

    @pytest.mark.parametrize("extras, message", [
        ({"key_file": "/k"}, "give the board's host_key or a known_hosts file"),
        ({"host_key": HOST_KEY}, "has no credentials"),
        ({"key_file": "/k", "host_key": HOST_KEY, "sudo": "maybe"}, "'sudo' must be true or false"),
        ({"key_file": "/k", "host_key": HOST_KEY, "peak_power_w": "-3"}, "'peak_power_w' must be positive"),
        ({"key_file": "/k", "host_key": HOST_KEY, "service_life_years": "0"}, "must be positive"),
        ({"key_file": "/k", "host_key": HOST_KEY, "price_date": "last year"}, "price_date must be YYYY-MM-DD"),
        ({"key_file": "/k", "host_key": HOST_KEY, "emulator": "qemu; rm -rf /"}, "emulator must be a name"),
        ({"key_file": "/k", "host_key": HOST_KEY, "site": "lab a"}, "site must be a name"),
    ])
    def test_bad_settings_are_one_clear_error(self, extras, message):
        with pytest.raises(UserError, match=message):
            BoardSettings.from_connection("b", FakeConnection(extra_dejson=extras))

    def test_a_connection_without_host(self):
        with pytest.raises(UserError, match="has no host"):
            BoardSettings.from_connection("b", FakeConnection(host=""))


class TestSecrets:
    def test_never_appear_in_the_settings_repr(self):
        conn = FakeConnection(password="hunter2", extra_dejson={
            "private_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n", "host_key": HOST_KEY})
        text = repr(BoardSettings.from_connection("b", conn))
        assert "hunter2" not in text and "BEGIN OPENSSH" not in text

    def test_the_password_is_the_keys_passphrase_when_a_key_file_is_given(self):
        settings = BoardSettings.from_connection("b", FakeConnection(password="pp"))
        kwargs = settings.connect_kwargs()
        assert kwargs == {"allow_agent": False, "look_for_keys": False, "key_filename": "/keys/hikey",
                          "passphrase": "pp"}

    def test_an_unreadable_private_key_is_a_clear_error_without_its_text(self):
        conn = FakeConnection(extra_dejson={"private_key": "not a key at all", "host_key": HOST_KEY})
        with pytest.raises(UserError, match="private_key is not a readable") as info:
            BoardSettings.from_connection("b", conn).connect_kwargs()
        assert "not a key at all" not in str(info.value)


class TestSites:
    """A board's site names the Celery queue of its tasks (issue #18), read from its Connection at parse time."""

    def test_a_board_names_its_site_and_the_rest_are_at_the_default_site(self, monkeypatch):
        extras = {"key_file": "/k", "host_key": HOST_KEY}
        monkeypatch.setenv("AIRFLOW_CONN_LAB_A_BOARD", _conn_json({**extras, "site": "lab-a"}))
        monkeypatch.setenv("AIRFLOW_CONN_PLAIN_BOARD", _conn_json(extras))
        assert site_queue("lab_a_board") == "lab-a"
        assert site_queue("plain_board") == "default"
        assert site_queue("local") == "default"
        assert site_queue("no_connection_yet") == "default"  # the task fails on it at run time, as before
        conn = FakeConnection(extra_dejson={**extras, "site": "lab-a"})
        assert BoardSettings.from_connection("b", conn).site == "lab-a"
        assert BoardSettings.from_connection("b", FakeConnection()).site == "default"

    def test_a_site_that_is_no_queue_name_is_refused_at_parse_time_naming_the_board(self, monkeypatch):
        monkeypatch.setenv("AIRFLOW_CONN_ODD_BOARD", _conn_json({"key_file": "/k", "host_key": HOST_KEY,
                                                                 "site": "lab a; rm"}))
        with pytest.raises(UserError, match="'odd_board': site must be a name"):
            site_queue("odd_board")


def _conn_json(extras: dict) -> str:
    import json

    return json.dumps({"conn_type": "ssh", "host": "10.0.0.2", "extra": extras})
