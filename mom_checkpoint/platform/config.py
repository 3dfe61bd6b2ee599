"""The configuration file: TOML, every key defaulted, unknown keys and bad values rejected by name.

Read from ``$MOM_CHECKPOINT_CONFIG`` or ``/etc/mom-checkpoint/config.toml``; a missing default file means
all defaults (pbs_mom passes no environment, so the default path must work alone).
"""

from __future__ import annotations

import math
import os
import stat
import tomllib
from collections.abc import Mapping
from typing import Literal

import msgspec
from msgspec import field

from mom_checkpoint.platform.errors import ConfigError
from mom_checkpoint.platform.records import RecordError, build

DEFAULT_PATH = "/etc/mom-checkpoint/config.toml"
ENV_VAR = "MOM_CHECKPOINT_CONFIG"

RunAs = Literal["root", "job-user"]
RunAsSetting = Literal["root", "job-user", "auto"]  # "auto": job-user mode where the node supports it
TickJobs = Literal["this-node", "all"]


class CriuConfig(msgspec.Struct, frozen=True):
    binary: str = "criu"
    run_as: RunAsSetting = "auto"
    ghost_limit: int = 1024 * 1024  # bytes; CRIU's --ghost-limit (deleted-but-open files)
    # every restore in a fresh PID and mount namespace (processes.namespaces): the job gets its PIDs
    # back whatever runs on the node; false: restore beside the node's processes (PIDs must be free)
    pid_namespace: bool = True
    extra_args: list[str] = field(default_factory=list)  # e.g. ["--file-locks", "--tcp-established"]


class PsncConfig(msgspec.Struct, frozen=True):
    chkpnt: str = "chkpnt"
    resume: str = "resume"
    run_as: RunAs = "root"


class BlcrConfig(msgspec.Struct, frozen=True):
    cr_checkpoint: str = "cr_checkpoint"
    cr_restart: str = "cr_restart"
    run_as: RunAs = "root"


class BackendsConfig(msgspec.Struct, frozen=True):
    criu: CriuConfig = field(default_factory=CriuConfig)
    psnc: PsncConfig = field(default_factory=PsncConfig)
    blcr: BlcrConfig = field(default_factory=BlcrConfig)


class Config(msgspec.Struct, frozen=True):
    backend: Literal["criu", "psnc", "blcr"] = "criu"
    spool_dir: str = "/var/spool/checkpoint"
    keep: int = 2
    max_keep: int = 10  # the most generations any job keeps: a larger depth=N is capped to it
    user_quota_gib: float = 0.0  # the most a user's complete generations may hold on the node; 0: none
    timeout_s: float = 600.0
    max_concurrent: int = 2
    log_file: str = "/var/log/mom-checkpoint.log"
    torque_checkpoint_roots: list[str] = field(default_factory=lambda: ["/var/spool/torque/checkpoint"])
    pbs_checkpoint_roots: list[str] = field(default_factory=lambda: ["/var/spool/pbs/checkpoint"])  # OpenPBS
    # a job whose node file (pbs_mom's, in these folders) names other hosts: refused, or checkpointed
    # here alone ("allow": where a site's multi-node jobs coordinate their own checkpoints)
    multi_node: Literal["refuse", "allow"] = "refuse"
    torque_aux_dirs: list[str] = field(default_factory=lambda: ["/var/spool/torque/aux"])
    pbs_aux_dirs: list[str] = field(default_factory=lambda: ["/var/spool/pbs/aux"])  # OpenPBS
    several_children: Literal["fail", "oldest"] = "fail"
    space_margin: float = 1.2
    abort_grace_s: float = 10.0
    qalter: str = "qalter"  # TORQUE's qalter, to mark restarted jobs (checkpoint_restart_status)
    metrics_file: str = ""  # Prometheus textfile, e.g. /var/lib/prometheus/node-exporter/mom_checkpoint.prom
    # mom-checkpoint tick / advise: periodic checkpoints through qchkpt, and the interval that pays off
    qstat: str = "qstat"  # TORQUE's qstat, name or path
    qchkpt: str = "qchkpt"  # TORQUE's qchkpt, name or path
    checkpoint_interval: int = 10  # minutes, as pbs_mom's $checkpoint_interval (TORQUE's default: 10)
    tick_jobs: TickJobs = "this-node"  # jobs whose first exec_host is this node, or every running job
    tick_max_qchkpt: int = 8  # qchkpt calls per tick at most; the rest wait for the next tick
    tick_advised_interval: bool = False  # jobs asking "c"/"periodic" without a number: Daly's interval
    node_mtbf_h: float = 0.0  # a node's mean time between failures, hours; 0: unknown
    # the vault: a copy of every checkpoint on storage all nodes mount, made in the background
    vault_dir: str = ""  # empty: no vault
    vault_keep: int = 0  # complete generations of a job kept in the vault; 0: as many as keep
    vault_bandwidth_mib_s: float = 0.0  # the copier's average rate, MiB/s; 0: no limit
    # the most one user's copies may hold in the (shared) vault, GiB; 0: a quarter of its file system
    vault_quota_gib: float = 0.0
    # how new chunks are stored in the vault: zstd (at vault_compression_level, -7 fastest .. 19) or none
    vault_compression: Literal["zstd", "none"] = "zstd"
    vault_compression_level: int = 1
    backends: BackendsConfig = field(default_factory=BackendsConfig)
    source: str = "(defaults)"  # the file it was read from (not a setting: as_dict leaves it out)

    def checkpoint_roots(self, convention: str) -> tuple[list[str], str]:
        """Where the batch system's checkpoint folder (CHECKPOINT_DIR, %path) may lie, and the key."""
        if convention == "openpbs":
            return self.pbs_checkpoint_roots, "pbs_checkpoint_roots"
        return self.torque_checkpoint_roots, "torque_checkpoint_roots"

    @property
    def run_as(self) -> RunAs:
        """The mode the backend runs in here: ``auto`` resolved for this node (modes.py)."""
        backend_config: CriuConfig | PsncConfig | BlcrConfig = getattr(self.backends, self.backend)
        if backend_config.run_as == "auto":
            from mom_checkpoint.platform.modes import this_node

            return this_node().preferred
        return backend_config.run_as


