"""The module on this kernel with each probed feature forced missing (TCP_RTO_FORCE_MISSING, the way a
kernel without it answers its probe): it applies, reruns unchanged and removes an instance with what
is left (BPF_PROG_ATTACH with BPF_F_ALLOW_MULTI where a link feature is missing), or refuses before
touching anything where the program cannot run. An instance attached through a bpf_link by a run
that had every link feature is moved to a legacy attachment, or removed, by a run that lacks one."""

import errno
import os

import pytest

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import bpf_info, bpf_syscall, features
from ansible_collections.netbpf.tcp_rto.tests.support import reconcile_run
from ansible_collections.netbpf.tcp_rto.tests.support.bpf_inventory import cgroup_program_ids

pytestmark = pytest.mark.kernel

NAME = "feat"
RULES = [{"dest": "127.0.0.0/8", "rto_ms": 200}]
REQUIRED = ("sock_ops", "prog_query")  # the program cannot run, or the module cannot see a cgroup
USABLE = [name for name in features.PROBE_NAMES if name not in REQUIRED]


def params(cgroup, bpffs, **options):
    return reconcile_run.module_params(
        name=NAME, cgroup=cgroup, pin_dir=os.path.join(bpffs, "tcp_rto"), mount_bpffs=False, rules=RULES, **options
    )


def run_ok(request, missing=None):
    returncode, result, err = reconcile_run.run(request, force_missing=missing)
    assert returncode == 0, (result, err)
    return result


def links_of(prog_id):
    """Ids of the bpf_links that hold the program."""
    return [info.id for info in bpf_info.link_infos() if info.prog_id == prog_id]


def link_exists(link_id):
    try:
        os.close(bpf_info.link_get_fd_by_id(link_id))
    except bpf_syscall.BpfError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def assert_removed(result, cgroup, bpffs):
    assert result["changed"] is True
    assert cgroup_program_ids(cgroup) == []
    assert not os.path.exists(os.path.join(bpffs, "tcp_rto", NAME))


def apply_with_links(cgroup, bpffs):
    """An instance as a run with every link feature makes it: -> (program id, link id)."""
    applied = run_ok(params(cgroup, bpffs))
    assert applied["instance"]["attach_mode"] == "link"
    prog_id = applied["instance"]["program_id"]
    [link_id] = links_of(prog_id)
    return prog_id, link_id


@pytest.mark.parametrize("name", USABLE)
def test_apply_rerun_remove_with_a_feature_missing(cgroup, bpffs, name):
    mode = "multi" if name in features.LINK_FEATURES else "link"
    applied = run_ok(params(cgroup, bpffs), name)
    assert applied["changed"] is True
    assert applied["kernel"]["features"][name] is False
    assert all(applied["kernel"]["features"][other] for other in features.PROBE_NAMES if other != name)
    assert applied["instance"]["attach_mode"] == mode
    assert applied["verification"]["ok"], applied["verification"]
    prog_id = applied["instance"]["program_id"]
    assert cgroup_program_ids(cgroup) == [prog_id]
    assert len(links_of(prog_id)) == (1 if mode == "link" else 0)

    again = run_ok(params(cgroup, bpffs), name)
    assert (again["changed"], again["actions"], again["drift"]) == (False, [], [])
    assert again["instance"]["program_id"] == prog_id

    assert_removed(run_ok(params(cgroup, bpffs, state="absent"), name), cgroup, bpffs)


@pytest.mark.parametrize("name", REQUIRED)
def test_refuses_a_kernel_that_cannot_run_the_program(cgroup, bpffs, name):
    returncode, result, err = reconcile_run.run(params(cgroup, bpffs), force_missing=name)
    assert returncode == 1, (result, err)
    assert "4.16" in result["error"] and "upgrade the kernel" in result["error"]
    assert cgroup_program_ids(cgroup) == []
    assert not os.path.exists(os.path.join(bpffs, "tcp_rto"))


def test_legacy_attach_refused_without_allow_multi(cgroup, bpffs):
    returncode, result, err = reconcile_run.run(params(cgroup, bpffs, _legacy_attach=True), force_missing="allow_multi")
    assert returncode == 1, (result, err)
    assert "BPF_F_ALLOW_MULTI (4.15)" in result["error"]
    assert cgroup_program_ids(cgroup) == []


