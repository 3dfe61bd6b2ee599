"""list, show, verify, prune, doctor and config through the installed mom-checkpoint."""

from __future__ import annotations

import calendar
import json
import os
import pty
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import filelock
import pytest

from tests.helpers import Site, call_direct, call_hook, crash, installed, snapshot


def admin(site: Site, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/bin:/usr/bin", "MOM_CHECKPOINT_CONFIG": str(site.config)}
    return subprocess.run(
        [str(installed("mom-checkpoint")), *args], env=env, capture_output=True, text=True, timeout=120
    )


def data(result: subprocess.CompletedProcess[str], command: str) -> Any:
    assert result.returncode in (0, 1), result.stderr
    envelope = json.loads(result.stdout)
    assert envelope["result_schema"] == 1 and envelope["command"] == command
    return envelope["data"]


@pytest.fixture
def spool_with_jobs(site: Site) -> Site:
    """Two jobs: 801 still running with 3 generations and a stale incoming folder, 802 ended with 2."""
    site.configure(keep=5, backend="psnc", **{"backends.psnc.chkpnt": str(site.standin("chkpnt"))})
    running = site.start_job("801.head")
    ended = site.start_job("802.head")
    for _ in range(3):
        assert call_hook(site.torque_args(running), site.config).returncode == 0
    for _ in range(2):
        assert call_hook(site.torque_args(ended), site.config).returncode == 0
    crash(ended)
    (site.generations("801.head")[0].parent / ".incoming-leftover").mkdir(mode=0o700)
    return site


def test_list_marks_the_newest_and_the_stale(spool_with_jobs: Site) -> None:
    site = spool_with_jobs
    table = admin(site, "list")
    assert table.returncode == 0, table.stderr
    rows = [line for line in table.stdout.splitlines() if "801.head" in line or "802.head" in line]
    assert len(rows) == 6
    assert sum("newest" in row for row in rows) == 2 and sum("stale" in row for row in rows) == 1
    entries = data(admin(site, "list", "801.head", "--json"), "list")
    assert [e["number"] for e in entries if e["status"] == "complete"] == [1, 2, 3]
    assert [e["newest"] for e in entries if e["status"] == "complete"] == [False, False, True]
    assert {e["status"] for e in entries} == {"complete", "stale"}
    assert all(e["backend"] == "psnc" for e in entries if e["status"] == "complete")
    unknown = admin(site, "list", "999.nowhere")
    assert (
        unknown.returncode == 66
        and unknown.stderr == f"mom-checkpoint: job 999.nowhere has nothing in {site.spool}\n"
    )


def test_show_reads_the_manifest(spool_with_jobs: Site) -> None:
    site = spool_with_jobs
    newest = site.generations("801.head")[-1]
    text = admin(site, "show", "801.head")
    assert text.returncode == 0, text.stderr
    manifest = json.loads((newest / "manifest.json").read_text())
    assert str(newest) in text.stdout and "generation 3" in text.stdout
    for process in manifest["processes"]:
        assert f"{process['pid']} {process['name']}" in text.stdout
    for image_file in manifest["files"]:
        assert image_file["path"] in text.stdout
    cpu = manifest["host"]["cpu"]  # what a node restoring it must have
    assert f"CPU {cpu['machine']} {cpu['model']} ({len(cpu['flags'])} feature flags" in text.stdout
    shown = data(admin(site, "show", str(newest), "--json"), "show")
    assert shown["manifest"] == manifest and shown["path"] == str(newest)


def test_verify_passes_then_catches_a_changed_file(spool_with_jobs: Site) -> None:
    site = spool_with_jobs
    good = admin(site, "verify", "801.head")
    assert good.returncode == 0 and "all 2 files match" in good.stdout and good.stderr == ""
    victim = next((site.generations("801.head")[-1] / "image").glob("ckpt.*.meta"))
    victim.write_text(victim.read_text() + " ")
    bad = admin(site, "verify", "801.head")
    assert bad.returncode == 65
    assert bad.stderr.startswith("mom-checkpoint: ") and victim.name in bad.stderr and bad.stdout == ""


def test_verify_shows_a_progress_bar_only_on_a_terminal(spool_with_jobs: Site) -> None:
    site = spool_with_jobs
    controller, terminal = pty.openpty()
    env = {
        "PATH": "/bin:/usr/bin",
        "MOM_CHECKPOINT_CONFIG": str(site.config),
        "TERM": "xterm",
        "COLUMNS": "100",
    }
    proc = subprocess.run(
        [str(installed("mom-checkpoint")), "verify", "801.head"],
        env=env,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
    )
    os.close(terminal)
    seen = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    os.close(controller)
    assert proc.returncode == 0
    assert b"verifying" in seen and b"all 2 files match" in seen


def test_prune_dry_run_changes_nothing_and_keep_protects_the_running_job(spool_with_jobs: Site) -> None:
    site = spool_with_jobs
    before = snapshot(site.base)
    plan = data(admin(site, "prune", "--keep", "1", "--dry-run", "--json"), "prune")
    assert snapshot(site.base) == before
    assert plan["dry_run"] is True
    going = {
        (d["entry"]["job_id"], Path(d["entry"]["path"]).name[:9]) for d in plan["decisions"] if not d["keep"]
    }
    assert going == {
        ("801.head", "000001-20"),
        ("801.head", "000002-20"),
        ("801.head", ".incoming"),
        ("802.head", "000001-20"),
    }
    assert all(d["reason"] for d in plan["decisions"])

    done = admin(site, "prune", "--keep", "1")
    assert done.returncode == 0, done.stderr
    assert [g.name[:6] for g in site.generations("801.head")] == ["000003"]
    assert [g.name[:6] for g in site.generations("802.head")] == ["000002"]
    assert site.incoming() == []


def test_prune_older_than_keeps_only_a_running_jobs_newest(spool_with_jobs: Site) -> None:
    site = spool_with_jobs
    result = data(admin(site, "prune", "--older-than", "1s", "--json"), "prune")
    kept = [d for d in result["decisions"] if d["keep"]]
    assert [(d["entry"]["job_id"], d["reason"]) for d in kept] == [
        ("801.head", "newest complete generation of a job that still runs")
    ]
    assert [g.name[:6] for g in site.generations("801.head")] == ["000003"]
    assert site.generations("802.head") == []
    assert not list(site.spool.glob("*.802.head")), "an emptied job-run folder is removed too"
    admin(site, "prune", "--older-than", "1s", "--include-running")
    assert site.generations("801.head") == []


def test_prune_leaves_a_job_whose_checkpoint_is_running(spool_with_jobs: Site) -> None:
    site = spool_with_jobs
    with filelock.FileLock(str(site.spool / ".locks" / "job-802.head.lock")):
        result = data(admin(site, "prune", "--keep", "1", "--json"), "prune")
    untouched = [d for d in result["decisions"] if d["entry"]["job_id"] == "802.head"]
    assert untouched and all(d["keep"] and "checkpoint of the job runs now" in d["reason"] for d in untouched)
    assert len(site.generations("802.head")) == 2


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["prune", "--keep", "0"], "--keep must be at least 1"),
        (["prune", "--older-than", "soon"], "not a duration"),
        (["prune", "--job", "../x"], "not safe as a file name"),
        (["show"], "the following arguments are required"),
        (["frobnicate"], "expected 8 arguments"),
    ],
)
def test_usage_errors(site: Site, args: list[str], words: str) -> None:
    result = admin(site, *args)
    assert result.returncode == 64
    assert result.stderr.count("\n") == 1 and words in result.stderr, result.stderr


