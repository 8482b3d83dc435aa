# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Whether a sock_ops program may set TCP_SYNCNT on a connecting socket (syn_give_up_s), probed
only when a run asks for it: unlike the probes of features.py it forks a process that connects
from a throwaway cgroup. Plain stdlib, usable without Ansible."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import socket

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import (
    bpf_syscall,
    cgroups,
    features,
    host,
    probe,
    probe_child,
    uapi,
)

SOL_TCP = 6
TCP_SYNCNT = 7
BPF_FUNC_SETSOCKOPT = 49  # enum bpf_func_id


def syncnt_probe_program(value):
    """At TIMEOUT_INIT: bpf_setsockopt(ctx, SOL_TCP, TCP_SYNCNT, &value, 4); return 1. The verifier
    takes it on every kernel with sock_ops (the option is checked when the helper runs)."""
    return b"".join(
        [
            features.insn(0xBF, dst=6, src=1),  # r6 = r1 (ctx)
            features.insn(0x61, dst=2, src=1, off=0),  # r2 = ctx->op
            features.insn(0x55, dst=2, off=8, imm=1),  # if r2 != BPF_SOCK_OPS_TIMEOUT_INIT goto exit
            features.insn(0x62, dst=10, off=-4, imm=value),  # *(u32 *)(r10 - 4) = value
            features.insn(0xBF, dst=1, src=6),
            features.insn(0xB7, dst=2, imm=SOL_TCP),
            features.insn(0xB7, dst=3, imm=TCP_SYNCNT),
            features.insn(0xBF, dst=4, src=10),
            features.insn(0x07, dst=4, imm=-4),
            features.insn(0xB7, dst=5, imm=4),
            features.insn(0x85, imm=BPF_FUNC_SETSOCKOPT),
            features.insn(0xB7, dst=0, imm=1),
            features.insn(0x95),
        ]
    )


def _syncnt_body(send, _wait_parent, _joined):
    """In the probe cgroup: a connect() to a bound port nobody listens on (answered by a RST) ->
    the socket's TCP_SYNCNT, which the probe program set at its TIMEOUT_INIT if the kernel let it."""
    target = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        target.bind(("127.0.0.1", 0))
        client.setblocking(False)
        client.connect_ex(target.getsockname())
        send({"syn_retries": client.getsockopt(socket.IPPROTO_TCP, TCP_SYNCNT)})
    finally:
        client.close()
        target.close()


def probe_syn_retries(cgroup_root):
    """Whether a sock_ops program may set TCP_SYNCNT on a connecting socket (upstream about 5.9):
    the probe program, attached to a child cgroup made for it, sets a value the host's
    tcp_syn_retries does not have, and a connect() from that cgroup reads it back."""
    value = 3 if host.read_sysctl("net.ipv4.tcp_syn_retries", 6) != 3 else 4
    prog_fd = bpf_syscall.prog_load(
        uapi.BPF_PROG_TYPE_SOCK_OPS, syncnt_probe_program(value), "GPL", features.PROBE_PROGRAM_NAME
    )
    features.sweep_probe_cgroups(cgroup_root)
    cgroup = os.path.join(cgroup_root, features.PROBE_CGROUP_PREFIX + str(os.getpid()))
    try:
        os.mkdir(cgroup)
        try:
            with bpf_syscall.closing_fd(os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)) as cgroup_fd:
                bpf_syscall.prog_attach(cgroup_fd, prog_fd, uapi.BPF_CGROUP_SOCK_OPS, uapi.BPF_F_ALLOW_MULTI)
                try:
                    child = probe_child.ProbeChild(cgroup, _syncnt_body, probe.DEFAULT_TIMEOUT)
                    try:
                        found = child.receive()["syn_retries"]
                    finally:
                        child.close()
                finally:
                    bpf_syscall.prog_detach(cgroup_fd, prog_fd, uapi.BPF_CGROUP_SOCK_OPS)
        finally:
            os.rmdir(cgroup)
    except (OSError, probe_child.ProbeError) as exc:  # bpf_syscall.BpfError included
        raise features.unexpected("bpf_setsockopt(TCP_SYNCNT) from a sock_ops program", exc)
    finally:
        os.close(prog_fd)
    return found == value


def settable(cgroup_root=None):
    """probe_syn_retries() on the cgroup v2 mount, unless TCP_RTO_FORCE_MISSING names syn_retries."""
    if "syn_retries" in features.forced_missing():
        return False
    return probe_syn_retries(cgroup_root or cgroups.cgroup2_mount())
