"""A board's settings, read from an Airflow Connection by name: an allowlist, never a passthrough.

People who edit Connections must not control worker behaviour beyond these fields (Airflow's providers/AGENTS.md):
the Fabric connection is built from the fields below and nothing else. An unknown non-empty extra is an error
naming it, so that a typo ("keyfile") is not silently ignored.

Connection (conn type ``ssh``): ``host``, ``login`` (default root), ``port`` (default 22), ``password`` (the key's
passphrase when a key is given, else a login password). Extras:

=========================  ==========================================================================================
``key_file``               path of the private key on the Airflow worker
``private_key``            the private key itself (PEM / OpenSSH text)
``host_key``               the board's public host key (``ssh-ed25519 AAAA...``): the only key accepted
``known_hosts``            a known_hosts file to check the host key against
``no_host_key_check``      true to accept any host key (off by default: an unknown key is refused)
``python``                 the board's Python (default ``python3``)
``work_dir``               the board's work dir (default ``~/requestflow``); the runner reads only there
``sudo``                   true when clock pinning may use sudo
``install_packages``       true lets an ArmCL build install the build tools the board lacks (scons, g++, ccache, the
                           OpenCL loader and headers) with its package manager, as root or through ``sudo -n`` (never
                           a password); without it a build refuses, naming the packages (``operators.build_tools``)
``sysfs_root``             root of the sysfs tree for clocks (tests point it at a fake tree)
``boot_id_file``           where the board's boot id is read (default ``/proc/sys/kernel/random/boot_id``; tests
                           point it at a file they change to simulate a reboot; ``operators.board_jobs``)
``armcl_cache``            the board's ArmCL build cache (default ``<work_dir>/armcl/builds``)
``emulator``               the emulator the board's runner runs under (``qemu-user``; a name: letters, digits,
                           ``._+-``): provisioning writes it into the runner's venv, so every result of that runner
                           is labelled emulated (as ``$REQUESTFLOW_EMULATED``) even where detection cannot tell
``connect_timeout``        seconds (default 15)
``gc_keep_runners``        runners kept on the board, the current one included (default 2; ``operators.board_gc``)
``gc_keep_days``           days a finished job's folder is kept (default 30)
``price_usd``, ``price_date``, ``service_life_years``, ``peak_power_w``: the scoreboard's cost and energy figures
``power_meter``            the board's power meter for performance points (``requestflow run --power-meter``):
                           ``hwmon[:ROOT]``, ``rapl[:ROOT]``, ``command:CMD`` (a program on the board printing
                           timestamped watts), ``auto`` or ``none``; checked for its form (``power.check_spec``),
                           hwmon/rapl/auto without a ROOT read below ``sysfs_root``. A command comes from here only,
                           never from a trigger form
``power_rate_hz``          the meter's sampling rate (default: the runner's, 200 Hz)
``isolation``              how each point's runner process starts (issue #20): ``fresh`` (``python -m
                           requestflow.cli run``: a new interpreter per point) or ``fork`` (a child of the board's
                           point server, which imported numpy / LiteRT / TensorFlow once:
                           ``requestflow.board.point_server``); default ``$REQUESTFLOW_ISOLATION`` on the controller,
                           else ``fresh``. Recorded in each result (``isolation``)
``site``                   where the board is (default ``default``): every task that touches it goes to the Celery
                           queue of that name, served by a worker near the board (``site_queue``; a name: letters,
                           digits, ``._-``; docs/scale-out.md). Ignored by the LocalExecutor
=========================  ==========================================================================================
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass, field

from requestflow.errors import UserError

SECRET_FIELDS = ("password", "private_key")
EXTRAS = {
    "key_file": str, "private_key": str, "host_key": str, "known_hosts": str, "no_host_key_check": bool,
    "python": str, "work_dir": str, "sudo": bool, "install_packages": bool, "sysfs_root": str, "boot_id_file": str,
    "armcl_cache": str, "emulator": str, "site": str, "power_meter": str, "power_rate_hz": float, "isolation": str,
    "connect_timeout": float, "gc_keep_runners": int, "gc_keep_days": float,
    "price_usd": float, "price_date": str, "service_life_years": float, "peak_power_w": float,
}


def _coerce(name: str, value, kind):
    if kind is bool:
        if isinstance(value, bool):
            return value
        if str(value).strip().lower() in ("true", "1", "yes", "on"):
            return True
        if str(value).strip().lower() in ("false", "0", "no", "off"):
            return False
        raise UserError(f"extra {name!r} must be true or false, got {value!r}")
    if kind is float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise UserError(f"extra {name!r} must be a number, got {value!r}") from None
        if number < 0 or (name in ("service_life_years", "connect_timeout", "power_rate_hz") and number == 0):
            raise UserError(f"extra {name!r} must be positive, got {value!r}")
        return number
    if kind is int:
        try:
            number = int(str(value).strip()) if not isinstance(value, bool) else None
        except ValueError:
            number = None
        if number is None or number < 1:
            raise UserError(f"extra {name!r} must be a whole number >= 1, got {value!r}")
        return number
    if not isinstance(value, str):
        raise UserError(f"extra {name!r} must be text, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class BoardSettings:
    name: str
    host: str
    user: str = "root"
    port: int = 22
    password: str | None = field(default=None, repr=False)
    key_file: str | None = None
    private_key: str | None = field(default=None, repr=False)
    host_key: str | None = None
    known_hosts: str | None = None
    no_host_key_check: bool = False
    python: str = "python3"
    work_dir: str = "~/requestflow"
    sudo: bool = False
    install_packages: bool = False
    sysfs_root: str = "/"
    boot_id_file: str = "/proc/sys/kernel/random/boot_id"
    armcl_cache: str | None = None
    emulator: str | None = None
    connect_timeout: float = 15.0
    gc_keep_runners: int = 2
    gc_keep_days: float = 30.0
    price_usd: float | None = None
    price_date: str | None = None
    service_life_years: float = 3.0
    peak_power_w: float | None = None
    site: str = "default"
    power_meter: str | None = None  # a checked --power-meter spec (power.check_spec)
    power_rate_hz: float | None = None
    isolation: str = field(default_factory=lambda: default_isolation())  # fresh or fork (run_record.ISOLATIONS)

    @classmethod
    def from_connection(cls, conn_id: str, conn) -> BoardSettings:
        """From an Airflow Connection (or anything with host, login, port, password, extra_dejson)."""
        if not conn.host:
            raise UserError(f"board connection {conn_id!r} has no host")
        values: dict = {"name": conn_id, "host": conn.host, "user": conn.login or "root",
                        "port": int(conn.port or 22), "password": conn.password or None}
        extras = conn.extra_dejson or {}
        unknown = sorted(k for k, v in extras.items() if k not in EXTRAS and v not in (None, ""))
        if unknown:
            raise UserError(f"board connection {conn_id!r}: unknown extra {unknown[0]!r}; "
                            f"known: {', '.join(EXTRAS)}")
        for name, kind in EXTRAS.items():
            if extras.get(name) not in (None, ""):
                values[name] = _coerce(name, extras[name], kind)
        if "emulator" in values and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}", values["emulator"]):
            raise UserError(f"board connection {conn_id!r}: emulator must be a name such as qemu-user (letters, "
                            f"digits, ._+-), got {values['emulator']!r}")
        if "site" in values:
            values["site"] = checked_site(conn_id, values["site"])
        if "power_meter" in values:
            values["power_meter"] = checked_power_meter(conn_id, values["power_meter"], values.get("sysfs_root", "/"))
        if "isolation" in values:
            values["isolation"] = checked_isolation(f"board connection {conn_id!r}: isolation", values["isolation"])
        if "price_date" in values:
            try:
                dt.date.fromisoformat(values["price_date"])
            except ValueError:
                raise UserError(f"board connection {conn_id!r}: price_date must be YYYY-MM-DD") from None
        settings = cls(**values)
        if not (settings.key_file or settings.private_key or settings.password):
            raise UserError(f"board connection {conn_id!r} has no credentials: set the extra key_file or "
                            "private_key, or a password")
        if not (settings.host_key or settings.known_hosts or settings.no_host_key_check):
            raise UserError(f"board connection {conn_id!r}: give the board's host_key or a known_hosts file "
                            "(or set no_host_key_check true, which accepts any host)")
        return settings

    def connect_kwargs(self) -> dict:
        """Paramiko's connect() arguments: only this board's key or password, no agent, no ~/.ssh keys."""
        import io

        import paramiko

        kwargs: dict = {"allow_agent": False, "look_for_keys": False}
        if self.private_key:
            kwargs["pkey"] = _load_private_key(paramiko, io.StringIO(self.private_key), self.password, self.name)
        elif self.key_file:
            kwargs["key_filename"] = self.key_file
            if self.password:
                kwargs["passphrase"] = self.password
        elif self.password:
            kwargs["password"] = self.password
        return kwargs


SITE = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"


def checked_site(conn_id: str, site) -> str:
    """A board's site, which names its Celery queue: a name, or UserError naming the board."""
    if not isinstance(site, str) or not re.fullmatch(SITE, site):
        raise UserError(f"board connection {conn_id!r}: site must be a name such as lab-a (letters, digits, ._-), "
                        f"got {site!r}")
    return site