def test_config_print_is_the_effective_config(site: Site) -> None:
    extra: dict[str, Any] = {"backends.criu.extra_args": ["--file-locks"]}
    site.configure(keep=4, **extra)
    text = admin(site, "config", "--print")
    assert text.returncode == 0
    printed = tomllib.loads(text.stdout)
    assert printed["keep"] == 4 and printed["max_concurrent"] == 2
    assert printed["backends"]["criu"]["extra_args"] == ["--file-locks"]
    assert data(admin(site, "config", "--print", "--json"), "config")["config"] == printed


def torque_clients(site: Site) -> dict[str, str]:
    """qstat, qchkpt and qalter where a site installed TORQUE outside the standard folders."""
    return {name: str(site.standin(name)) for name in ("qstat", "qchkpt", "qalter")}


def test_doctor_passes_on_a_set_up_node_and_says_how_to_fix_the_rest(site: Site, criu: None) -> None:
    site.configure(**{"backends.criu.run_as": "job-user"}, **torque_clients(site))
    programs = installed("mom-checkpoint").parent
    mom_config = site.base / "torque" / "mom_priv" / "config"  # <torque home>/mom_priv: home's checkpoint/
    mom_config.parent.mkdir()
    mom_config.write_text(
        f"$pbsserver head\n$checkpoint_script {programs}/mom-checkpoint\n"
        f"$restart_script {programs}/mom-restart\n$checkpoint_run_exe {programs}/mom-checkpoint-run\n"
    )
    good = admin(site, "doctor", "--mom-config", str(mom_config))
    assert good.returncode == 0, good.stdout
    assert good.stdout.splitlines()[-1].startswith("all ") and "[FAIL]" not in good.stdout
    checks = data(admin(site, "doctor", "--mom-config", str(mom_config), "--json"), "doctor")
    assert {c["name"] for c in checks} >= {
        "config",
        "criu binary",
        "criu check",
        "spool",
        "log",
        "$restart_script",
    }
    # issue 28: this node makes restores' namespaces (root, PID namespaces, nsenter)
    [namespace] = [c for c in checks if c["name"] == "pid_namespace"]
    assert namespace["ok"] and "fresh PID and mount namespace" in namespace["detail"], namespace

    # CRIU's default, run_as = "auto", takes job-user mode where the node supports it (as here); root
    # mode says what it leaves open where the safer mode would work (issue 25 #1)
    site.configure(**torque_clients(site))
    checks = data(admin(site, "doctor", "--mom-config", str(mom_config), "--json"), "doctor")
    [mode] = [c for c in checks if c["name"].startswith("run_as")]
    assert mode["name"] == "run_as = auto (job-user here)" and mode["ok"], mode
    site.configure(**{"backends.criu.run_as": "root"}, **torque_clients(site))
    checks = data(admin(site, "doctor", "--mom-config", str(mom_config), "--json"), "doctor")
    [mode] = [c for c in checks if c["name"].startswith("run_as")]
    assert mode["name"] == "run_as = root" and "by their paths" in mode["detail"], mode
    site.configure(**{"backends.criu.run_as": "job-user"}, **torque_clients(site))

    mom_config.write_text(f"$checkpoint_script {programs}/mom-checkpoint\n")
    site.spool.chmod(0o755)
    bad = admin(site, "doctor", "--mom-config", str(mom_config))
    assert bad.returncode == 1
    assert f"fix: add '$restart_script {programs}/mom-restart' and restart pbs_mom" in bad.stdout
    assert "[FAIL] spool" in bad.stdout and f"chmod 0711 {site.spool}" in bad.stdout


