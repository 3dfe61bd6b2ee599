"""Issue 28 #6: a job whose node file (PBS_NODEFILE, root's, in pbs_mom's aux folder) names other hosts
is refused before the dump: this node's checkpoint would restore half of it. The node file is trusted
only where root wrote it and no one else could have."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mom_checkpoint.batch import nodes
from mom_checkpoint.batch.nodes import other_hosts, others_in_exec_host, refusal
from mom_checkpoint.platform.errors import UsageError
from tests.helpers import User

JOB = "42.head.example.org"


@pytest.fixture
def aux(tmp_path: Path, root_user: User) -> Path:
    """An aux folder as pbs_mom makes it: root's, 0755."""
    folder = tmp_path / "aux"
    folder.mkdir()
    os.chown(folder, 0, 0)
    folder.chmod(0o755)
    return folder


def node_file(folder: Path, text: str | bytes, name: str = JOB, mode: int = 0o644) -> Path:
    """A node file as pbs_mom writes it: root's, 0644."""
    path = folder / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    os.chown(path, 0, 0)
    path.chmod(mode)
    return path


def test_the_other_hosts_each_once_by_short_name_without_case(aux: Path) -> None:
    node_file(aux, "node01.cluster\nnode01.cluster\nNODE02.cluster\nnode02\n\nnode03\nNode01\n")
    assert other_hosts([str(aux)], JOB, "node01") == ["NODE02.cluster", "node03"]
    assert other_hosts([str(aux)], JOB, "NODE01.other.domain") == ["NODE02.cluster", "node03"]
    assert other_hosts([str(aux)], JOB, "node03.cluster") == ["node01.cluster", "NODE02.cluster"]


def test_a_job_of_this_node_only_has_no_other_hosts(aux: Path) -> None:
    node_file(aux, "node01\n" * 64)
    assert other_hosts([str(aux)], JOB, "node01.cluster") == []


def test_torques_nodefile_suffix_is_taken_off(aux: Path) -> None:
    node_file(aux, "node01-ib\nnode01-ib\nnode02-ib\n")
    assert other_hosts([str(aux)], JOB, "node01", nodefile_suffix="-ib") == ["node02"]
    assert other_hosts([str(aux)], JOB, "node01") == ["node01-ib", "node02-ib"]  # without it: not this host


def test_no_node_file_in_any_folder_is_none(aux: Path, tmp_path: Path) -> None:
    assert other_hosts([str(aux), str(tmp_path / "no-such-folder")], JOB, "node01") is None
    assert other_hosts([], JOB, "node01") is None


def test_the_first_folder_holding_one_is_read(aux: Path, tmp_path: Path) -> None:
    second = tmp_path / "pbs-aux"
    second.mkdir(mode=0o755)
    node_file(second, "node01\nnode07\n")
    assert other_hosts([str(tmp_path / "missing"), str(aux), str(second)], JOB, "node01") == ["node07"]


def test_a_node_file_of_the_jobs_user_is_not_trusted(aux: Path, job_user: User) -> None:
    path = node_file(aux, "node01\n")  # the user would say their multi-node job runs here only
    os.chown(path, job_user.uid, job_user.gid)
    assert other_hosts([str(aux)], JOB, "node01") is None


def test_a_node_file_others_can_write_is_not_trusted(aux: Path) -> None:
    node_file(aux, "node01\nnode02\n", mode=0o664)
    assert other_hosts([str(aux)], JOB, "node01") is None
    (aux / JOB).chmod(0o646)
    assert other_hosts([str(aux)], JOB, "node01") is None
    (aux / JOB).chmod(0o600)  # root's and private: trusted
    assert other_hosts([str(aux)], JOB, "node01") == ["node02"]


def test_a_symlinked_node_file_is_refused_not_followed(aux: Path, tmp_path: Path) -> None:
    target = node_file(tmp_path, "node01\nnode02\n", name="elsewhere")
    (aux / JOB).symlink_to(target)
    assert other_hosts([str(aux)], JOB, "node01") is None


def test_a_fifo_at_the_name_is_refused_without_hanging(aux: Path) -> None:
    os.mkfifo(aux / JOB)
    assert other_hosts([str(aux)], JOB, "node01") is None


def test_a_folder_group_or_others_can_write_is_refused(aux: Path) -> None:
    node_file(aux, "node01\nnode02\n")
    for mode in (0o775, 0o757, 0o1777):
        aux.chmod(mode)
        assert other_hosts([str(aux)], JOB, "node01") is None, oct(mode)
    aux.chmod(0o755)
    assert other_hosts([str(aux)], JOB, "node01") == ["node02"]


def test_a_folder_of_the_users_is_refused(aux: Path, job_user: User) -> None:
    node_file(aux, "node01\nnode02\n")
    os.chown(aux, job_user.uid, job_user.gid)
    assert other_hosts([str(aux)], JOB, "node01") is None