ISOLATION_ENV = "REQUESTFLOW_ISOLATION"  # the controller's default isolation of every board without the extra


def checked_isolation(what: str, value) -> str:
    from requestflow.board.run_record import ISOLATIONS

    if value not in ISOLATIONS:
        raise UserError(f"{what} must be {' or '.join(ISOLATIONS)}, got {value!r}")
    return value


def default_isolation() -> str:
    """``$REQUESTFLOW_ISOLATION`` (checked), else ``fresh``."""
    return checked_isolation(f"${ISOLATION_ENV}", os.environ.get(ISOLATION_ENV) or "fresh")


def checked_power_meter(conn_id: str, spec: str, sysfs_root: str) -> str:
    """A board's power meter spec as the runner takes it, or UserError naming the board."""
    from requestflow.board.power import check_spec

    try:
        return check_spec(spec, sysfs_root)
    except UserError as exc:
        raise UserError(f"board connection {conn_id!r}: {exc}") from None


def site_queue(board: str) -> str:
    """The Celery queue of every task that touches ``board``, chosen at parse time as its pool is: the site named by
    its Connection's extra ``site``; the default queue (Airflow's ``[operators] default_queue``, ``default``) for
    the local board, a board without a site and a board whose Connection is not defined (yet)."""
    from airflow.sdk import BaseHook
    from airflow.sdk.definitions._internal.abstractoperator import DEFAULT_QUEUE
    from airflow.sdk.exceptions import AirflowNotFoundException

    if board == "local":
        return DEFAULT_QUEUE
    try:
        extras = BaseHook.get_connection(board).extra_dejson or {}
    except AirflowNotFoundException:
        return DEFAULT_QUEUE
    site = extras.get("site")
    return DEFAULT_QUEUE if site in (None, "", "default") else checked_site(board, site)


def _load_private_key(paramiko, handle, passphrase, name):
    errors = []
    for key_class in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        handle.seek(0)
        try:
            return key_class.from_private_key(handle, password=passphrase)
        except paramiko.PasswordRequiredException:
            raise UserError(f"board connection {name!r}: the private key needs a passphrase (the password)") from None
        except (paramiko.SSHException, ValueError) as exc:
            errors.append(type(exc).__name__)
    raise UserError(f"board connection {name!r}: private_key is not a readable Ed25519, ECDSA or RSA key")
