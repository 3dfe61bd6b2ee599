"""The main job: a real batch job started and checkpointed exactly the way pbs_mom does it.

1. the job starts through mom-checkpoint-run (pbs_mom's $checkpoint_run_exe) as an ordinary user:
   session-leader shell -> job script shell -> a counting application, stdin a pipe, output to a file;
2. pbs_mom's periodic checkpoint: the installed mom-checkpoint is called through /bin/sh with the 8
   TORQUE arguments, PATH=/bin:/usr/bin, stderr read back (SIGNAL 0: the job keeps running);
3. the generation, its manifest and the pointer pbs_mom keeps are shown;
4. qhold: SIGNAL 15 checkpoints the job again and ends it, only after the checkpoint is complete;
5. pbs_mom's restart: mom-restart started as fork + setsid + execv with stdio on /dev/null brings the
   job back from the newest complete generation; its count goes on from where it was, and the
   application's exit status comes back as the restart program's.

Run it with `make demo` (it installs what it needs first). Needs root, like pbs_mom.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import (
    Site,
    User,
    call_hook,
    crash,
    make_base,
    remove_base,
    start_restart,
    verify_generation,
)


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def show(cmd: list[str]) -> None:
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=False)


def main() -> int:
    if os.geteuid() != 0:
        print("demo: run as root (pbs_mom runs its hooks as root)", file=sys.stderr)
        return 77
    user = User.named(os.environ.get("MOM_TEST_USER", "momtest"))
    base = make_base()
    site = Site(base, user)
    site.configure(keep=2, **{"backends.criu.run_as": "job-user"})
    try:
        say(f"config ({site.config}):")
        print(site.config.read_text(), end="")
        say(f"a job as pbs_mom starts it: mom-checkpoint-run /bin/bash, as {user.name}")
        job = site.start_job("42.demo", app_env={"COUNTER_LIMIT": "150", "COUNTER_EXIT": "7"})
        show(["ps", "-o", "pid,ppid,sid,user,args", "-s", str(job.session_id)])
        print(f"counting: {job.count()}")

        say("periodic checkpoint (SIGNAL 0), called as pbs_mom calls $checkpoint_script")
        args = site.torque_args(job)
        print("$ /bin/sh -c 'mom-checkpoint " + " ".join(map(str, args)) + " 2>&1 1>/dev/null'")
        result = call_hook(args, site.config)
        print(f"exit status {result.returncode}, stderr (the job comment on failure): {result.stderr!r}")
        if result.returncode != 0:
            return result.returncode
        count = job.count()
        time.sleep(1)
        print(f"the job keeps running: count {count} -> {job.count()}")

        [generation] = site.generations("42.demo")
        manifest = verify_generation(generation)
        say(f"the generation ({generation}), every checksum verified:")
        show(["ls", "-la", str(generation), str(generation / "image")])
        say("its manifest (summary; the whole file is JSON for jq):")
        summary = {
            "job": manifest["job"],
            "backend": {k: manifest["backend"][k] for k in ("name", "version", "run_as", "command")},
            "times": manifest["times"],
            "processes": [f"{p['pid']} {p['name']} rss={p['rss']}" for p in manifest["processes"]],
            "files": len(manifest["files"]),
            "total_bytes": manifest["total_bytes"],
        }
        print(json.dumps(summary, indent=2))
        pointer = Path(str(args[4])) / str(args[5])
        say(f"what pbs_mom keeps at CHECKPOINT_DIR/CHECKPOINT_NAME ({pointer}):")
        print(pointer.read_text(), end="")

        say("qhold: checkpoint and end the job (SIGNAL 15)")
        hold_args = site.torque_args(job, signal_number=15)
        result = call_hook(hold_args, site.config)
        print(f"exit status {result.returncode}, stderr {result.stderr!r}")
        job.wait_ended()
        held_at = job.count()
        print(f"the job has ended at count {held_at}; its generations:")
        for generation in site.generations("42.demo"):
            manifest = verify_generation(generation)
            frozen = manifest["times"]["frozen_s"]
            print(f"  {generation}  {manifest['total_bytes']} bytes, frozen {frozen:.3f}s, verified")
        crash(job)  # the old job's processes are gone (CRIU needs their PIDs back)
        job.output.write_text("")  # pbs_mom re-creates an empty .OU before a restart

        say("restart, as pbs_mom runs $restart_script (fork, setsid, execv, stdio on /dev/null, cwd /)")
        # pbs_mom passes the CHECKPOINT_DIR/CHECKPOINT_NAME of the job's last successful checkpoint
        restart_args = [job.session_id, job.job_id, user.name, user.name, hold_args[4], hold_args[5]]
        print("$ mom-restart " + " ".join(map(str, restart_args)))
        restart = start_restart(restart_args, site.config)
        status = restart.wait(timeout=120)
        numbers = [int(line) for line in job.output.read_text().splitlines() if line.strip().isdigit()]
        print(
            f"the job's output holds {numbers[0]}..{numbers[-1]}: what it printed before the hold (put back "
            f"into the re-created file), then on from count {held_at + 1}"
        )
        print(f"mom-restart exit status {status} (the application's own exit status: 7)")
        if numbers != list(range(1, numbers[-1] + 1)) or numbers[-1] <= held_at or status != 7:
            print("demo: the restarted job did not continue where it was", file=sys.stderr)
            return 1
        say("the hook's log (JSON lines):")
        for event in site.log_events():
            print(f"  {event['timestamp']} {event['event']}")
        return 0
    finally:
        site.stop_jobs()
        remove_base(base)


if __name__ == "__main__":
    raise SystemExit(main())
