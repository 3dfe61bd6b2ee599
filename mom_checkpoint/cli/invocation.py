"""One run of a program: its name and environment, and once loaded its configuration and its log."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from mom_checkpoint.platform.environment import Environment
from mom_checkpoint.platform.errors import Error

if TYPE_CHECKING:
    from mom_checkpoint.platform.config import Config
    from mom_checkpoint.platform.log import Logger


class Invocation(msgspec.Struct):
    """What a command's handler gets: ``env`` for all I/O; ``config`` and ``log`` once ``load`` has read
    the configuration (an internal error is logged there too)."""

    prog: str
    env: Environment
    config: Config | None = None
    log: Logger | None = None

    def load(self, *, command: str | None = None, logging: bool = True) -> Config:
        """Read the configuration and, with ``logging``, open the log it names."""
        from mom_checkpoint.platform import config as config_module

        self.config = config_module.load(self.env.environ)
        if logging:
            self.open_log(command=command)
        return self.config

    def open_log(self, *, command: str | None = None) -> Logger:
        """The log the loaded configuration names, for this program (and ``command``)."""
        from mom_checkpoint.platform.log import make_logger

        assert self.config is not None, "load() reads the configuration first"
        fields: dict[str, Any] = {"command": command} if command is not None else {}
        self.log = make_logger(self.config.log_file, program=self.prog, **fields)
        return self.log

    @property
    def logger(self) -> Logger:
        assert self.log is not None, "load() opens the log"
        return self.log

    @contextlib.contextmanager
    def failures_logged(self, event: str, **fields: Any) -> Iterator[None]:
        """An Error raised inside goes to the log as ``event`` with its message and exit status, and on
        to the caller (which prints its one line)."""
        try:
            yield
        except Error as exc:
            if self.log is not None:
                self.log.error(event, **fields, error=exc.message, exit_status=int(exc.exit_status))
            raise

    def refused_call(self, event: str, args: Sequence[str], exc: Error) -> None:
        """A call refused before it got as far as its log (wrong argument count, an unsafe job id):
        pbs_mom keeps no record of its hooks, so the log gets it, if the config can be read."""
        try:
            self.load()
        except Error:
            return  # the config's own error is what the caller reports
        self.logger.error(event, argv=list(args), error=exc.message, exit_status=int(exc.exit_status))
