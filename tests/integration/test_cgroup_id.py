"""Cgroup ids (issue 11): the id the kernel gives a cgroup in link info is its kernfs node id, the
8-byte file handle of the directory (name_to_handle_at), not its st_ino (a 32-bit ino_t keeps
only the low half; before 5.5 the id also carried the generation). Every comparison of a cgroup
with a link's cgroup_id goes through cgroups.cgroup_id: with a stat whose inode numbers are not the
ids, the module still finds its own link and tells a foreign link from a legacy attachment."""

import errno
import os
import stat

import pytest

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import bpf_info, bpf_syscall, cgroups, reconcile
from ansible_collections.netbpf.tcp_rto.tests.support import aids
from ansible_collections.netbpf.tcp_rto.tests.support.foreign_sockops import ForeignProgram
from ansible_collections.netbpf.tcp_rto.tests.support.reconcile_run import module_params

pytestmark = pytest.mark.kernel


@pytest.fixture
def stat_without_cgroup_ids(monkeypatch):
    """os.stat giving every cgroup v2 directory an inode number that is not its cgroup id, as a
    32-bit ino_t does for a large id (the ids on this machine are small enough to fit)."""
    mount = cgroups.cgroup2_mount()
    real_stat = os.stat

    def stat_with_other_inodes(path, *args, **kwargs):
        status = real_stat(path, *args, **kwargs)
        name = os.fsdecode(path) if isinstance(path, (str, bytes)) else ""
        if (name == mount or name.startswith(mount + "/")) and stat.S_ISDIR(status.st_mode):
            fields = list(status[:10])
            fields[1] = status.st_ino ^ 0x80000000
            return os.stat_result(fields)
        return status

    monkeypatch.setattr(os, "stat", stat_with_other_inodes)


@pytest.fixture
def foreign_link(cgroup, bpffs):
    """A foreign program attached to the sandbox cgroup by a pinned bpf_link -> its link info."""
    program = ForeignProgram(bpffs, "pass", "cgid")
    program.attach(cgroup, "link")
    try:
        with bpf_syscall.closing_fd(bpf_syscall.obj_get(program.attachments[0][2])) as link_fd:
            yield bpf_info.link_info(link_fd)
    finally:
        program.detach_all()


def test_cgroup_id_is_the_id_of_a_link_on_the_cgroup(cgroup, foreign_link, stat_without_cgroup_ids):
    assert foreign_link.cgroup_id != 0
    assert os.stat(cgroup).st_ino != foreign_link.cgroup_id  # the stand-in is in force
    assert cgroups.cgroup_id(cgroup) == foreign_link.cgroup_id
    parent = os.path.dirname(cgroup)
    assert cgroups.cgroup_id(parent) not in (0, foreign_link.cgroup_id)


def test_cgroup_id_of_a_missing_cgroup_is_an_os_error(cgroup):
    with pytest.raises(OSError) as caught:
        cgroups.cgroup_id(os.path.join(cgroup, "missing"))
    assert caught.value.errno == errno.ENOENT


def test_module_finds_links_by_cgroup_id(cgroup, bpffs, tmp_path, foreign_link, stat_without_cgroup_ids):
    params = module_params(
        name="cgid",
        cgroup=cgroup,
        rto_ms=200,
        pin_dir=os.path.join(bpffs, "tcp_rto"),
        mount_bpffs=False,
        _persist_root=str(tmp_path),
    )
    with aids.applied(params) as params:
        check_links_found_by_cgroup_id(params, foreign_link)


def check_links_found_by_cgroup_id(params, foreign_link):
    try:
        first = reconcile.run(params)
        assert first["verification"]["ok"] is True
        foreign = [entry for entry in first["foreign_programs"] if entry["id"] == foreign_link.prog_id]
        assert [entry["attach"] for entry in foreign] == ["link"]
        # Its own link counts as attached where it is: a rerun changes nothing.
        again = reconcile.run(params)
        assert (again["changed"], again["actions"], again["drift"]) == (False, [], [])
    finally:
        reconcile.run(dict(params, state="absent"))