@pytest.mark.parametrize("missing", ["link_info", "link_detach", "link_info,link_detach", "link_update", "cgroup_link"])
def test_link_instance_moves_to_multi_where_a_link_feature_is_missing(cgroup, bpffs, missing):
    """As on 5.7 (no link info, no BPF_LINK_DETACH) or 5.8 (no BPF_LINK_DETACH) after a run that
    attached through a link: the next run attaches a second copy with multi, then lets the link go."""
    old_prog, link_id = apply_with_links(cgroup, bpffs)
    moved = run_ok(params(cgroup, bpffs), missing)
    assert moved["changed"] is True
    assert moved["instance"]["attach_mode"] == "multi"
    assert "detach from %s (link)" % cgroup in moved["actions"]
    assert moved["verification"]["ok"], moved["verification"]
    new_prog = moved["instance"]["program_id"]
    assert new_prog != old_prog
    assert cgroup_program_ids(cgroup) == [new_prog]
    assert not link_exists(link_id) and links_of(new_prog) == []
    assert not os.path.exists(os.path.join(bpffs, "tcp_rto", NAME, "link"))

    again = run_ok(params(cgroup, bpffs), missing)
    assert (again["changed"], again["actions"]) == (False, [])
    assert again["instance"]["program_id"] == new_prog

    assert_removed(run_ok(params(cgroup, bpffs, state="absent"), missing), cgroup, bpffs)


@pytest.mark.parametrize("missing", ["link_detach", "link_info", "link_info,link_detach"])
def test_link_instance_removed_where_a_link_feature_is_missing(cgroup, bpffs, missing):
    _prog_id, link_id = apply_with_links(cgroup, bpffs)
    assert_removed(run_ok(params(cgroup, bpffs, state="absent"), missing), cgroup, bpffs)
    assert not link_exists(link_id)


@pytest.mark.slow  # a long scenario: in tests/run, not in the -m 'not slow' loop
def test_removal_without_link_detach_names_a_link_held_elsewhere(cgroup, bpffs):
    """Without BPF_LINK_DETACH a link goes with its last holder: one held by another process keeps
    the program attached, and the run says so instead of reporting it removed."""
    prog_id, link_id = apply_with_links(cgroup, bpffs)
    held = bpf_syscall.obj_get(os.path.join(bpffs, "tcp_rto", NAME, "link"))
    try:
        returncode, result, err = reconcile_run.run(params(cgroup, bpffs, state="absent"), force_missing="link_detach")
        assert returncode == 1, (result, err)
        assert "another process holds the link open" in result["error"] and "BPF_LINK_DETACH" in result["error"]
        assert cgroup_program_ids(cgroup) == [prog_id]
    finally:
        os.close(held)
    assert cgroup_program_ids(cgroup) == []  # the link went with its last fd
    assert not link_exists(link_id)
    again = run_ok(params(cgroup, bpffs, state="absent"), "link_detach")
    assert_removed(again, cgroup, bpffs)


def test_link_instance_without_its_record_is_repaired_without_link_info(cgroup, bpffs):
    """The meta pin (the record of cgroup and attach mode) deleted, and no link info to read: the
    pinned link and BPF_PROG_QUERY still show the program attached through the link, so the repair
    moves it to multi instead of treating it as a legacy attachment it could replace in place."""
    old_prog, link_id = apply_with_links(cgroup, bpffs)
    os.unlink(os.path.join(bpffs, "tcp_rto", NAME, "meta"))
    repaired = run_ok(params(cgroup, bpffs), "link_info")
    assert repaired["instance"]["attach_mode"] == "multi"
    assert repaired["verification"]["ok"], repaired["verification"]
    assert "detach from %s (link)" % cgroup in repaired["actions"]
    assert cgroup_program_ids(cgroup) == [repaired["instance"]["program_id"]] != [old_prog]
    assert not link_exists(link_id)
    assert_removed(run_ok(params(cgroup, bpffs, state="absent"), "link_info"), cgroup, bpffs)