def test_doctor_finds_what_would_fail_under_pbs_mom_cron_and_site_wrappers(site: Site, criu: None) -> None:
    """Issue 13 #5: (a) pbs_mom -C DIR outside torque_checkpoint_roots; (b) TORQUE's clients only on the
    admin's PATH (/opt/torque/bin), where tick under cron and mom-restart would not find them; (c) a
    site's wrapper as $checkpoint_script is not to be replaced."""
    site.configure(**{"backends.criu.run_as": "job-user"}, **torque_clients(site))
    programs = installed("mom-checkpoint").parent
    home = site.base / "torque"
    mom_config = home / "mom_priv" / "config"
    mom_config.parent.mkdir()
    wrapper = site.base / "site-checkpoint.sh"
    wrapper.write_text(f'#!/bin/sh\nlogger checkpoint "$2"\nexec {programs}/mom-checkpoint "$@"\n')
    wrapper.chmod(0o755)
    mom_config.write_text(
        f"$checkpoint_script {wrapper}\n$restart_script {programs}/mom-restart\n"
        f"$checkpoint_run_exe {programs}/mom-checkpoint-run\n"
    )
    good = admin(site, "doctor", "--mom-config", str(mom_config))
    assert good.returncode == 0, good.stdout
    assert "a site's wrapper that runs mom-checkpoint" in good.stdout

    elsewhere = site.base / "mom_checkpoint"
    elsewhere.mkdir()
    code = "import time; time.sleep(60)"
    mom = subprocess.Popen(["pbs_mom", "-c", code, "-C", str(elsewhere)], executable=sys.executable)
    try:
        opt = site.base / "opt-torque-bin"
        opt.mkdir()
        for name in ("qstat", "qchkpt", "qalter"):
            (opt / name).symlink_to(site.standin(name))
        site.configure(**{"backends.criu.run_as": "job-user"})  # qstat, qchkpt, qalter: plain names
        env = {**os.environ, "PATH": f"{opt}:/usr/bin:/bin", "MOM_CHECKPOINT_CONFIG": str(site.config)}
        bad = subprocess.run(
            [str(installed("mom-checkpoint")), "doctor", "--mom-config", str(mom_config)],
            capture_output=True, text=True, env=env, check=False,
        )  # fmt: skip
    finally:
        mom.kill()
        mom.wait()
    assert bad.returncode == 1, bad.stdout
    assert f"[FAIL] pbs_mom checkpoint folder: pbs_mom checkpoints into {elsewhere} (pbs_mom -C" in bad.stdout
    assert f"fix: add {elsewhere} to torque_checkpoint_roots" in bad.stdout
    for name in ("qstat", "qchkpt", "qalter"):
        assert f'fix: set {name} = "{opt}/{name}" (found on your PATH only' in bad.stdout, bad.stdout