def test_a_link_to_the_folder_is_followed_only_where_root_made_it(
    aux: Path, tmp_path: Path, job_user: User
) -> None:
    node_file(aux, "node01\nnode02\n")
    tmp_path.chmod(0o755)
    (tmp_path / "root-link").symlink_to(aux)  # /var/spool/torque -> /var/lib/torque, say
    assert other_hosts([str(tmp_path / "root-link")], JOB, "node01") == ["node02"]
    users = tmp_path / "users"
    users.mkdir()
    os.chown(users, job_user.uid, job_user.gid)
    (users / "link").symlink_to(aux)  # anyone could have made this one
    assert other_hosts([str(users / "link")], JOB, "node01") is None


def test_an_oversize_node_file_is_read_only_to_the_bound(aux: Path) -> None:
    # node03 and a padding line within the bound, then a line the bound cuts, then node02 beyond it
    head = b"node03\n" + b"node01\n" * ((nodes.MAX_NODE_FILE - 10) // 7)
    pad = b"X" * (nodes.MAX_NODE_FILE - 3 - len(head))
    head += pad + b"\n"
    assert len(head) == nodes.MAX_NODE_FILE - 2  # "node99\n" starts 2 bytes before the bound
    node_file(aux, head + b"node99\n" + b"node02\n" * 500_000)
    assert (aux / JOB).stat().st_size > 3 * nodes.MAX_NODE_FILE
    assert other_hosts([str(aux)], JOB, "node01") == ["node03", *([pad.decode()] if pad else [])]


def test_undecodable_bytes_are_replaced(aux: Path) -> None:
    node_file(aux, b"node01\nn\xffde\xfe02\n")
    (host,) = other_hosts([str(aux)], JOB, "node01") or [""]
    assert host == "n\ufffdde\ufffd02"
    line = refusal([host], job_id=JOB)
    assert line.isascii() and "'n\\ufffdde\\ufffd02'" in line


@pytest.mark.parametrize(
    "job_id", ["", "-", "../../etc/passwd", "42/../x", ".42.head", "..", "42.head\n", "a" * 201]
)
def test_a_hostile_job_id_is_refused(job_id: str, aux: Path) -> None:
    node_file(aux, "node01\nnode02\n", name="passwd")
    with pytest.raises(UsageError):
        other_hosts([str(aux)], job_id, "node01")


def test_an_empty_host_name_for_this_node_is_a_bug() -> None:
    with pytest.raises(ValueError, match="this_host"):
        other_hosts(["/nonexistent"], JOB, " ")


def test_exec_host_in_torque_and_openpbs_forms() -> None:
    assert others_in_exec_host("node01/0-3+node02/0-3+NODE01.cluster/4", "node01") == ["node02"]
    assert others_in_exec_host("node01/0*2+node02/0*2+node03/1", "node02.cluster") == ["node01", "node03"]
    assert others_in_exec_host("node01/0", "node01") == []
    assert others_in_exec_host("", "node01") == []


# -- the refusal line ---------------------------------------------------------------------------------


def test_the_refusal_names_the_other_nodes_and_the_way_out() -> None:
    assert refusal(["node02", "node03"], job_id="42.head") == (
        "job 42.head runs on 3 nodes (also node02, node03): this node cannot checkpoint the processes on "
        "the others, so its checkpoint would restore half a job; use MPI-level checkpointing, or set "
        'multi_node = "allow" where a site\'s jobs coordinate their own'
    )
    assert refusal(["node02"]).startswith("the job runs on 2 nodes (also node02): ")
    assert refusal([]).startswith("the job runs on more than one node: this node cannot")


def test_the_refusal_is_bounded_and_counts_the_rest() -> None:
    hosts = [f"node{i:05d}.a-very-long-domain-name.example.org" * 5 for i in range(10_000)]
    line = refusal(hosts, job_id="4" * 200)
    assert "runs on 10001 nodes (also node00000.a-very-long-domain-name.exa..., " in line
    assert " and 9997 more): this node cannot checkpoint" in line
    escaped = refusal(["\u202e" * 100 + str(i) for i in range(10_000)], job_id="4" * 200)  # the longest
    assert len(line) <= len(escaped) <= 450
    assert refusal(["node02", "NODE02.cluster", "node02"]).startswith("the job runs on 2 nodes (also node02)")


def test_a_hostile_host_name_cannot_break_the_line() -> None:
    line = refusal(["node02\nComment: all is well", "n\x1bde\u202e03"], job_id="42.head")
    assert "\n" not in line and line.isascii() and line.isprintable()
    assert "(also 'node02\\nComment: all is well', 'n\\x1bde\\u202e03'): " in line
