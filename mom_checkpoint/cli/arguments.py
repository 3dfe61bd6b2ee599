"""The programs' argument parser: argparse, reporting usage errors with the exit status 64.

A module of its own so that pbs_mom's positional calls, which never build a parser, do not import it.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

from mom_checkpoint.platform.errors import UsageError


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports usage errors with our exit status (64) instead of 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")
