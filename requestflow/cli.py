"""The ``requestflow`` command. Each subcommand imports only its own world (board, results or controller).

Bad input gives one line ``requestflow: error: ...`` on stderr, exit status 2, no traceback and no output file.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

from requestflow.board import board_commands
from requestflow.board.tensorflow_import import exit_now, quiet_tensorflow
from requestflow.errors import OneLineParser, UserError
from requestflow.results import results_commands

COMMAND_GROUP = "requestflow.commands"  # entry points: commands that other packages add (the controller's)


@dataclass(frozen=True)
class Command:
    """A command another package adds to this CLI through the entry-point group ``requestflow.commands``:
    its help line, a function adding its arguments to its parser, and the function running it (exit status)."""

    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, list[str]], int]


def added_commands() -> dict[str, Command]:
    """The commands of the entry-point group ``requestflow.commands`` whose module imports here. In a checkout, the
    controller's (``operators.commands``: sweep, replay, board-gc, airflow-env); on a board, installed from the
    wheel without the checkout, none: an entry whose own top-level package is absent is left out, any other error
    is raised."""
    from importlib.metadata import entry_points

    commands = {}
    for entry in entry_points(group=COMMAND_GROUP):
        try:
            command = entry.load()
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] == entry.module.split(".")[0]:
                continue
            raise
        if not all(callable(getattr(command, name, None)) for name in ("arguments", "run")):  # a Command (duck-
            # typed: run as ``python -m requestflow.cli``, this module is __main__ and its class another object)
            raise TypeError(f"entry point {entry.name} = {entry.value}: not a requestflow.cli.Command")
        commands[entry.name] = command
    return dict(sorted(commands.items()))


def build_parser(added: dict[str, Command] | None = None) -> argparse.ArgumentParser:
    parser = OneLineParser(prog="requestflow", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"requestflow {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    board_commands.add_parsers(sub)
    results_commands.add_parsers(sub)
    for name, command in (added if added is not None else added_commands()).items():
        command.arguments(sub.add_parser(name, help=command.help))
    return parser


def _version() -> str:
    from requestflow import __version__
    return __version__


def main(argv: list[str] | None = None) -> int:
    """The CLI. ``argv`` None: this process is the command (console script, ``python -m requestflow.cli``)."""
    process = argv is None
    argv = sys.argv[1:] if argv is None else argv
    try:
        # a command of this package's own (a board's run: on the local board, every point of a sweep) does not
        # import the controller's commands to parse its arguments; anything else (--help) lists them all
        added = {} if argv[:1] and argv[0] in COMMANDS else added_commands()
        args = build_parser(added).parse_args(argv)
        if args.command in ("run", "classify"):
            quiet_tensorflow()
        code = (COMMANDS[args.command] if args.command in COMMANDS else added[args.command].run)(args, argv)
    except UserError as exc:
        print(f"requestflow: error: {exc}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        print("requestflow: interrupted", file=sys.stderr)
        code = 130
    if process and "tensorflow" in sys.modules:
        exit_now(code)
    return code


COMMANDS = {**board_commands.COMMANDS, **results_commands.COMMANDS}

if __name__ == "__main__":
    sys.exit(main())
