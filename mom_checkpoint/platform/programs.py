"""Finding a program the node's administrator installed: never through the caller's PATH alone."""

from __future__ import annotations

import os

from mom_checkpoint.platform.errors import ProgramMissing

SEARCH_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/local/bin", "/usr/bin", "/bin")


def find_program(
    name: str, config_key: str, *, use_path: bool = True, missing: type[ProgramMissing] = ProgramMissing
) -> str:
    """A program's configured name or path, resolved without trusting the caller's PATH: the standard
    folders first (``use_path=False``: only them, as under pbs_mom, cron or systemd). ``missing``
    (a checkpointer's: CheckpointerMissing) names ``config_key``, the setting that fixes it."""
    if "/" in name:
        if os.path.isfile(name) and os.access(name, os.X_OK):
            return name
        raise missing(f"{name} ({config_key}) does not exist or is not executable")
    path_dirs = [d for d in os.environ.get("PATH", "").split(":") if d.startswith("/")] if use_path else []
    for directory in (*SEARCH_DIRS, *path_dirs):
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise missing(
        f"{name} not found in {':'.join(SEARCH_DIRS)} or PATH: install it or set {config_key} to its path"
    )
