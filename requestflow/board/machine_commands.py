"""The board's machine commands of the ``requestflow`` CLI: ``power-meters``, ``platform``, ``clocks`` and
``cooldown``: what the board is and offers, its clocks pinned and restored, a wait for it to cool down. Each but
``power-meters`` prints one JSON document (the controller parses it over SSH), and each reads below ``--root`` (a
fake sysfs/procfs tree in tests). ``requestflow.board.board_commands`` adds their parsers after its own.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from requestflow.errors import UserError


def add_parsers(sub) -> None:
    """The machine's subcommands, on ``sub`` (the CLI's subparsers)."""
    root_help = "the sysfs/procfs root to read (default: /; a fake tree in tests)"
    meters_cmd = sub.add_parser("power-meters", help="the power meters this board offers for requestflow run "
                                                     "--power-meter (hwmon sensors, RAPL)")
    meters_cmd.add_argument("--root", type=folder_argument, default="/", help=root_help)
    meters_cmd.add_argument("--format", choices=("text", "json"), default="text")
    platform_cmd = sub.add_parser("platform", help="this board as one JSON document: CPUs and clusters, GPU clocks, "
                                                   "OpenCL, compilers, known board id")
    platform_cmd.add_argument("--root", type=folder_argument, default="/", help=root_help)

    clocks_cmd = sub.add_parser("clocks", help="pin the CPU and GPU clocks at their maximum, restore them, or show "
                                               "them (one JSON document)")
    clocks_cmd.add_argument("action", choices=("pin", "restore", "status"))
    clocks_cmd.add_argument("--state", required=True, metavar="FILE",
                            help="the state file: original settings and holders, kept from pin to restore")
    clocks_cmd.add_argument("--holder", default="default", metavar="ID",
                            help="who pins, e.g. a sweep's run id: restore unpins only when no holder is left")
    clocks_cmd.add_argument("--force", action="store_true",
                            help="restore the originals even while other holders remain")
    clocks_cmd.add_argument("--root", type=folder_argument, default="/", help=root_help)

    cooldown_cmd = sub.add_parser("cooldown", help="wait until the hottest thermal zone is below a temperature "
                                                   "(one JSON document)")
    cooldown_cmd.add_argument("--below", type=float, required=True, metavar="CELSIUS")
    cooldown_cmd.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS",
                              help="give up after this long (default: 300)")
    cooldown_cmd.add_argument("--root", type=folder_argument, default="/", help=root_help)


def cmd_power_meters(args, argv) -> int:
    from requestflow.board.power_meters import detect, no_meter_line

    found = detect(args.root)
    if args.format == "json":
        print(json.dumps(found, indent=1))
    elif not found:
        print(no_meter_line(args.root))
    else:
        for meter in found:
            print(f"--power-meter {meter['spec']}: {meter['description']}")
    return 0


def folder_argument(text: str) -> str:
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is not a folder")
    return text


def print_json_report(produce) -> int:
    """Print what ``produce()`` returns as the only thing on stdout, one JSON document: the controller parses it over
    SSH, so whatever is written meanwhile, by Python or by a native library (an OpenCL driver's banner), goes to
    stderr."""
    import contextlib
    import ctypes

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            report = produce()
    finally:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).fflush(None)  # C stdio buffers, before file descriptor 1 is stdout again
        os.dup2(saved, 1)
        os.close(saved)
    print(json.dumps(report, indent=1))
    return 0


def cmd_platform(args, argv) -> int:
    from requestflow.board.machine import platform_snapshot

    return print_json_report(lambda: platform_snapshot(args.root))


def cmd_clocks(args, argv) -> int:
    from requestflow.board import clocks

    if args.force and args.action != "restore":
        raise UserError("--force goes with clocks restore only")
    actions = {"pin": lambda: clocks.pin(args.root, args.state, args.holder),
               "restore": lambda: clocks.restore(args.root, args.state, args.holder, force=args.force),
               "status": lambda: clocks.status(args.root, args.state)}
    return print_json_report(actions[args.action])


def cmd_cooldown(args, argv) -> int:
    from requestflow.board.clocks import cool_down

    return print_json_report(lambda: cool_down(args.root, args.below, args.timeout))


COMMANDS = {"power-meters": cmd_power_meters, "platform": cmd_platform, "clocks": cmd_clocks, "cooldown": cmd_cooldown}
