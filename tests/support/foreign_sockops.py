"""Foreign sock_ops programs for coexistence tests: the programs another team could attach.

Each is a few raw BPF instructions (no clang, no object file), loaded through the collection's
bpf_syscall layer and pinned in the test's private bpffs. Attaching uses bpftool for the legacy
modes (exclusive, override, multi), so the attachments are made by a tool that shares no code
with the collection, and a pinned bpf_link (bpftool 7.1 cannot create cgroup links) for "link".

The variants, in C:
    pass:     return 1;
    zero:     return 0;                                  (discards every program's reply)
    minus1:   if (skops->op == BPF_SOCK_OPS_TIMEOUT_INIT) skops->reply = -1;  return 1;
    own:      if (skops->op == BPF_SOCK_OPS_TIMEOUT_INIT) skops->reply = jiffies;  return 1;
              (jiffies: OWN_JIFFIES unless given)
"""

import os
import struct
import subprocess

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import bpf_info, bpf_syscall, uapi

BPF_SOCK_OPS_TIMEOUT_INIT = 1
REPLY_OFFSET = 4  # struct bpf_sock_ops: __u32 op; union { __u32 args[4]; __u32 reply; ...}
OWN_JIFFIES = 625  # 2.5 s at HZ 250: no rule of the tests uses it, and it is not the default


def _insn(opcode, dst=0, src=0, off=0, imm=0):
    return struct.pack("<BBhi", opcode, (src << 4) | dst, off, imm)


MOV64_IMM = 0xB7  # BPF_ALU64 | BPF_MOV | BPF_K
LDX_W = 0x61  # BPF_LDX | BPF_MEM | BPF_W
STX_W = 0x63  # BPF_STX | BPF_MEM | BPF_W (the verifier refuses BPF_ST into ctx)
JNE_IMM = 0x55  # BPF_JMP | BPF_JNE | BPF_K
EXIT = 0x95


def _returns(value):
    return _insn(MOV64_IMM, dst=0, imm=value) + _insn(EXIT)


def _sets_reply(jiffies):
    return (
        _insn(LDX_W, dst=2, src=1, off=0)  # r2 = skops->op
        + _insn(JNE_IMM, dst=2, off=2, imm=BPF_SOCK_OPS_TIMEOUT_INIT)  # not TIMEOUT_INIT: skip the store
        + _insn(MOV64_IMM, dst=3, imm=jiffies)
        + _insn(STX_W, dst=1, src=3, off=REPLY_OFFSET)  # skops->reply = r3
        + _returns(1)
    )


VARIANTS = {
    "pass": lambda _jiffies: _returns(1),
    "zero": lambda _jiffies: _returns(0),
    "minus1": lambda _jiffies: _sets_reply(-1),
    "own": _sets_reply,
}
BPF_F_PREORDER = 1 << 6  # 6.15+: runs before the programs of the cgroups below (not in 6.1 headers)

# bpftool's words for the legacy attach flags; None = exclusive (no flag)
BPFTOOL_FLAGS = {"exclusive": None, "override": "override", "multi": "multi"}


class ForeignProgram:
    """One loaded foreign program, pinned at <bpffs>/foreign_<label>; attach/detach by bpftool."""

    def __init__(self, bpffs, variant, label, jiffies=OWN_JIFFIES):
        self.variant = variant
        self.pin = os.path.join(bpffs, "foreign_" + label)
        fd = bpf_syscall.prog_load(uapi.BPF_PROG_TYPE_SOCK_OPS, VARIANTS[variant](jiffies), "GPL", "foreign_" + variant)
        try:
            bpf_syscall.obj_pin(fd, self.pin)
            self.id = bpf_info.prog_info(fd).id
            self.name = "foreign_" + variant
        finally:
            os.close(fd)
        self.attachments = []  # (cgroup, mode, link pin or None)

    def attach(self, cgroup, mode):
        """mode: exclusive | override | multi (bpftool cgroup attach), link (pinned bpf_link), or
        multi_preorder (BPF_F_ALLOW_MULTI | BPF_F_PREORDER: bpftool 7.1 has no word for it)."""
        if mode == "multi_preorder":
            with bpf_syscall.closing_fd(bpf_syscall.obj_get(self.pin)) as prog_fd:
                with bpf_syscall.closing_fd(os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)) as cgroup_fd:
                    flags = uapi.BPF_F_ALLOW_MULTI | BPF_F_PREORDER
                    bpf_syscall.prog_attach(cgroup_fd, prog_fd, uapi.BPF_CGROUP_SOCK_OPS, flags)
            self.attachments.append((cgroup, mode, None))
            return
        if mode == "link":
            link_pin = self.pin + "_link%d" % len(self.attachments)
            with bpf_syscall.closing_fd(bpf_syscall.obj_get(self.pin)) as prog_fd:
                with bpf_syscall.closing_fd(os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)) as cgroup_fd:
                    with bpf_syscall.closing_fd(
                        bpf_syscall.link_create(prog_fd, cgroup_fd, uapi.BPF_CGROUP_SOCK_OPS)
                    ) as link_fd:
                        bpf_syscall.obj_pin(link_fd, link_pin)
            self.attachments.append((cgroup, mode, link_pin))
            return
        command = ["bpftool", "cgroup", "attach", cgroup, "cgroup_sock_ops", "pinned", self.pin]
        if BPFTOOL_FLAGS[mode]:
            command.append(BPFTOOL_FLAGS[mode])
        subprocess.run(command, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.attachments.append((cgroup, mode, None))

    def detach_all(self):
        """Best effort (teardown): the sandbox cgroup's removal detaches whatever is left."""
        for cgroup, mode, link_pin in reversed(self.attachments):
            if mode == "link":
                with bpf_syscall.closing_fd(bpf_syscall.obj_get(link_pin)) as link_fd:
                    bpf_syscall.link_detach(link_fd)
                os.unlink(link_pin)
            elif os.path.isdir(cgroup):
                subprocess.run(
                    ["bpftool", "cgroup", "detach", cgroup, "cgroup_sock_ops", "pinned", self.pin],
                    check=False,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
        self.attachments = []