def config_path(environ: Mapping[str, str]) -> tuple[str, bool]:
    """The file to read and whether it was named explicitly (then it must exist)."""
    named = environ.get(ENV_VAR, "")
    return (named, True) if named else (DEFAULT_PATH, False)


def load(environ: Mapping[str, str]) -> Config:
    path, explicit = config_path(environ)
    try:
        with open(path, "rb") as fh:
            _check_file_safety(path, os.fstat(fh.fileno()))
            raw = tomllib.load(fh)
    except FileNotFoundError:
        if explicit:
            raise ConfigError(path, f"no such file (named by {ENV_VAR})") from None
        return Config()
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, f"not valid TOML: {exc}") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise ConfigError(path, f"cannot read: {exc}") from None
    return parse(raw, path)


def parse(raw: Mapping[str, object], source: str = "(string)") -> Config:
    if "source" in raw:
        raise ConfigError(source, "source: unknown key")
    try:
        config = build(Config, dict(raw))
    except RecordError as exc:
        raise ConfigError(source, str(exc)) from None
    _check_values(config, source)
    return msgspec.structs.replace(config, source=source)


def _check_values(config: Config, source: str) -> None:
    problems: list[tuple[str, str]] = []
    if config.keep < 1:
        problems.append(("keep", f"must be at least 1, got {config.keep}"))
    if config.max_keep < config.keep:
        problems.append(("max_keep", f"must be at least keep ({config.keep}), got {config.max_keep}"))
    if not (math.isfinite(config.user_quota_gib) and config.user_quota_gib >= 0):
        problems.append(("user_quota_gib", f"must be 0 (none) or more, got {config.user_quota_gib:g}"))
    if config.timeout_s <= 0:
        problems.append(("timeout_s", f"must be more than 0, got {config.timeout_s:g}"))
    if config.max_concurrent < 1:
        problems.append(("max_concurrent", f"must be at least 1, got {config.max_concurrent}"))
    if config.space_margin < 0:
        problems.append(("space_margin", f"must not be negative, got {config.space_margin:g}"))
    if config.abort_grace_s < 0:
        problems.append(("abort_grace_s", f"must not be negative, got {config.abort_grace_s:g}"))
    if config.backends.criu.ghost_limit < 0:
        problems.append(("backends.criu.ghost_limit", "must not be negative"))
    if not os.path.isabs(config.spool_dir) or os.path.normpath(config.spool_dir) == "/":
        problems.append(("spool_dir", f"must be an absolute path below /, got {config.spool_dir!r}"))
    if config.log_file != "syslog" and not os.path.isabs(config.log_file):
        problems.append(("log_file", f'must be "syslog" or an absolute path, got {config.log_file!r}'))
    if config.metrics_file and not os.path.isabs(config.metrics_file):
        problems.append(("metrics_file", f"must be empty or an absolute path, got {config.metrics_file!r}"))
    problems += _check_tick_values(config)
    problems += _check_vault_values(config)
    for key in ("torque_checkpoint_roots", "pbs_checkpoint_roots"):
        for i, root in enumerate(getattr(config, key)):
            if not os.path.isabs(root) or os.path.normpath(root) == "/":
                problems.append((f"{key}[{i}]", f"must be an absolute path below /, got {root!r}"))
    for name in ("binary",):
        if not getattr(config.backends.criu, name):
            problems.append((f"backends.criu.{name}", "must not be empty"))
    for i, arg in enumerate(config.backends.criu.extra_args):
        why = _refused_criu_option(arg)
        if why:
            problems.append((f"backends.criu.extra_args[{i}]", f"{arg!r} is refused: {why}"))
    if problems:  # every one of them, on the one line: an admin fixes them all in one go
        raise ConfigError(source, "; ".join(f"{key}: {problem}" for key, problem in problems))


