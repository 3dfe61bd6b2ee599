"""The files under packaging/ agree with the code."""

from __future__ import annotations

import tomllib
from pathlib import Path

from mom_checkpoint.platform import config

ROOT = Path(__file__).resolve().parent.parent


def test_example_config_lists_every_key_with_its_default() -> None:
    raw = tomllib.loads((ROOT / "packaging" / "config.toml").read_text())
    assert config.parse(raw, "(defaults)") == config.Config()  # every value the default
    top_level = {k for k in config.Config.__struct_fields__ if k != "source"}
    assert set(raw) == top_level
    for name in ("criu", "psnc", "blcr"):
        assert set(raw["backends"][name]) == set(getattr(config.BackendsConfig(), name).__struct_fields__)


def test_mom_priv_snippet_names_the_installed_programs() -> None:
    lines = (ROOT / "packaging" / "mom_priv-config").read_text().splitlines()
    settings = dict(line.split(None, 1) for line in lines if line.startswith("$"))
    assert settings["$checkpoint_script"] == "/usr/local/sbin/mom-checkpoint"
    assert settings["$checkpoint_run_exe"] == "/usr/local/sbin/mom-checkpoint-run"
    assert settings["$restart_script"] == "/usr/local/sbin/mom-restart"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for program in ("mom-checkpoint", "mom-restart", "mom-checkpoint-run"):
        assert program in scripts
