# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The numbers and struct layouts bpf(2) is called with, as the kernel's uapi headers define them:
the system call number of each architecture, each command's number and its fields' offsets in
`union bpf_attr` (include/uapi/linux/bpf.h), the object info structs. Typed by hand;
tests/unit/module_utils/test_uapi_layout.py checks every offset against <linux/bpf.h>.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ctypes
import errno
import struct

# Map types (rto_program.MAP_CONTRACT), map update flags, program and attach types, attach and query
# flags, the ld_imm64 source that makes imm a map fd, the cgroup link type.
BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LRU_HASH = 9
BPF_MAP_TYPE_LPM_TRIE = 11
BPF_F_NO_PREALLOC = 1
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

BPF_PROG_TYPE_SOCK_OPS = 13
BPF_CGROUP_SOCK_OPS = 3
BPF_F_ALLOW_OVERRIDE = 1
BPF_F_ALLOW_MULTI = 2
BPF_F_REPLACE = 4
BPF_F_QUERY_EFFECTIVE = 1
BPF_PSEUDO_MAP_FD = 1
BPF_LINK_TYPE_CGROUP = 3
BPF_OBJ_NAME_LEN = 16

# Room for every union bpf_attr member up to at least 6.18 (144 bytes in 6.1): the kernel writes
# some results back (query.revision, log_true_size) at offsets only newer headers know.
ATTR_SIZE = 256

# bpf(2) by the architecture of this process (arch/*/kernel/syscalls/*.tbl, or the generic table
# of include/uapi/asm-generic/unistd.h): (family, pointer bits, ABI variant) -> number.
SYSCALL_NUMBERS = {
    ("x86", 64, ""): 321,
    ("x86", 32, ""): 357,
    ("x86", 32, "x32"): 0x40000000 | 321,  # __X32_SYSCALL_BIT on the 64-bit table
    ("arm", 64, ""): 280,
    ("arm", 32, ""): 386,
    ("powerpc", 64, ""): 361,
    ("powerpc", 32, ""): 361,
    ("s390", 64, ""): 351,
    ("s390", 32, ""): 351,
    ("riscv", 64, ""): 280,
    ("riscv", 32, ""): 280,
    ("loongarch", 64, ""): 280,
    ("mips", 64, ""): 5315,
    ("mips", 32, ""): 4355,
    ("mips", 32, "n32"): 6319,
    ("sparc", 64, ""): 349,
    ("sparc", 32, ""): 349,
}
# uname's machine -> family, by prefix (i686, armv7l, ppc64le, mips64el ...).
_ARCH_FAMILIES = (
    (("x86", "amd64", "i386", "i486", "i586", "i686"), "x86"),
    (("aarch64", "arm"), "arm"),
    (("ppc", "powerpc"), "powerpc"),
    (("s390",), "s390"),
    (("riscv",), "riscv"),
    (("loongarch",), "loongarch"),
    (("mips",), "mips"),
    (("sparc",), "sparc"),
)
# The ABI variants a multiarch triplet names at its end (x86_64-linux-gnux32, mips64el-linux-gnuabin32).
_ABI_VARIANTS = ("x32", "n32")

