"""Kernels 5.7 and 5.8 as the module meets them: cgroup bpf_links exist there, but
BPF_OBJ_GET_INFO_BY_FD on a link answers EINVAL before 5.8, and BPF_LINK_DETACH is an unknown
command (EINVAL) before 5.9. Only those two answers are simulated, by replacing the bpf(2)
function with one that fails as those kernels do; everything else is this kernel. The module used
to decide link mode from the release (5.7+), so on 5.7 every rerun failed and on 5.8 removal did;
it now probes, and these runs take the legacy path."""

import errno
import os

import pytest

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import bpf_info, bpf_syscall, reconcile
from ansible_collections.netbpf.tcp_rto.tests.support import reconcile_run
from ansible_collections.netbpf.tcp_rto.tests.support.bpf_inventory import cgroup_program_ids

pytestmark = pytest.mark.kernel

NAME = "oldlinks"


def unknown_to_this_kernel(command):
    def call(*args, **kwargs):
        raise bpf_syscall.BpfError(command, errno.EINVAL)

    return call


KERNELS = {
    "5.7": [(bpf_info, "link_info", "BPF_OBJ_GET_INFO_BY_FD"), (bpf_syscall, "link_detach", "BPF_LINK_DETACH")],
    "5.8": [(bpf_syscall, "link_detach", "BPF_LINK_DETACH")],
}


def params(cgroup, bpffs, **options):
    return reconcile_run.module_params(
        name=NAME,
        cgroup=cgroup,
        pin_dir=os.path.join(bpffs, "tcp_rto"),
        mount_bpffs=False,
        rules=[{"dest": "127.0.0.0/8", "rto_ms": 200}],
        **options,
    )


def run_as(kernel, monkeypatch, request):
    with monkeypatch.context() as patch:
        for module, function, command in KERNELS[kernel]:
            patch.setattr(module, function, unknown_to_this_kernel(command))
        return reconcile.run(request)


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_new_instance_apply_rerun_remove(cgroup, bpffs, monkeypatch, kernel):
    applied = run_as(kernel, monkeypatch, params(cgroup, bpffs))
    assert applied["instance"]["attach_mode"] == "multi" and applied["verification"]["ok"]
    again = run_as(kernel, monkeypatch, params(cgroup, bpffs))
    assert (again["changed"], again["actions"]) == (False, [])
    removed = run_as(kernel, monkeypatch, params(cgroup, bpffs, state="absent"))
    assert removed["changed"] is True
    assert cgroup_program_ids(cgroup) == [] and not os.path.exists(os.path.join(bpffs, "tcp_rto", NAME))


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_link_instance_rerun_and_remove(cgroup, bpffs, monkeypatch, kernel):
    """A link instance (made by a run that had every link feature, e.g. an earlier version of the
    module on this very kernel) is moved to multi by the next run, then removed."""
    linked = reconcile.run(params(cgroup, bpffs))
    assert linked["instance"]["attach_mode"] == "link"
    moved = run_as(kernel, monkeypatch, params(cgroup, bpffs))
    assert moved["instance"]["attach_mode"] == "multi" and moved["verification"]["ok"]
    assert cgroup_program_ids(cgroup) == [moved["instance"]["program_id"]]
    removed = run_as(kernel, monkeypatch, params(cgroup, bpffs, state="absent"))
    assert removed["changed"] is True
    assert cgroup_program_ids(cgroup) == [] and not os.path.exists(os.path.join(bpffs, "tcp_rto", NAME))


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_link_instance_removed(cgroup, bpffs, monkeypatch, kernel):
    linked = reconcile.run(params(cgroup, bpffs))
    assert linked["instance"]["attach_mode"] == "link"
    removed = run_as(kernel, monkeypatch, params(cgroup, bpffs, state="absent"))
    assert removed["changed"] is True
    assert cgroup_program_ids(cgroup) == [] and not os.path.exists(os.path.join(bpffs, "tcp_rto", NAME))
