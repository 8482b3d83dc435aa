"""Kernel sandboxes for tests and benchmarks: child cgroups and private bpffs mounts.

Everything made here carries SANDBOX_PREFIX in its name so that a sweep can remove what a killed
run left, and nothing else is ever touched: no attach to a root cgroup, no pin under /sys/fs/bpf.
A private bpffs mount holds its own pins; unmounting it drops them with the mount.
"""

import contextlib
import os
import signal
import subprocess
import uuid

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import probe_child

SANDBOX_PREFIX = "tcp_rto_test-"
BPFFS_PARENT = "/run"


def _owned_name(label):
    """<prefix><label>-<pid>-<random>: the pid tells a sweep whether the owner still runs."""
    return "%s%s-%d-%s" % (SANDBOX_PREFIX, label, os.getpid(), uuid.uuid4().hex[:8])


def _owner_gone(name):
    try:
        pid = int(name.rsplit("-", 2)[-2])
    except (IndexError, ValueError):
        return True
    return not os.path.exists("/proc/%d" % pid)


def cgroup2_mount():
    with open("/proc/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if fields[2] == "cgroup2":
                return fields[1]
    raise RuntimeError("no cgroup2 mount on this machine")


def _kill_members(cgroup):
    kill_file = os.path.join(cgroup, "cgroup.kill")
    if os.path.exists(kill_file):
        with open(kill_file, "w") as handle:
            handle.write("1")
    else:
        with open(os.path.join(cgroup, "cgroup.procs")) as handle:
            for pid in handle.read().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)


def remove_cgroup_tree(cgroup):
    """Remove a cgroup and its descendants, killing their processes first."""
    if not os.path.isdir(cgroup):
        return
    for entry in os.listdir(cgroup):
        child = os.path.join(cgroup, entry)
        if os.path.isdir(child):
            remove_cgroup_tree(child)
    _kill_members(cgroup)
    probe_child.remove_empty_cgroup(cgroup)


def make_cgroup(parent=None, label="cg"):
    path = os.path.join(parent or cgroup2_mount(), _owned_name(label))
    os.mkdir(path)
    return path


@contextlib.contextmanager
def sandbox_cgroup(parent=None, label="cg"):
    path = make_cgroup(parent, label)
    try:
        yield path
    finally:
        remove_cgroup_tree(path)


def mount_bpffs():
    path = os.path.join(BPFFS_PARENT, _owned_name("bpffs"))
    os.mkdir(path, 0o700)
    subprocess.run(["mount", "-t", "bpf", "bpf", path], check=True)
    return path


def unmount_bpffs(path):
    subprocess.run(["umount", "-l", path], check=False)
    with contextlib.suppress(OSError):
        os.rmdir(path)
    _remove_instance_locks(path)


def _remove_instance_locks(bpffs):
    """The module's lock files (see plugins/module_utils/lock.py) of instances pinned in bpffs."""
    lock_dir = "/run/tcp_rto"
    if not os.path.isdir(lock_dir):
        return
    for entry in os.listdir(lock_dir):
        path = os.path.join(lock_dir, entry)
        with contextlib.suppress(OSError, ValueError):
            with open(path) as handle:
                fields = dict(line.rstrip("\n").split(" ", 1) for line in handle)
            if fields.get("pin_dir", "").startswith(bpffs + "/"):
                os.unlink(path)


@contextlib.contextmanager
def sandbox_bpffs():
    path = mount_bpffs()
    try:
        yield path
    finally:
        unmount_bpffs(path)


def sweep_leftovers():
    """Remove sandboxes that an interrupted earlier run left: ours only (by prefix), and only those
    whose creating process is gone, so that test sessions running side by side do not collide."""

    def stale(path):
        name = os.path.basename(path)
        return name.startswith(SANDBOX_PREFIX) and _owner_gone(name)

    with open("/proc/mounts") as mounts:
        stale_mounts = [line.split()[1] for line in mounts if line.split()[2] == "bpf" and stale(line.split()[1])]
    for path in stale_mounts:
        unmount_bpffs(path)
    for entry in os.listdir(BPFFS_PARENT):
        if stale(entry):
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(BPFFS_PARENT, entry))
    root = cgroup2_mount()
    for entry in os.listdir(root):
        if stale(entry):
            remove_cgroup_tree(os.path.join(root, entry))
