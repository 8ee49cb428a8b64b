"""The point in a child the point server (``requestflow.board.point_server``) forked: ``run_child`` makes the child
what a fresh ``python -m requestflow.cli run`` process would be (its own process group, death with the server, the
client's standard streams, working directory, environment, CPU affinity, niceness and umask, a fresh interpreter's
signal dispositions) and runs the point (``run_command``) with ``isolation`` ``fork`` in its document; it never
returns.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import traceback

PR_SET_PDEATHSIG = 1


def run_child(request: dict, fds: list[int], info: dict, sockets: list[socket.socket]) -> None:
    """The point, in the forked child; never returns."""
    code = 70
    try:
        os.setpgid(0, 0)
        _die_with_parent(info["server_pid"])
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for end in sockets:
            end.close()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.umask(request["umask"])
        os.sched_setaffinity(0, request["affinity"])
        try:
            os.setpriority(os.PRIO_PROCESS, 0, request["nice"])
        except OSError:  # lower than the server's: not allowed unprivileged, and nothing to do for a point
            pass
        unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
        sys.stdout.reconfigure(line_buffering=unbuffered or sys.stdout.isatty(), write_through=unbuffered)
        from requestflow.board.run_record import set_isolation

        set_isolation(info)
        sys.argv = ["requestflow", *request["argv"]]
        code = run_command(request["argv"])
    except BaseException:  # noqa: BLE001 - whatever it is, the child must end here, never in the server's loop
        traceback.print_exc()
    finally:
        from requestflow.board.tensorflow_import import exit_now

        exit_now(code)  # as a fresh runner with TensorFlow ends (requestflow.cli)


def run_command(argv: list[str]) -> int:
    """``requestflow run ...`` as the CLI runs it (``requestflow.cli.main``: the same parser of the board's
    commands, one line for bad input, exit 2); its exit status."""
    from requestflow.board import board_commands
    from requestflow.board.tensorflow_import import quiet_tensorflow
    from requestflow.errors import OneLineParser, UserError

    parser = OneLineParser(prog="requestflow")
    board_commands.add_parsers(parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser))
    try:
        args = parser.parse_args(argv)
        quiet_tensorflow()
        return board_commands.COMMANDS[args.command](args, argv)
    except UserError as exc:
        print(f"requestflow: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("requestflow: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1


def _die_with_parent(server_pid: int) -> None:
    """SIGKILL when the server ends (Linux's ``PR_SET_PDEATHSIG``); at once if it already has."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != server_pid:
        os._exit(70)
