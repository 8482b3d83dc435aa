# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Putting a program on a cgroup and taking it off: BPF_PROG_ATTACH with BPF_F_ALLOW_MULTI (and
BPF_F_REPLACE), a bpf_link, and detaching either the way it was attached. Plain stdlib."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import os
import time

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import bpf_syscall, pins, uapi
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.coexistence import attached_program_ids
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.desired import ATTACH_LINK, ATTACH_MULTI
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.plan import InstanceError


def _open_cgroup(cgroup):
    return os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)


def attach_error(exc, cgroup):
    if exc.errno == errno.EPERM:
        return InstanceError(
            "the kernel refused to attach to %s (EPERM): a sock_ops program is attached there or on an "
            "ancestor cgroup without BPF_F_ALLOW_MULTI. tcp_rto never detaches programs it did not attach: "
            "re-attach that program with 'multi' or choose another cgroup." % cgroup
        )
    return InstanceError("attaching to %s failed: %s" % (cgroup, exc))


def attach_multi(cgroup, prog_fd, replace_prog_fd=None):
    flags = uapi.BPF_F_ALLOW_MULTI | (uapi.BPF_F_REPLACE if replace_prog_fd is not None else 0)
    with bpf_syscall.closing_fd(_open_cgroup(cgroup)) as cgroup_fd:
        bpf_syscall.prog_attach(cgroup_fd, prog_fd, uapi.BPF_CGROUP_SOCK_OPS, flags, replace_prog_fd=replace_prog_fd)


def detach_multi(cgroup, prog_fd):
    with bpf_syscall.closing_fd(_open_cgroup(cgroup)) as cgroup_fd:
        bpf_syscall.prog_detach(cgroup_fd, prog_fd, uapi.BPF_CGROUP_SOCK_OPS)


def detach_multi_quiet(cgroup, prog_fd):
    """_detach_multi, at peace with a program that is not (or no longer) attached there."""
    try:
        detach_multi(cgroup, prog_fd)
    except bpf_syscall.BpfError as exc:
        if exc.errno != errno.ENOENT:
            raise


def detach(current, link_detach=True):
    """Take the current program off its cgroup, the way it was attached. link_detach False (no
    BPF_LINK_DETACH before 5.9, see features.py): the link goes with its pin and this run's fd."""
    if current.attach_mode == ATTACH_LINK and current.link_fd is not None:
        if link_detach:
            bpf_syscall.link_detach(current.link_fd)
        else:
            _release_link(current)
    elif current.attach_mode == ATTACH_MULTI and current.prog_fd is not None:
        detach_multi_quiet(current.cgroup, current.prog_fd)


# A removed pin drops its reference only after an RCU grace period on some kernels (seen on 5.10;
# 6.18 drops it at once), so a released link detaches a moment later.
LINK_RELEASE_WAIT_SECONDS = 5.0


def _release_link(current):
    """Unpin the link and close this run's fd of it: the link detaches once nothing holds it."""
    pins.remove_pin(os.path.join(current.instance_dir, pins.LINK_PIN))
    os.close(current.link_fd)
    current.link_fd = None
    deadline = time.monotonic() + LINK_RELEASE_WAIT_SECONDS
    while current.prog_info.id in attached_program_ids(current.cgroup)[1]:
        if time.monotonic() < deadline:
            time.sleep(0.01)
            continue
        raise InstanceError(
            "program %d stays attached to %s after tcp_rto unpinned and closed its bpf_link: another "
            "process holds the link open, and this kernel has no BPF_LINK_DETACH (Linux 5.9) to detach "
            "it regardless. Find that process with 'bpftool link show' and 'lsof', end it, and run again."
            % (current.prog_info.id, current.cgroup)
        )
