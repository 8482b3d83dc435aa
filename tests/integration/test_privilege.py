"""Privilege and file safety: the module run without root (as nobody, or as root with capabilities
dropped) refuses with one message; files the collection writes are root's, 0644/0755, under any
umask; no symlink planted on the way to a file it writes or removes is followed.

The kernel and the files are compared with test_bad_input's host_state() (bpftool inventory of
the test cgroup and bpffs, listings of bpffs and the scratch directory holding the persist root)."""

import collections
import json
import os
import shutil
import stat
import subprocess

import pytest
import test_bad_input
from test_bad_input import GOOD, NAME, settled_state

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import persistence
from ansible_collections.netbpf.tcp_rto.tests.support.paths import MANAGED_PYTHON, managed_cache_tag, python_env
from ansible_collections.netbpf.tcp_rto.tests.support.playbook import Playbook

pytestmark = pytest.mark.kernel
env = test_bad_input.env  # the fixture, shared

NOBODY = ["--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def interpreter(workdir, setpriv_args):
    """A managed-host Python that runs under setpriv with setpriv_args."""
    path = os.path.join(workdir, "python-setpriv")
    with open(path, "w") as handle:
        handle.write('#!/bin/sh\nexec setpriv %s %s "$@"\n' % (" ".join(setpriv_args), MANAGED_PYTHON))
    os.chmod(path, 0o755)
    os.chmod(workdir, 0o755)  # nobody must reach the wrapper
    return path


def playbook_as(tmp_path, setpriv_args):
    """A Playbook whose module runs with setpriv_args: pipelining feeds the AnsiballZ on stdin, so the
    unprivileged Python needs no access to root's remote tmp directory."""
    workdir = tmp_path / "as"
    workdir.mkdir()
    book = Playbook(str(workdir))
    with open(book.inventory, "w") as handle:
        handle.write(
            "localhost ansible_connection=local ansible_pipelining=true ansible_python_interpreter=%s\n"
            % interpreter(str(workdir), setpriv_args)
        )
    return book


def persistent_args(env):
    return env.args(persistent=True, _persist_root=env.scratch("root"), **GOOD)


# ---------------------------------------------------------------- not root


def assert_one_clear_message(result, missing, uid):
    assert result["status"] == "failed", result["_output"]
    assert "Traceback" not in json.dumps(result) and "module_stderr" not in result, result["_output"]
    assert result["msg"] == (
        "insufficient privileges (uid %d, missing %s): loading and attaching a BPF sock_ops program needs "
        "root, or CAP_BPF + CAP_NET_ADMIN (CAP_SYS_ADMIN + CAP_NET_ADMIN before Linux 5.8); run with "
        "become: true" % (uid, missing)
    )


REFUSED = [
    pytest.param(NOBODY, "CAP_NET_ADMIN, CAP_BPF or CAP_SYS_ADMIN", 65534, id="nobody"),
    pytest.param(["--inh-caps=-all", "--bounding-set=-net_admin"], "CAP_NET_ADMIN", 0, id="root-without-cap_net_admin"),
    pytest.param(
        ["--inh-caps=-all", "--bounding-set=-bpf,-sys_admin"],
        "CAP_BPF or CAP_SYS_ADMIN",
        0,
        id="root-without-cap_bpf-and-cap_sys_admin",
    ),
]


@pytest.mark.parametrize("state", ["present", "absent"])
@pytest.mark.parametrize(("setpriv_args", "missing", "uid"), REFUSED)
def test_without_privileges_through_ansible(playbook, env, tmp_path, setpriv_args, missing, uid, state):
    applied = playbook.module(**persistent_args(env))  # as root: an instance the runs must leave alone
    assert applied["status"] == "ok", applied["_output"]
    before = settled_state(env)
    result = playbook_as(tmp_path, setpriv_args).module(**dict(persistent_args(env), state=state))
    assert_one_clear_message(result, missing, uid)
    assert settled_state(env, before) == before


def test_module_utils_as_nobody(env):
    """reconcile.run, which the module and the boot-time restore call, run directly as nobody."""
    script = (
        "import sys, json\n"
        "from ansible_collections.netbpf.tcp_rto.plugins.module_utils import reconcile\n"
        "try:\n"
        "    reconcile.run(json.loads(sys.argv[1]))\n"
        "except reconcile.ERRORS as exc:\n"
        "    sys.exit(reconcile.describe_error(exc))\n"
    )
    params = dict(env.args(**GOOD), state="present", src=None, hz=None, direction="both", verify=True)
    before = settled_state(env)
    run = subprocess.run(
        ["setpriv", *NOBODY, MANAGED_PYTHON, "-c", script, json.dumps(params)],
        env=python_env(),
        check=False,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,
    )
    assert run.returncode == 1
    assert run.stderr.startswith("insufficient privileges (uid 65534, missing CAP_NET_ADMIN"), run.stderr
    assert "Traceback" not in run.stderr
    assert settled_state(env, before) == before


def test_cap_bpf_and_cap_net_admin_are_enough_on_5_8_and_later(env, tmp_path):
    """Root without CAP_SYS_ADMIN: the check lets it through, and the kernel agrees."""
    without_sys_admin = playbook_as(tmp_path, ["--inh-caps=-all", "--bounding-set=-sys_admin"])
    applied = without_sys_admin.module(**env.args(**GOOD))
    assert applied["status"] == "ok", applied["_output"]
    assert applied["verification"]["ok"] is True
    removed = without_sys_admin.module(**env.args(state="absent"))
    assert removed["status"] == "ok" and removed["changed"] is True, removed["_output"]


# ---------------------------------------------------------------- modes and owners


def entries(root):
    """(relative path, lstat) of everything under root."""
    found = []
    for directory, subdirs, files in os.walk(root):
        for name in subdirs + files:
            path = os.path.join(directory, name)
            found.append((os.path.relpath(path, root), os.lstat(path)))
    return sorted(found, key=lambda entry: entry[0])


@pytest.mark.parametrize("umask", [0o077, 0o000], ids=["umask-077", "umask-000"])
def test_modes_and_owners_under_any_umask(playbook, env, umask):
    root = env.scratch("root")
    os.mkdir(root)
    previous = os.umask(umask)  # ansible-playbook and the module inherit it
    try:
        applied = playbook.module(**persistent_args(env))
    finally:
        os.umask(previous)
    assert applied["status"] == "ok", applied["_output"]
    written = entries(root)
    kinds = collections.Counter(
        "dir" if stat.S_ISDIR(status.st_mode) else "link" if stat.S_ISLNK(status.st_mode) else "file"
        for _relative, status in written
    )
    # the object, the record, the unit, restore.py and the module_utils it imports, each compiled
    # beside it in __pycache__ (see tests/integration/test_persistence.py)
    assert kinds == {"dir": 16, "file": 4 + 2 * len(persistence.CODE_FILES), "link": 1}
    for relative, status in written:
        mode = stat.S_IMODE(status.st_mode)
        assert (status.st_uid, status.st_gid) == (0, 0), relative
        if stat.S_ISLNK(status.st_mode):
            assert os.readlink(os.path.join(root, relative)) == "../tcp-rto@.service"
        else:
            assert mode == (0o755 if stat.S_ISDIR(status.st_mode) else 0o644), (relative, oct(mode))
    for relative, status in entries(env.pin_dir):  # pins: only root may read or write them
        assert status.st_uid == 0 and stat.S_IMODE(status.st_mode) & 0o077 == 0, relative
    # a second run under the usual umask finds nothing to fix
    assert playbook.module(**persistent_args(env))["changed"] is False


# ---------------------------------------------------------------- symlinks on the way to persistence files

# Every path the collection writes, relative to the persist root: directories and files.
PERSISTENCE_PATHS = [
    "etc",
    "etc/tcp_rto",
    "etc/tcp_rto/%s.json" % NAME,
    "var",
    "var/lib",
    "var/lib/tcp_rto",
    "var/lib/tcp_rto/objects",
    "var/lib/tcp_rto/objects/%s.bpf.o" % NAME,
    "var/lib/tcp_rto/restore.py",
    "var/lib/tcp_rto/lib",
    "var/lib/tcp_rto/lib/ansible_collections/netbpf/tcp_rto/plugins/module_utils",
    "var/lib/tcp_rto/lib/ansible_collections/netbpf/tcp_rto/plugins/module_utils/host.py",
    "var/lib/tcp_rto/lib/ansible_collections/netbpf/tcp_rto/plugins/module_utils/__pycache__",
    "var/lib/tcp_rto/lib/ansible_collections/netbpf/tcp_rto/plugins/module_utils/__pycache__/host.%s.pyc"
    % managed_cache_tag(),
    "etc/systemd",
    "etc/systemd/system",
    "etc/systemd/system/tcp-rto@.service",
    "etc/systemd/system/multi-user.target.wants",
]
FILES = {path for path in PERSISTENCE_PATHS if path.endswith((".json", ".o", ".py", ".pyc", ".service"))}
SENTINEL = b"not the collection's\n"


def plant_symlink(env, root, relative):
    """A symlink at root/relative to a file (or a directory holding one) in the scratch directory
    that the module must neither change nor remove."""
    path = os.path.join(root, relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    target = env.scratch("target-" + relative.replace("/", "_"))
    if relative in FILES:
        with open(target, "wb") as handle:
            handle.write(SENTINEL)
    else:
        os.mkdir(target)
        with open(os.path.join(target, "sentinel"), "wb") as handle:
            handle.write(SENTINEL)
    os.symlink(target, path)
    return target


def sentinels(env):
    found = {}
    for directory, _subdirs, files in os.walk(env.scratch_dir):
        for name in files:
            if name.startswith("target-") or name == "sentinel":
                with open(os.path.join(directory, name), "rb") as handle:
                    found[os.path.join(directory, name)] = handle.read()
    return found


def assert_symlink_refused(result, path, before, env):
    assert result["status"] == "failed", result["_output"]
    assert "Traceback" not in json.dumps(result) and "module_stderr" not in result, result["_output"]
    assert result["msg"].startswith("%s is a symlink (to " % path), result["msg"]
    assert "remove the symlink" in result["msg"]
    assert settled_state(env, before) == before
    assert set(sentinels(env).values()) == {SENTINEL}


@pytest.mark.parametrize("relative", PERSISTENCE_PATHS)
def test_symlink_on_the_way_to_a_new_file(playbook, env, relative):
    root = env.scratch("root")
    plant_symlink(env, root, relative)
    before = settled_state(env)
    result = playbook.module(**persistent_args(env))
    assert_symlink_refused(result, os.path.join(root, relative), before, env)


@pytest.mark.parametrize("relative", PERSISTENCE_PATHS)
def test_symlink_on_the_way_to_a_file_absent_removes(playbook, env, relative):
    """state: absent of a persistent instance whose files someone moved behind a symlink."""
    root = env.scratch("root")
    applied = playbook.module(**persistent_args(env))
    assert applied["status"] == "ok", applied["_output"]
    path = os.path.join(root, relative)
    target = env.scratch("moved")
    shutil.move(path, target)
    os.symlink(target, path)
    before = settled_state(env)
    moved = sorted(os.path.relpath(os.path.join(d, n), target) for d, _s, names in os.walk(target) for n in names)
    result = playbook.module(**env.args(state="absent", _persist_root=root))
    assert result["status"] == "failed", result["_output"]
    assert result["msg"].startswith("%s is a symlink (to %s)" % (path, target)), result["msg"]
    assert settled_state(env, before) == before  # the instance stays applied, the moved files stay
    assert moved == sorted(
        os.path.relpath(os.path.join(d, n), target) for d, _s, names in os.walk(target) for n in names
    )


def test_planted_temporary_file_name_is_not_followed(playbook, env):
    """Files are written through a new, randomly named file; a symlink at the old fixed name
    <record>.tmp stays as it is and its target is not written."""
    root = env.scratch("root")
    plant_symlink(env, root, "etc/tcp_rto/%s.json.tmp" % NAME)
    FILES.add("etc/tcp_rto/%s.json.tmp" % NAME)
    applied = playbook.module(**persistent_args(env))
    assert applied["status"] == "ok", applied["_output"]
    assert set(sentinels(env).values()) == {SENTINEL}
    assert not [name for name in os.listdir(os.path.join(root, "etc/tcp_rto")) if name.startswith(".")]


def test_enablement_link_pointing_elsewhere_is_replaced_not_followed(playbook, env):
    root = env.scratch("root")
    link = os.path.join(root, "etc/systemd/system/multi-user.target.wants/tcp-rto@%s.service" % NAME)
    os.makedirs(os.path.dirname(link))
    target = env.scratch("target-unit")
    with open(target, "wb") as handle:
        handle.write(SENTINEL)
    os.symlink(target, link)
    applied = playbook.module(**persistent_args(env))
    assert applied["status"] == "ok", applied["_output"]
    assert os.readlink(link) == "../tcp-rto@.service"
    assert set(sentinels(env).values()) == {SENTINEL}
