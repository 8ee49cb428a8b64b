"""Errors shared by every world of requestflow (no third-party imports)."""

import argparse


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