# CRIU options extra_args may not add (to dumps and restores alike): each would destroy, split or move
# a generation's image, or undo what the hook sets itself.
_REFUSED_CRIU_OPTIONS = {
    "--auto-dedup": "it punches holes in the images CRIU reads: a restore would destroy the generation",
    "--prev-images-dir": "a generation holds its whole image, never pages of another one",
    "--images-dir": "the hook chooses where the image goes",
    "-D": "the hook chooses where the image goes",
    "--stream": "the image must be files in the generation",
    "--page-server": "the image must be files in the generation",
    "--lazy-pages": "the image must be files in the generation",
    "--leave-running": "the hook sets it (not on a checkpoint that ends the job)",
    "--leave-stopped": "the hook sets it where it restores",
}


def _refused_criu_option(arg: str) -> str:
    """Why an extra CRIU argument is refused ("" if it is not): its long form, its ``--opt=value`` form
    and a short option with its value attached (``-D/some/dir``) alike."""
    for option, why in _REFUSED_CRIU_OPTIONS.items():
        long_form = option.startswith("--") and (arg == option or arg.startswith(f"{option}="))
        if long_form or (not option.startswith("--") and arg.startswith(option)):
            return why
    return ""


def _check_tick_values(config: Config) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for name in ("qstat", "qchkpt"):
        if not getattr(config, name):
            problems.append((name, "must not be empty"))
    if config.checkpoint_interval < 1:
        problems.append(
            ("checkpoint_interval", f"must be at least 1 (minutes), got {config.checkpoint_interval}")
        )
    if config.tick_max_qchkpt < 1:
        problems.append(("tick_max_qchkpt", f"must be at least 1, got {config.tick_max_qchkpt}"))
    if not (math.isfinite(config.node_mtbf_h) and config.node_mtbf_h >= 0):
        problems.append(("node_mtbf_h", f"must be 0 (unknown) or more, got {config.node_mtbf_h:g}"))
    elif config.tick_advised_interval and config.node_mtbf_h == 0:
        problems.append(("tick_advised_interval", "needs node_mtbf_h (hours) to compute the interval"))
    return problems


def _check_vault_values(config: Config) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    if config.vault_dir:
        vault = os.path.normpath(config.vault_dir)
        spool = os.path.normpath(config.spool_dir)
        if not os.path.isabs(config.vault_dir) or vault == "/":
            problems.append(
                ("vault_dir", f"must be empty or an absolute path below /, got {config.vault_dir!r}")
            )
        elif vault == spool or vault.startswith(spool + "/") or spool.startswith(vault + "/"):
            problems.append(
                ("vault_dir", f"must be outside the spool {config.spool_dir}, got {config.vault_dir!r}")
            )
    if config.vault_keep < 0:
        problems.append(("vault_keep", f"must be 0 (as keep) or more, got {config.vault_keep}"))
    if not (math.isfinite(config.vault_quota_gib) and config.vault_quota_gib >= 0):
        problems.append(
            ("vault_quota_gib", f"must be 0 (a quarter of the vault) or more, got {config.vault_quota_gib:g}")
        )
    if not (math.isfinite(config.vault_bandwidth_mib_s) and config.vault_bandwidth_mib_s >= 0):
        problems.append(
            ("vault_bandwidth_mib_s", f"must be 0 (no limit) or more, got {config.vault_bandwidth_mib_s:g}")
        )
    if not 0 <= config.vault_compression_level <= 16:
        problems.append(
            (
                "vault_compression_level",
                f"must be 0 to 16 (lz4's levels), got {config.vault_compression_level}",
            )
        )
    return problems


def _check_file_safety(path: str, st: os.stat_result) -> None:
    """Root must not take orders from a file another user could have written."""
    if os.geteuid() != 0:
        return
    if st.st_uid != 0:
        raise ConfigError(path, f"refused: owned by uid {st.st_uid}, not root (the hook runs as root)")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(path, f"refused: writable by group or others (mode {stat.S_IMODE(st.st_mode):o})")
