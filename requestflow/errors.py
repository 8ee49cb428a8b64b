"""Errors shared by every world of requestflow (no third-party imports)."""

import argparse
import reprlib


class UserError(Exception):
    """Bad input from the person or program driving requestflow.

    The CLI prints the message on one line and exits non-zero, without a traceback and without writing any output
    file. Raise it with a message that names what is wrong and, where possible, what would be right.
    """

    exit_code = 2


class OneLineParser(argparse.ArgumentParser):
    """The CLI's argument parser: bad arguments are a UserError (one clear line) instead of usage + message."""

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message}")


_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxstring, _SHOWN.maxother, _SHOWN.maxlist, _SHOWN.maxdict = 3, 60, 60, 4, 4


def shown(value) -> str:
    """``repr`` of a value from a user's input, bounded: a thousand levels of nesting or a megabyte of text gives a
    short line (and never a RecursionError) in an error message."""
    return _SHOWN.repr(value)