# A window title, a clear screen and a C1 CSI, then rich markup (an unbalanced [/] too) and an emoji code.
HOSTILE = "\x1b]0;pwned\x07\x1b[2J\x9b31m"
TAGS = ["[bold]B", "[/]", "[link=file:///etc/shadow]L[/link]", ":smile:"]


def shown_not_obeyed(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    for text in (result.stdout, result.stderr):
        assert "\x1b" not in text and "\x9b" not in text and "\x07" not in text, text
    assert "\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m" in result.stdout, result.stdout
    return result.stdout


def test_show_list_verify_prune_print_hostile_manifests_and_folders_literally(site: Site) -> None:
    """A job's command line, its process names and open files, and folder names in the spool reach the
    admin's terminal: shown with their escape sequences made visible, their markup as typed."""
    site.configure(backend="psnc", **{"backends.psnc.chkpnt": str(site.standin("chkpnt"))})
    job = site.start_job("803.head")
    assert call_hook(site.torque_args(job), site.config).returncode == 0
    original = site.generations("803.head")[-1]
    manifest = json.loads((original / "manifest.json").read_text())
    evil = HOSTILE + " ".join(TAGS)
    manifest["job"]["user"] += HOSTILE
    manifest["host"]["name"] += HOSTILE
    manifest["host"]["cpu"]["model"] += HOSTILE
    manifest["backend"]["command"].append(evil)
    for process in manifest["processes"]:
        process["name"] += HOSTILE
        process["cmdline"] += [evil, "[/]"]  # an unbalanced closing tag: a MarkupError to rich
        process["fds"].append({"fd": 99, "target": "/tmp/" + HOSTILE, "kind": "file", "flags": 0, "pos": 0})
    manifest["stats"][HOSTILE] = 1
    (original / "manifest.json").write_text(json.dumps(manifest))
    # a job-run folder whose name (the job id in list and prune) is hostile, with a copy of the generation
    # and a broken one whose problem names a hostile manifest field
    run = site.spool / f"999999.evil{HOSTILE}[bold]x"
    run.mkdir(mode=0o700)
    copy = run / original.name
    shutil.copytree(original, copy)
    broken = run / "000009-20261124T193000Z"
    broken.mkdir(mode=0o700)
    (broken / "manifest.json").write_text(json.dumps({**manifest, evil: 1}))
    (broken / "manifest.json").chmod(0o600)  # root's, as the hook writes it: only its content is bad

    text = shown_not_obeyed(admin(site, "show", "803.head"))
    assert all(tag in text for tag in TAGS), text
    assert "fd 99 -> /tmp/\\x1b]0;pwned" in text
    assert f"CPU {manifest['host']['cpu']['machine']} " in text
    text = shown_not_obeyed(admin(site, "show", str(copy)))
    assert f"999999.evil\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m[bold]x/{copy.name}" in text, text
    text = shown_not_obeyed(admin(site, "list"))
    assert "evil\\x1b]0;pwned" in text and "broken" in text and "[bold]x" in text, text
    text = shown_not_obeyed(admin(site, "verify", str(copy)))
    assert "999999.evil\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m[bold]x" in text and "files match" in text
    shown_not_obeyed(admin(site, "prune", "--dry-run"))
    refused = admin(site, "show", str(broken))
    assert refused.returncode == 65 and refused.stderr.count("\n") == 1 and "\x1b" not in refused.stderr
    assert "\\x1b]0;pwned" in refused.stderr and "[link=file:///etc/shadow]L[/link]" in refused.stderr

    as_json = admin(site, "show", str(copy), "--json")
    assert as_json.stdout.isascii() and "\\u001b]0;pwned\\u0007" in as_json.stdout
    assert data(as_json, "show")["manifest"] == manifest  # --json stays exact


def test_prune_forgets_the_locks_and_session_records_of_jobs_gone_from_the_spool(site: Site) -> None:
    """Issue 13 #7: .locks/job-<key>.lock(.holder) and .sessions/<key>.json stayed forever after the
    job was gone; prune removes them with the job's last generation."""
    site.configure(
        backend="psnc",
        **{
            "backends.psnc.chkpnt": str(site.standin("chkpnt")),
            "backends.psnc.resume": str(site.standin("resume")),
        },
    )
    job = site.start_job("731.head", app_env={"COUNTER_LIMIT": "5"})
    kept = site.start_job("732.head")
    for each in (job, kept):
        assert call_hook(site.torque_args(each), site.config).returncode == 0
    job.stop()
    restart = call_direct(["--job", "731.head"], site.config, program="mom-restart")  # runs to its end
    assert restart.returncode == 0, restart.stderr
    locks = sorted(p.name for p in (site.spool / ".locks").glob("job-*"))
    assert any("731.head" in name for name in locks) and any("732.head" in name for name in locks), locks
    assert list((site.spool / ".sessions").glob("*731.head.json")), "no session record was written"
    [generation] = site.generations("731.head")
    named = calendar.timegm(time.strptime(generation.name.split("-")[1], "%Y%m%dT%H%M%SZ"))
    deadline = time.monotonic() + 10
    while time.time() - named <= 1:  # until it is older than 1s by its name's second
        assert time.monotonic() < deadline, f"{generation.name} never got older than 1s"
        time.sleep(0.05)
    pruned = call_direct(["prune", "--job", "731.head", "--older-than", "1s"], site.config)
    assert pruned.returncode == 0, pruned.stderr
    assert not generation.exists()
    left = sorted(p.name for p in (site.spool / ".locks").glob("job-*"))
    assert not any("731.head" in name for name in left), left
    assert any("732.head" in name for name in left), "a job that still has generations lost its lock"
    assert not list((site.spool / ".sessions").glob("*731.head.json"))


def test_an_ordinary_user_gets_one_line_saying_the_spool_is_roots(spool_with_jobs: Site) -> None:
    """Issue 26 #5: list, show, verify and prune run by an ordinary user printed "internal error:
    PermissionError ..." and exited 70. They say in one line that the spool is root's (77), and read
    nothing."""
    site = spool_with_jobs
    env = {"PATH": "/bin:/usr/bin", "MOM_CHECKPOINT_CONFIG": str(site.config)}
    [generation, *_] = site.generations("801.head")
    for args in (["list"], ["show", "801.head"], ["verify", str(generation)], ["prune"], ["vault-sync"]):
        result = subprocess.run(
            [str(installed("mom-checkpoint")), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            user=site.user.uid,
            group=site.user.gid,
            extra_groups=[],
            cwd="/",
        )
        assert result.returncode == 77, (args, result.returncode, result.stderr)
        assert result.stderr.count("\n") == 1 and "root's alone" in result.stderr, result.stderr
        assert "internal error" not in result.stderr and result.stdout == ""
