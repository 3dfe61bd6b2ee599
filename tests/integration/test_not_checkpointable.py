"""Jobs that cannot be checkpointed are refused before the dump (issue 28 #6): one line for the job's
comment, exit 84, the job untouched and nothing written; the admin may allow multi-node jobs per site."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Site, call_hook

pytestmark = pytest.mark.usefixtures("criu")


@contextlib.contextmanager
def verbs_device() -> Iterator[Path]:
    """An RDMA verbs device node as an InfiniBand node has one (here /dev/null's numbers: CRIU itself
    could dump it, so a refusal shows the check ran before CRIU)."""
    folder = Path("/dev/infiniband")
    made_folder = not folder.exists()
    folder.mkdir(exist_ok=True)
    device = folder / f"uverbs{os.getpid() % 1000 + 100}"
    os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    device.chmod(0o666)
    try:
        yield device
    finally:
        device.unlink()
        if made_folder:
            folder.rmdir()


def test_a_job_holding_an_rdma_device_is_refused_untouched(site: Site) -> None:
    site.configure(**{"backends.criu.run_as": "job-user"})
    with verbs_device() as device:
        job = site.start_job("811.head", app_env={"COUNTER_HOLD": str(device)})
        job.wait_count(3)
        held = call_hook(site.torque_args(job, signal_number=15), site.config)  # a qhold
        assert held.returncode == 84, held.stderr
        assert held.stderr.count("\n") == 1 and held.stderr.startswith("mom-checkpoint: ")
        assert f"{device} (RDMA/InfiniBand verbs)" in held.stderr and "MPI-level" in held.stderr
        counted = job.count()
        assert job.wait_count(counted + 3) > counted, "a refused checkpoint must never end the job"
        assert site.generations("811.head") == []
        assert not [e for e in site.log_events() if e["event"] == "dump.done"], "the checkpointer ran"
        job.stop()


def test_a_job_on_several_nodes_is_refused_unless_the_site_allows_it(site: Site) -> None:
    aux = site.base / "torque" / "aux"
    aux.mkdir(parents=True)
    site.configure(torque_aux_dirs=[str(aux)], **{"backends.criu.run_as": "job-user"})
    job = site.start_job("812.head")
    here = os.uname().nodename.split(".")[0]
    (aux / "812.head").write_text(f"{here}\n{here}\nnode77\nnode78.cluster\n")  # PBS_NODEFILE, root's 0644
    (aux / "812.head").chmod(0o644)
    refused = call_hook(site.torque_args(job), site.config)
    assert refused.returncode == 84, refused.stderr
    assert "node77" in refused.stderr and "MPI-level" in refused.stderr and refused.stderr.count("\n") == 1
    assert site.generations("812.head") == [] and job.is_running()

    # a node file the job's user could have written is not taken as the job's node list
    os.chown(aux / "812.head", site.user.uid, site.user.gid)
    assert call_hook(site.torque_args(job), site.config).returncode == 0

    os.chown(aux / "812.head", 0, 0)
    site.configure(torque_aux_dirs=[str(aux)], multi_node="allow", **{"backends.criu.run_as": "job-user"})
    allowed = call_hook(site.torque_args(job), site.config)
    assert allowed.returncode == 0, allowed.stderr
    assert len(site.generations("812.head")) == 2
    job.stop()
