"""Building the Arm Compute Library on a board (``ArmclBuildOperator``), its provenance in the results store.

Once per board and spec, inside the board's one-slot pool (never per point): the source (``operators.armcl_sources``)
crosses the link once (``data_push.push_data``: content-addressed, checked on arrival), the build runs detached on the
board (``requestflow/board/armcl.py`` through ``board_jobs``: its output in the task log, stopped by ``on_kill``)
and is cached there by its key (source sha256 + full options + compiler): a second run reuses it in seconds. The
provenance goes into ``library_builds`` (``requestflow.results.builds``). A failed build fails the task with the
compiler's or scons's error, without retries, and stores every point that needed it in ``point_failures``.

In a sweep (``dags/factory.py``) each board's task group lists the builds its points name (``NEEDED_TASK``,
``needed_builds``) and builds them with one mapped task (``BUILD_TASK``, an instance per build, named after it in
the UI): a sweep without armcl points expands it to nothing and starts no build task. ``sweep_builds`` is how the
gate, the run tasks and the summary find what each build returned.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import tempfile
import time
from pathlib import Path

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from operators.armcl_spec import ArmclSpec, options_for, provisioned, resolve_source
from operators.board_hook import board_for, last_said
from requestflow.errors import UserError
from requestflow.results.database import CONN_ID

# a sweep's tasks in each board's group: the list of the builds its points need (the mapped task's expansion:
# ``{"build_name", "spec"}`` each, in name order), and the mapped build task (map index i: the list's i-th build)
NEEDED_TASK, BUILD_TASK = "armcl_needed", "armcl_build"


class ArmclBuildFailed(AirflowFailException):
    """The build failed in a way retrying cannot help: a compiler or scons error, a board without compiler or
    scons, a spec the board cannot build, a source whose checksum does not match. Points that needed the build are
    stored failed with this error."""


class ArmclBuildOperator(BaseOperator):
    """Build ArmCL on one board for one spec (or reuse the board's cached build) and record its provenance.

    Put it in the board's pool, once per board and spec, before the points that need the library; ``points``
    (templated) are those points: when the build fails for good they are stored in ``point_failures`` with its
    reason. With ``build_name`` (a sweep's mapped build task: ``needed_builds``), only the points whose
    ``armcl_build`` is that name count, and the task skips itself when there are none. Then (unless
    ``program=False``) it compiles requestflow's MobileNet program against the build (once per build and program
    source), so the points only run it. Returns
    (XCom) the build's key and folder on the board, whether it was reused, its version, build time, library size
    and the program.
    ``cache_dir`` is the board's build cache (default: the board's ``armcl_cache`` setting, else
    ``<work_dir>/armcl/builds``); ``source_cache_dir`` the controller's source cache (default
    ``$REQUESTFLOW_CACHE/armcl``).
    """

    template_fields = ("points",)
    ui_color = "#fcf3cf"

    def __init__(self, *, board_conn_id: str, spec: ArmclSpec | dict, points: list[dict] | None = None,
                 build_name: str | None = None, program: bool = True, results_conn_id: str = CONN_ID,
                 cache_dir: str | None = None, source_cache_dir: str | None = None, build_timeout_s: float = 6 * 3600,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.board_conn_id = board_conn_id
        self.spec = ArmclSpec.from_value(spec)  # a bad option fails here, when the DAG is parsed
        self.provision = not isinstance(spec, dict) or provisioned(spec)  # false: only for the points naming it
        self.points = points
        self.build_name = build_name
        self.program = program
        self.results_conn_id = results_conn_id
        self.cache_dir = cache_dir
        self.source_cache_dir = source_cache_dir
        self.build_timeout_s = build_timeout_s
        self._board = None
        self._job_dir: str | None = None

    def execute(self, context) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from operators.results_hook import fail_points_on_last_attempt

        if self.build_name is not None:  # a sweep's build: only for the points that name it
            self.points = [p for p in self.points or [] if p.get("armcl_build") == self.build_name]
            if not self.points:
                raise AirflowSkipException(f"no point of this sweep on board {self.board_conn_id} needs the ArmCL "
                                           f"build {self.build_name}")
        elif not self.points and not self.provision:  # board_provision: an on-demand build (config/armcl.json)
            raise AirflowSkipException(f"ArmCL {self.spec.version} is built on demand (provision: false): by the "
                                       "sweeps whose points name it, not by board_provision")
        try:
            try:
                return self._build()
            except UserError as exc:  # a spec the board cannot build, a checksum that does not match: final
                raise ArmclBuildFailed(f"board {self.board_conn_id}: {exc}") from exc
        except Exception as exc:
            fail_points_on_last_attempt(self, context, self.points, exc)
            raise
        finally:
            if self._board is not None:
                self._board.close()

    def _build(self) -> dict:
        from operators import board_jobs, deploy
        from operators.build_tools import ensure_build_tools
        from operators.data_push import push_data
        from operators.provision import board_cli
        from operators.results_hook import ResultsHook
        from requestflow.results.builds import record_build

        spec = self.spec
        board = self._board = board_for(self.board_conn_id)
        if spec.source.kind == "debian-binary" or spec.cross:
            return self._shipped(board)
        name = board.settings.name
        # scons and a compiler (installed where the board's install_packages allows it), else a refusal naming them
        ensure_build_tools(board, spec, what=f"ArmCL {spec.version}'s build", log=self.log.info)
        tarball = resolve_source(spec, self.source_cache_dir, log=self.log.info)
        python, work = deploy.runner_location(board)
        snapshot = board_cli(board, ["platform", "--root", board.settings.sysfs_root])
        probe = _board_json(board, [python, "-m", "requestflow.board.armcl", "probe", "--root",
                                    board.settings.sysfs_root])
        plan = options_for({**snapshot, "cpu_features": probe.get("cpu_features")}, spec)
        self.log.info("board %s: ArmCL %s from %s, %d job(s): %s", name, spec.version,
                      tarball.origin if tarball else f"{spec.source.location} {spec.source.tag}", plan.jobs,
                      " ".join(f"{k}={v}" for k, v in plan.options.items()))
        if tarball is not None:
            data = push_data(board, [(tarball.path, f"armcl-sources/{tarball.path.name}")], log=self.log.info)
            source_args = ["--source", f"{data}/armcl-sources/{tarball.path.name}", "--sha256", tarball.sha256,
                           "--origin", tarball.origin]
            source_id = tarball.source_id
        else:
            source_args = ["--git", spec.source.location, "--tag", spec.source.tag,
                           "--origin", f"git {spec.source.location} {spec.source.tag}"]
            source_id = f"git {spec.source.location} {spec.source.tag}"
        cache = self.cache_dir or board.settings.armcl_cache or f"{work}/armcl/builds"
        slug = hashlib.sha256(json.dumps([source_id, plan.options], sort_keys=True).encode()).hexdigest()[:16]
        self._job_dir = job_dir = f"{work}/armcl/jobs/{slug}"
        command = [python, "-m", "requestflow.board.armcl", "build", *source_args, "--version", spec.version,
                   "--options", json.dumps(plan.options, sort_keys=True), "--jobs", str(plan.jobs),
                   "--cache", cache, "--result", f"{job_dir}/result.json"]
        lines: list[str] = []

        def show(line: str) -> None:
            lines.append(line)
            del lines[:-50]
            self.log.info("[%s] %s", name, line)

        started = time.monotonic()
        board_jobs.start(board, job_dir, " ".join(shlex.quote(a) for a in command))
        code = board_jobs.wait(board, job_dir, show, poll_s=2.0, timeout_s=self.build_timeout_s)
        outcome = _read_result(board, f"{job_dir}/result.json")
        if code != 0:
            reason = (outcome or {}).get("reason") or (f"stopped (exit {code})" if code in (137, 143) else
                                                       lines[-1] if lines else f"exit {code}")
            what = "refused the build" if code == 2 else f"ArmCL {spec.version} build failed"
            raise ArmclBuildFailed(f"board {name}: {what}: {reason} (log: {job_dir}/stdout.log)")
        if not outcome or outcome.get("status") != "ok":
            raise RuntimeError(f"board {name}: the ArmCL build ended without its provenance ({job_dir}/result.json)")
        program = self._compile_program(board, python, outcome["path"]) if self.program else None
        with ResultsHook(self.results_conn_id).engine() as engine:
            build_id = record_build(engine, outcome, board=name)
        self.log.info("board %s: ArmCL %s build %s %s (%.1f s here; build time %.0f s, %.1f MB of libraries), "
                      "library_builds id %d", name, spec.version, outcome["key"][:16],
                      "reused from the board's cache" if outcome.get("reused") else "built",
                      time.monotonic() - started, outcome["build_seconds"], outcome["library_bytes"] / 1e6, build_id)
        return {"board": name, "key": outcome["key"], "reused": bool(outcome.get("reused")),
                "version": outcome.get("version"), "source_version": outcome.get("source_version"),
                "build_seconds": outcome["build_seconds"], "library_bytes": outcome["library_bytes"],
                "path": outcome.get("path"), "library_build_id": build_id, "program": program}

    def _shipped(self, board) -> dict:
        """A build made on the controller for an aarch64 board: ``source: debian-binary`` (Debian's prebuilt
        packages for the board's architecture, ``operators.arm64_debian``) or ``cross: true`` (the verified source
        cross-built in the toolchain environment, ``operators.arm64_cross``), with the program cross-compiled for
        the folder's place on the board, shipped as one tar (content-addressed, checked on arrival), unpacked into
        the board's build cache and its ``SHA256SUMS`` checked there (also on reuse). Nothing compiles on the
        board."""
        from airflow.sdk.exceptions import AirflowSkipException

        from operators import deploy
        from operators.arm64_cross import cross_build, cross_options
        from operators.arm64_debian import board_shipment, debian_binary_build
        from operators.arm64_toolchain import toolchain
        from operators.armcl_spec import MACHINES
        from operators.blob_store import shell_path
        from operators.data_push import push_data
        from operators.provision import board_cli
        from operators.results_hook import ResultsHook
        from requestflow.results.builds import record_build

        spec, name, log = self.spec, board.settings.name, self.log.info
        started = time.monotonic()
        python, work = deploy.runner_location(board)
        arch = str(board_cli(board, ["platform", "--root", board.settings.sysfs_root]).get("arch") or "unknown")
        try:
            if spec.cross:
                cross_options(spec, arch)
            elif MACHINES.get(arch.lower()) != "aarch64":
                raise UserError(f"ArmCL from Debian's binaries is made for aarch64 boards (arm64 packages), not for "
                                f"a {arch} board")
        except UserError as exc:
            if not self.points:  # board_provision: a build this board has no use for
                raise AirflowSkipException(f"board {name}: {exc}") from None
            raise
        chain = toolchain(log=log)
        if spec.cross:
            build, cached = cross_build(spec, arch, source_cache_dir=self.source_cache_dir, chain=chain,
                                        timeout_s=self.build_timeout_s, log=log)
            origin = f"cross-built from source ({'reused' if cached else 'built'} on the controller)"
        else:
            build = debian_binary_build(suite=spec.source.suite, log=log)
            origin = f"from Debian's {spec.source.suite} arm64 packages"
        provenance = json.loads((build / "build.json").read_text())
        if provenance["version"] != spec.version:
            raise UserError(f"the {'source' if spec.cross else f'Debian {spec.source.suite} build'} is ArmCL "
                            f"{provenance['version']}, not {spec.version}")
        cache = shell_path(self.cache_dir or board.settings.armcl_cache or f"{work}/armcl/builds")
        found = board.run(f"mkdir -p {cache} && cd {cache} && pwd -P", warn=True)
        if found.return_code != 0:
            raise RuntimeError(f"board {name}: cannot use the ArmCL build cache {cache}: {found.stderr.strip()}")
        at = f"{found.stdout.strip().splitlines()[-1]}/{provenance['key']}"
        tar, shipped = board_shipment(build, chain, at, log=log)
        final, sha = shlex.quote(at), shipped["sha256"]
        check = f'cd {final} 2>/dev/null && [ "$(cat .shipment)" = {sha} ] && sha256sum -c --quiet --strict SHA256SUMS'
        reused = board.run(check, warn=True, timeout=900).return_code == 0
        if not reused:
            data = push_data(board, [(tar, f"armcl-builds/{tar.name}")], log=log)
            script = (f'set -e; staged=$(mktemp -d {final}.XXXXXX); trap \'rm -rf "$staged"\' EXIT; '
                      f'tar -xf {shlex.quote(f"{data}/armcl-builds/{tar.name}")} -C "$staged"; '
                      f'(cd "$staged" && sha256sum -c --quiet --strict SHA256SUMS); echo {sha} > "$staged/.shipment"; '
                      f'rm -rf {final}; mv "$staged" {final}; trap - EXIT')
            result = board.run(script, warn=True, timeout=900)
            if result.return_code != 0:
                raise RuntimeError(f"board {name}: unpacking the ArmCL build {provenance['key'][:16]} failed: "
                                   f"{last_said(result)}")
        program = self._compile_program(board, python, at) if self.program else None
        provenance = {**provenance, "path": at, "shipped": {"tar_sha256": sha, "program": shipped["program"]}}
        with ResultsHook(self.results_conn_id).engine() as engine:
            build_id = record_build(engine, provenance, board=name)
        log(f"board {name}: ArmCL {provenance['version']} {origin}, build "
            f"{provenance['key'][:16]} {'reused on the board' if reused else 'shipped'} "
            f"({time.monotonic() - started:.1f} s), library_builds id {build_id}")
        return {"board": name, "key": provenance["key"], "reused": reused, "version": provenance["version"],
                "source_version": provenance.get("source_version"), "build_seconds": provenance["build_seconds"],
                "library_bytes": provenance["library_bytes"], "path": at, "library_build_id": build_id,
                "program": program}

    def _compile_program(self, board, python: str, build_path: str) -> dict:
        """requestflow's MobileNet program (native/mobilenet) against the build, once per build and program source:
        the points only run it."""
        name = board.settings.name
        command = [python, "-m", "requestflow.board.armcl_program", "compile", "--build", build_path]
        result = board.run(" ".join(shlex.quote(a) for a in command), warn=True, timeout=900)
        if result.return_code != 0:
            reason = last_said(result)
            raise ArmclBuildFailed(f"board {name}: the ArmCL MobileNet program did not compile against "
                                   f"{Path(build_path).name[:16]}: {reason.removeprefix('error: ')}")
        program = json.loads(result.stdout.strip().splitlines()[-1])
        self.log.info("board %s: MobileNet program %s (%s)", name, program["path"],
                      "reused" if program.get("reused") else f"compiled in {program.get('compile_s')} s")
        return {key: program.get(key) for key in ("path", "sha256", "compile_s", "reused")}

    def on_kill(self) -> None:
        from operators.arm64_cross import stop_all

        stop_all(self.log.info)  # a cross build on the controller (cross: true), if one is running
        if self._board is not None and self._job_dir is not None:
            from operators import board_jobs

            self.log.info("stopping the ArmCL build on board %s", self._board.settings.name)
            board_jobs.kill(self._board, self._job_dir)


def needed_builds(points: list[dict] | None, specs: dict[str, dict]) -> list[dict]:
    """The builds ``points`` name, in name order, as the mapped build task's expansion (``build_name`` and
    ``spec`` of ``ArmclBuildOperator``); a name ``specs`` (``config/armcl.json``) lacks is left out: its points'
    run tasks fail naming it. Empty for a sweep without armcl points: no build task starts."""
    names = sorted({p["armcl_build"] for p in points or [] if p.get("armcl_build")})
    return [{"build_name": name, "spec": specs[name]} for name in names if name in specs]


def sweep_builds(ti, group: str) -> dict[str, dict | None]:
    """name -> what the sweep's build of that name returned (its XCom: ``key``, ``path``, ...) in task group
    ``group`` (``board_<name>``), None for one that returned nothing (failed, or did not run), for every build the
    board's points need (``NEEDED_TASK``'s list, whose order is the mapped ``BUILD_TASK``'s map indexes)."""
    needed = ti.xcom_pull(task_ids=f"{group}.{NEEDED_TASK}") or []
    return {build["build_name"]: ti.xcom_pull(task_ids=f"{group}.{BUILD_TASK}", map_indexes=index)
            for index, build in enumerate(needed)}


def _board_json(board, command: list[str]) -> dict:
    result = board.run(" ".join(shlex.quote(a) for a in command), warn=True, timeout=120)
    if result.return_code != 0:
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"board {board.settings.name}: `{' '.join(command[1:4])}` exited {result.return_code}: "
                           f"{last[0]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _read_result(board, remote: str) -> dict | None:
    with tempfile.TemporaryDirectory(prefix="rf-armcl-") as folder:
        local = Path(folder) / "result.json"
        try:
            board.get(remote, str(local))
            return json.loads(local.read_text())
        except (OSError, ValueError):
            return None
