"""cgroups.py against this machine's /proc/mounts and its cgroup v2 and v1 hierarchies, and tmp
files for what this machine does not have."""

import os
import tempfile

import pytest

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import cgroups, host
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.host import HostError
from ansible_collections.netbpf.tcp_rto.tests.support import sandbox

CGROUP_V1_DIR = "/sys/fs/cgroup/cpu"  # a cgroup v1 hierarchy on this (hybrid) machine


def test_cgroup2_mount_of_this_machine():
    assert cgroups.cgroup2_mount() == sandbox.cgroup2_mount()
    assert host.fs_type(cgroups.cgroup2_mount()) == host.CGROUP2_SUPER_MAGIC


def test_cgroup2_mount_missing(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text("cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\nproc /proc proc rw 0 0\n")
    with pytest.raises(HostError) as error:
        cgroups.cgroup2_mount(str(mounts))
    message = str(error.value)
    assert "systemd.unified_cgroup_hierarchy=1" in message
    assert "mount -t cgroup2 none /sys/fs/cgroup/unified" in message


def test_cgroup2_mount_unreadable(tmp_path):
    with pytest.raises(HostError, match="cannot read"):
        cgroups.cgroup2_mount(str(tmp_path / "no-such-file"))


def test_cgroup2_mount_escaped_path(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text("cgroup2 /mnt/my\\040cgroups cgroup2 rw 0 0\n")
    assert cgroups.cgroup2_mount(str(mounts)) == "/mnt/my cgroups"


def test_resolve_cgroup_real(cgroup):
    assert cgroups.resolve_cgroup(cgroup) == os.path.realpath(cgroup)
    assert cgroups.resolve_cgroup(cgroup + "/") == os.path.realpath(cgroup)


def test_resolve_cgroup_default_is_the_mount():
    mount = cgroups.cgroup2_mount()
    assert cgroups.resolve_cgroup() == os.path.realpath(mount)
    assert cgroups.resolve_cgroup(None, mount) == os.path.realpath(mount)


def test_resolve_cgroup_relative_to_mount(cgroup):
    mount = cgroups.cgroup2_mount()
    assert cgroups.resolve_cgroup(os.path.basename(cgroup), mount) == os.path.realpath(cgroup)


def test_resolve_cgroup_dotdot_inside(cgroup):
    os.mkdir(os.path.join(cgroup, "child"))
    assert cgroups.resolve_cgroup(os.path.join(cgroup, "child", "..")) == os.path.realpath(cgroup)


def test_resolve_cgroup_missing(cgroup):
    with pytest.raises(HostError, match="does not exist: create it"):
        cgroups.resolve_cgroup(os.path.join(cgroup, "missing"))


def test_resolve_cgroup_not_a_directory(cgroup):
    with pytest.raises(HostError, match="not a directory"):
        cgroups.resolve_cgroup(os.path.join(cgroup, "cgroup.procs"))


def test_resolve_cgroup_v1_directory():
    assert host.fs_type(CGROUP_V1_DIR) == host.CGROUP_SUPER_MAGIC  # hybrid machine
    with pytest.raises(HostError) as error:
        cgroups.resolve_cgroup(CGROUP_V1_DIR)
    assert "cgroup v1" in str(error.value) and cgroups.cgroup2_mount() in str(error.value)


def test_resolve_cgroup_tmpfs():
    # /sys/fs/cgroup is the tmpfs holding the hybrid mounts; /dev/shm is tmpfs anyway.
    for path in ("/dev/shm", os.path.dirname(cgroups.cgroup2_mount())):
        if host.fs_type(path) != 0x01021994:
            continue
        with pytest.raises(HostError, match="tmpfs filesystem, not cgroup2"):
            cgroups.resolve_cgroup(path)


def test_resolve_cgroup_plain_dir(tmp_path):
    with pytest.raises(HostError, match="not cgroup2"):
        cgroups.resolve_cgroup(str(tmp_path))


def test_resolve_cgroup_dotdot_escape(cgroup):
    # cgroup/../.. is the directory holding the cgroup2 mount: another filesystem
    with pytest.raises(HostError, match="not cgroup2"):
        cgroups.resolve_cgroup(os.path.join(cgroup, "..", ".."))
    # ... and ../../cpu is a cgroup v1 directory
    with pytest.raises(HostError, match="cgroup v1"):
        cgroups.resolve_cgroup(os.path.join(cgroups.cgroup2_mount(), "..", "cpu"))


def test_resolve_cgroup_outside_mount(cgroup):
    # Real cgroup2 directories outside the given mount: taken as 'mount' here, the fixture cgroup makes
    # its parent (the real v2 root) lie outside; reached through '..' and through a symlink.
    inner = os.path.join(cgroup, "inner")
    os.mkdir(inner)
    with pytest.raises(HostError, match="outside the cgroup v2 mount"):
        cgroups.resolve_cgroup(os.path.join(inner, "..", ".."), mount=cgroup)
    link_dir = tempfile.mkdtemp()
    try:
        link = os.path.join(link_dir, "cg")
        os.symlink(os.path.dirname(cgroup), link)
        with pytest.raises(HostError, match="outside the cgroup v2 mount"):
            cgroups.resolve_cgroup(link, mount=cgroup)
        assert cgroups.resolve_cgroup(os.path.join(link, os.path.basename(cgroup)), mount=cgroup) == cgroup
    finally:
        os.unlink(os.path.join(link_dir, "cg"))
        os.rmdir(link_dir)


def test_resolve_cgroup_symlinks(cgroup, tmp_path):
    to_cgroup = tmp_path / "to_cgroup"
    to_cgroup.symlink_to(cgroup)
    assert cgroups.resolve_cgroup(str(to_cgroup)) == os.path.realpath(cgroup)
    to_v1 = tmp_path / "to_v1"
    to_v1.symlink_to(CGROUP_V1_DIR)
    with pytest.raises(HostError, match="resolves to %s.*cgroup v1" % CGROUP_V1_DIR):
        cgroups.resolve_cgroup(str(to_v1))
    to_plain = tmp_path / "to_plain"
    to_plain.symlink_to(tmp_path)
    with pytest.raises(HostError, match="not cgroup2"):
        cgroups.resolve_cgroup(str(to_plain))