# command -> (number, {field: (offset, struct format)}), offsets as in union bpf_attr. A "Q"
# field given a ctypes buffer gets its address; a field given None stays zero.
COMMANDS = {
    "BPF_MAP_CREATE": (
        0,
        {
            "map_type": (0, "I"),
            "key_size": (4, "I"),
            "value_size": (8, "I"),
            "max_entries": (12, "I"),
            "map_flags": (16, "I"),
            "map_name": (28, "16s"),
            "btf_fd": (48, "I"),
            "btf_key_type_id": (52, "I"),
            "btf_value_type_id": (56, "I"),
        },
    ),
    "BPF_MAP_LOOKUP_ELEM": (1, {"map_fd": (0, "I"), "key": (8, "Q"), "value": (16, "Q"), "flags": (24, "Q")}),
    "BPF_MAP_UPDATE_ELEM": (2, {"map_fd": (0, "I"), "key": (8, "Q"), "value": (16, "Q"), "flags": (24, "Q")}),
    "BPF_MAP_DELETE_ELEM": (3, {"map_fd": (0, "I"), "key": (8, "Q")}),
    "BPF_MAP_GET_NEXT_KEY": (4, {"map_fd": (0, "I"), "key": (8, "Q"), "next_key": (16, "Q")}),
    "BPF_PROG_LOAD": (
        5,
        {
            "prog_type": (0, "I"),
            "insn_cnt": (4, "I"),
            "insns": (8, "Q"),
            "license": (16, "Q"),
            "log_level": (24, "I"),
            "log_size": (28, "I"),
            "log_buf": (32, "Q"),
            "prog_name": (48, "16s"),
            "expected_attach_type": (68, "I"),
            "prog_btf_fd": (72, "I"),
            "func_info_rec_size": (76, "I"),
            "func_info": (80, "Q"),
            "func_info_cnt": (88, "I"),
            "line_info_rec_size": (92, "I"),
            "line_info": (96, "Q"),
            "line_info_cnt": (104, "I"),
        },
    ),
    "BPF_OBJ_PIN": (6, {"pathname": (0, "Q"), "bpf_fd": (8, "I"), "file_flags": (12, "I")}),
    "BPF_OBJ_GET": (7, {"pathname": (0, "Q"), "bpf_fd": (8, "I"), "file_flags": (12, "I")}),
    "BPF_PROG_ATTACH": (
        8,
        {
            "target_fd": (0, "I"),
            "attach_bpf_fd": (4, "I"),
            "attach_type": (8, "I"),
            "attach_flags": (12, "I"),
            "replace_bpf_fd": (16, "I"),
        },
    ),
    "BPF_PROG_DETACH": (9, {"target_fd": (0, "I"), "attach_bpf_fd": (4, "I"), "attach_type": (8, "I")}),
    "BPF_PROG_GET_NEXT_ID": (11, {"start_id": (0, "I"), "next_id": (4, "I")}),
    "BPF_PROG_GET_FD_BY_ID": (13, {"id": (0, "I"), "open_flags": (8, "I")}),
    "BPF_MAP_GET_FD_BY_ID": (14, {"id": (0, "I"), "open_flags": (8, "I")}),
    "BPF_OBJ_GET_INFO_BY_FD": (15, {"bpf_fd": (0, "I"), "info_len": (4, "I"), "info": (8, "Q")}),
    "BPF_BTF_LOAD": (
        18,
        {
            "btf": (0, "Q"),
            "btf_log_buf": (8, "Q"),
            "btf_size": (16, "I"),
            "btf_log_size": (20, "I"),
            "btf_log_level": (24, "I"),
        },
    ),
    "BPF_PROG_QUERY": (
        16,
        {
            "target_fd": (0, "I"),
            "attach_type": (4, "I"),
            "query_flags": (8, "I"),
            "attach_flags": (12, "I"),
            "prog_ids": (16, "Q"),
            "prog_cnt": (24, "I"),
        },
    ),
    "BPF_LINK_CREATE": (28, {"prog_fd": (0, "I"), "target_fd": (4, "I"), "attach_type": (8, "I"), "flags": (12, "I")}),
    "BPF_LINK_UPDATE": (
        29,
        {"link_fd": (0, "I"), "new_prog_fd": (4, "I"), "flags": (8, "I"), "old_prog_fd": (12, "I")},
    ),
    "BPF_LINK_GET_FD_BY_ID": (30, {"id": (0, "I"), "open_flags": (8, "I")}),
    "BPF_LINK_GET_NEXT_ID": (31, {"start_id": (0, "I"), "next_id": (4, "I")}),
    "BPF_LINK_DETACH": (34, {"link_fd": (0, "I")}),
}

# Object info structs: field -> (offset, format); the size passed as info_len.
PROG_INFO = (
    256,
    {  # struct bpf_prog_info (232 bytes in 6.1)
        "type": (0, "I"),
        "id": (4, "I"),
        "tag": (8, "8s"),
        "nr_map_ids": (52, "I"),
        "map_ids": (56, "Q"),
        "name": (64, "16s"),
        "btf_id": (128, "I"),
        "run_time_ns": (192, "Q"),
        "run_cnt": (200, "Q"),
    },
)
MAP_INFO = (
    128,
    {  # struct bpf_map_info (88 bytes in 6.1)
        "type": (0, "I"),
        "id": (4, "I"),
        "key_size": (8, "I"),
        "value_size": (12, "I"),
        "max_entries": (16, "I"),
        "map_flags": (20, "I"),
        "name": (24, "16s"),
        "btf_id": (64, "I"),
    },
)
LINK_INFO = (
    128,
    {  # struct bpf_link_info, cgroup member of the union (48 bytes in 6.1)
        "type": (0, "I"),
        "id": (4, "I"),
        "prog_id": (8, "I"),
        "cgroup_id": (16, "Q"),
        "attach_type": (24, "I"),
    },
)


def syscall_number(machine, pointer_bits, multiarch=""):
    """The bpf(2) number for a process of that architecture; OSError ENOSYS for an unknown one."""
    family = next((name for prefixes, name in _ARCH_FAMILIES if machine.startswith(prefixes)), None)
    variant = next((abi for abi in _ABI_VARIANTS if multiarch.endswith(abi)), "")
    number = SYSCALL_NUMBERS.get((family, pointer_bits, variant))
    if number is None:
        raise OSError(
            errno.ENOSYS,
            "no bpf(2) system call number is known for this Python process (machine %s, %d-bit%s): "
            "the module supports x86, arm, powerpc, s390, riscv, loongarch, mips and sparc"
            % (machine, pointer_bits, ", " + multiarch if multiarch else ""),
        )
    return number


def pack(layout, size, fields):
    """A zeroed buffer of `size` bytes with `fields` packed at the layout's offsets."""
    buf = ctypes.create_string_buffer(size)
    for field, value in fields.items():
        if value is None:
            continue
        offset, fmt = layout[field]
        if isinstance(value, ctypes.Array):
            value = ctypes.addressof(value)
        struct.pack_into("=" + fmt, buf, offset, value)
    return buf


def unpack(layout, buf, field):
    offset, fmt = layout[field]
    return struct.unpack_from("=" + fmt, buf, offset)[0]
