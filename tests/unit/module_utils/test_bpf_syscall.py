"""bpf_syscall against this machine's kernel: maps, program load, pins, attach, links, query, info.

Programs are hand-assembled sock_ops instructions. Every object lives in a sandbox (a child
cgroup from the `cgroup` fixture, pins in the private `bpffs` mount) and every fd is closed and
every attachment detached in teardown, whatever the outcome.
"""

import ctypes
import errno
import ipaddress
import json
import os
import struct
import subprocess
import sys
import time

import pytest

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import (
    bpf_info,
    bpf_maps,
    bpf_object,
    bpf_syscall,
    rto_program,
    uapi,
)
from ansible_collections.netbpf.tcp_rto.tests.support import bpf_inventory
from ansible_collections.netbpf.tcp_rto.tests.support.paths import SHIPPED_OBJECT

pytestmark = pytest.mark.kernel

SOCK_OPS = uapi.BPF_PROG_TYPE_SOCK_OPS
CG_SOCK_OPS = uapi.BPF_CGROUP_SOCK_OPS
MULTI = uapi.BPF_F_ALLOW_MULTI
BPFTOOL_SOCK_OPS = ("cgroup_sock_ops", "sock_ops")  # its name for attach type 3, by bpftool version


def insn(code, dst=0, src=0, off=0, imm=0):
    """struct bpf_insn: the register nibbles follow the bitfield order of the host."""
    regs = (dst << 4 | src) if sys.byteorder == "big" else (src << 4 | dst)
    return struct.pack("=BBhi", code, regs, off, imm)


MOV64_IMM, LDX_W, STX_W, LD_IMM64, EXIT = 0xB7, 0x61, 0x63, 0x18, 0x95
R0, R1, R2 = 0, 1, 2
RETURN_1 = insn(MOV64_IMM, R0, imm=1) + insn(EXIT)
# skops->reply (offset 4) = 750; return 1. The verifier refuses BPF_ST into ctx: go through r2.
SET_REPLY_750 = insn(MOV64_IMM, R2, imm=750) + insn(STX_W, R1, R2, off=4) + RETURN_1
# r0 = *(u32 *)(skops + 10000): "invalid bpf_context access".
OUT_OF_BOUNDS = insn(LDX_W, R0, R1, off=10000) + insn(EXIT)


def uses_map(map_fd):
    """r1 = map (ld_imm64 with BPF_PSEUDO_MAP_FD); return 1."""
    return insn(LD_IMM64, R1, uapi.BPF_PSEUDO_MAP_FD, imm=map_fd) + insn(0) + RETURN_1


class Fds:
    """Opens kernel objects for one test and closes them all at teardown."""

    def __init__(self):
        self.fds = []

    def add(self, fd):
        self.fds.append(fd)
        return fd

    def prog(self, insns=RETURN_1, name="tcp_rto_test"):
        return self.add(bpf_syscall.prog_load(SOCK_OPS, insns, "GPL", name=name, expected_attach_type=CG_SOCK_OPS))

    def map(self, *args, **kwargs):
        return self.add(bpf_maps.map_create(*args, **kwargs))

    def close(self):
        while self.fds:
            os.close(self.fds.pop())


@pytest.fixture
def fds():
    opened = Fds()
    try:
        yield opened
    finally:
        opened.close()


class Cgroup:
    def __init__(self, path):
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)

    def query(self, effective=False):
        return bpf_syscall.prog_query(self.fd, CG_SOCK_OPS, effective)

    def detach_all(self):
        """Detach every legacy attachment (links go with their fds)."""
        for prog_id in self.query()[1]:
            try:
                with bpf_syscall.closing_fd(bpf_info.prog_get_fd_by_id(prog_id)) as prog_fd:
                    bpf_syscall.prog_detach(self.fd, prog_fd, CG_SOCK_OPS)
            except bpf_syscall.BpfError as exc:
                if exc.errno != errno.ENOENT:  # attached through a link
                    raise


@pytest.fixture
def cg(cgroup):
    """The sandbox cgroup opened; whatever is still attached at the end is detached."""
    opened = Cgroup(cgroup)
    try:
        yield opened
    finally:
        try:
            opened.detach_all()
        finally:
            os.close(opened.fd)


def prog_id(fd):
    return bpf_info.prog_info(fd).id


def bpftool_json(*args):
    out = subprocess.run(
        ["bpftool", "-j", *list(args)], stdout=subprocess.PIPE, check=True, universal_newlines=True
    ).stdout
    return json.loads(out) if out.strip() else []


def expect_error(command, err, call, *args, **kwargs):
    with pytest.raises(bpf_syscall.BpfError) as caught:
        call(*args, **kwargs)
    assert (caught.value.command, caught.value.errno) == (command, err), str(caught.value)
    return caught.value


# The system call number


@pytest.mark.parametrize(
    "machine, pointer_bits, multiarch, number",
    [
        ("x86_64", 64, "x86_64-linux-gnu", 321),
        ("x86_64", 32, "i386-linux-gnu", 357),  # a 32-bit userland on a 64-bit kernel
        ("i686", 32, "i386-linux-gnu", 357),
        ("x86_64", 32, "x86_64-linux-gnux32", 0x40000000 | 321),
        ("aarch64", 64, "aarch64-linux-gnu", 280),
        ("aarch64", 32, "arm-linux-gnueabihf", 386),
        ("armv7l", 32, "arm-linux-gnueabihf", 386),
        ("ppc64le", 64, "powerpc64le-linux-gnu", 361),
        ("ppc64", 32, "powerpc-linux-gnu", 361),
        ("s390x", 64, "s390x-linux-gnu", 351),
        ("riscv64", 64, "riscv64-linux-gnu", 280),
        ("loongarch64", 64, "loongarch64-linux-gnu", 280),
        ("mips64", 64, "mips64el-linux-gnuabi64", 5315),
        ("mips64", 32, "mips64el-linux-gnuabin32", 6319),
        ("mips", 32, "mipsel-linux-gnu", 4355),
        ("sparc64", 64, "sparc64-linux-gnu", 349),
        ("x86_64", 64, "", 321),  # a Python built without a multiarch triplet
    ],
)
def test_syscall_number_follows_the_process_architecture(machine, pointer_bits, multiarch, number):
    assert uapi.syscall_number(machine, pointer_bits, multiarch) == number


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(
        OSError, match=r"no bpf\(2\) system call number .*\(machine alpha, 64-bit, alpha-linux-gnu\)"
    ) as caught:
        uapi.syscall_number("alpha", 64, "alpha-linux-gnu")
    assert caught.value.errno == errno.ENOSYS


def test_32_bit_python_on_a_64_bit_kernel_calls_the_32_bit_table(monkeypatch):
    monkeypatch.setattr(bpf_syscall, "_SYSCALL", [])
    monkeypatch.setattr(bpf_syscall, "process_arch", lambda: ("x86_64", 32, "i386-linux-gnu"))
    assert bpf_syscall._syscall()[1] == 357


@pytest.mark.skipif(os.uname().machine != "x86_64" or struct.calcsize("P") != 8, reason="an x86_64 Python")
def test_this_process_calls_the_x86_64_number(fds):
    assert bpf_syscall.process_arch()[:2] == ("x86_64", 64)
    assert bpf_syscall._syscall()[1] == 321
    fds.map(uapi.BPF_MAP_TYPE_ARRAY, 4, 8, 1, name="rto_test_nr")  # and the kernel answers it


# Maps


def test_array_map(fds):
    fd = fds.map(uapi.BPF_MAP_TYPE_ARRAY, 4, 8, 3, name="rto_test_array")
    key = struct.Struct("=I").pack
    bpf_maps.map_update(fd, key(1), struct.pack("=Q", 42))
    assert bpf_maps.map_lookup(fd, key(1), 8) == struct.pack("=Q", 42)
    assert bpf_maps.map_lookup(fd, key(0), 8) == bytes(8)  # arrays are preallocated, zeroed
    assert bpf_maps.map_lookup(fd, key(3), 8) is None  # out of range: ENOENT
    assert bpf_maps.map_keys(fd, 4) == [key(0), key(1), key(2)]
    expect_error("BPF_MAP_UPDATE_ELEM", errno.EEXIST, bpf_maps.map_update, fd, key(1), bytes(8), uapi.BPF_NOEXIST)
    expect_error("BPF_MAP_DELETE_ELEM", errno.EINVAL, bpf_maps.map_delete, fd, key(1))
    info = bpf_info.map_info(fd)
    assert info[:1] + info[2:] == (uapi.BPF_MAP_TYPE_ARRAY, 4, 8, 3, 0, "rto_test_array", 0)
    assert info.id > 0


def test_btf_load_and_typed_map(fds):
    """The shipped object's BTF: the kernel takes it, and a map made with its key and value types
    carries it (bpftool then dumps named fields)."""
    obj = bpf_object.BpfObject.from_file(SHIPPED_OBJECT)
    btf_fd = fds.add(bpf_syscall.btf_load(obj.btf.data))
    spec = obj.maps[rto_program.CONFIG_MAP]
    fd = fds.map(
        spec.type,
        spec.key_size,
        spec.value_size,
        spec.max_entries,
        spec.flags,
        "rto_test_btf",
        btf_fd=btf_fd,
        btf_types=obj.btf.map_types[rto_program.CONFIG_MAP],
    )
    info = bpf_info.map_info(fd)
    assert info.btf_id > 0
    bpf_maps.map_update(fd, rto_program.CONFIG_KEY.pack(0), rto_program.encode_config(7, 3))
    dump = bpf_inventory.bpftool("map", "dump", "id", str(info.id))
    assert dump[0]["formatted"] == {
        "key": 0,
        "value": bpf_inventory.config_as_bpftool_shows(default_rto_jiffies=7, directions=3),
    }
    expect_error(
        "BPF_MAP_CREATE",
        errno.EINVAL,
        bpf_maps.map_create,
        uapi.BPF_MAP_TYPE_ARRAY,
        4,
        8,
        1,
        btf_fd=btf_fd,
        btf_types=obj.btf.map_types[rto_program.RULES_MAP],  # a 20-byte key type
    )


def test_btf_load_refused(fds):
    expect_error("BPF_BTF_LOAD", errno.EINVAL, bpf_syscall.btf_load, b"\x9f\xeb\x01\x00" + bytes(20))


def test_lpm_trie_map_with_rule_layout(fds):
    map_type, key_size, value_size, max_entries, flags = rto_program.MAP_CONTRACT[rto_program.RULES_MAP]
    fd = fds.map(map_type, key_size, value_size, max_entries, flags, name=rto_program.RULES_MAP)
    wide, narrow = ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("10.1.0.0/16")
    bpf_maps.map_update(fd, rto_program.encode_rule_key(wide), rto_program.encode_rule_value(250, 0))
    bpf_maps.map_update(fd, rto_program.encode_rule_key(narrow), rto_program.encode_rule_value(25, 1))

    def lookup(address):
        value = bpf_maps.map_lookup(fd, rto_program.encode_rule_key(ipaddress.ip_network(address)), value_size)
        return value and rto_program.decode_rule_value(value)

    assert lookup("10.1.2.3/32") == (25, 1, None, False)  # longest prefix
    assert lookup("10.2.3.4/32") == (250, 0, None, False)
    assert lookup("192.0.2.1/32") is None
    assert sorted(map(rto_program.decode_rule_key, bpf_maps.map_keys(fd, key_size))) == [wide, narrow]
    expect_error(
        "BPF_MAP_UPDATE_ELEM",
        errno.EEXIST,
        bpf_maps.map_update,
        fd,
        rto_program.encode_rule_key(wide),
        rto_program.encode_rule_value(1, 0),
        uapi.BPF_NOEXIST,
    )
    assert bpf_maps.map_delete(fd, rto_program.encode_rule_key(narrow)) is True
    assert bpf_maps.map_delete(fd, rto_program.encode_rule_key(narrow)) is False
    assert lookup("10.1.2.3/32") == (250, 0, None, False)
    assert bpf_info.map_info(fd).map_flags == uapi.BPF_F_NO_PREALLOC


@pytest.mark.parametrize("value_size", [8, 4])  # 4: each CPU's slot is still 8 bytes
def test_percpu_array_map(fds, value_size):
    fd = fds.map(uapi.BPF_MAP_TYPE_PERCPU_ARRAY, 4, value_size, 2)
    ncpus = len(bpf_maps.possible_cpus())
    values = [struct.pack("=I", 1000 + cpu).ljust(value_size, b"\0") for cpu in range(ncpus)]
    key = struct.pack("=I", 1)
    bpf_maps.percpu_update(fd, key, values)
    assert bpf_maps.percpu_lookup(fd, key, value_size) == values
    assert bpf_maps.percpu_lookup(fd, struct.pack("=I", 0), value_size) == [bytes(value_size)] * ncpus
    assert bpf_maps.percpu_lookup(fd, struct.pack("=I", 2), value_size) is None
    assert bpf_maps.map_keys(fd, 4) == [struct.pack("=I", 0), key]
    expect_error("BPF_MAP_DELETE_ELEM", errno.EINVAL, bpf_maps.map_delete, fd, key)
    with pytest.raises(ValueError):
        bpf_maps.percpu_update(fd, key, values + values)


@pytest.mark.parametrize("text, cpus", [("0", [0]), ("0-1,4", [0, 1, 4]), ("0-3,8-9", [0, 1, 2, 3, 8, 9])])
def test_possible_cpus_parses_ranges(tmp_path, text, cpus):
    path = tmp_path / "possible"
    path.write_text(text + "\n")
    assert bpf_maps.possible_cpus(str(path)) == cpus


def test_possible_cpus_of_this_machine():
    assert len(bpf_maps.possible_cpus()) >= os.cpu_count() >= 1


# Pins


def test_pin_and_get(fds, bpffs):
    map_fd = fds.map(uapi.BPF_MAP_TYPE_ARRAY, 4, 4, 1, name="rto_test_pin")
    prog_fd = fds.prog(name="rto_test_pin")
    map_path, prog_path = os.path.join(bpffs, "map"), os.path.join(bpffs, "prog")
    bpf_syscall.obj_pin(map_fd, map_path)
    bpf_syscall.obj_pin(prog_fd, prog_path)
    with bpf_syscall.closing_fd(bpf_syscall.obj_get(map_path)) as fd:
        assert bpf_info.map_info(fd) == bpf_info.map_info(map_fd)
        bpf_maps.map_update(fd, struct.pack("=I", 0), struct.pack("=I", 7))
    assert bpf_maps.map_lookup(map_fd, struct.pack("=I", 0), 4) == struct.pack("=I", 7)
    with bpf_syscall.closing_fd(bpf_syscall.obj_get(prog_path)) as fd:
        assert bpf_info.prog_info(fd).id == prog_id(prog_fd)
    expect_error("BPF_OBJ_PIN", errno.EEXIST, bpf_syscall.obj_pin, prog_fd, prog_path)
    expect_error("BPF_OBJ_GET", errno.ENOENT, bpf_syscall.obj_get, os.path.join(bpffs, "absent"))


# Programs


def test_prog_load_and_info(fds):
    fd = fds.prog(SET_REPLY_750, name="rto_test_750")
    info = bpf_info.prog_info(fd)
    assert (info.type, info.name, info.map_ids) == (SOCK_OPS, "rto_test_750", [])
    shown = bpftool_json("prog", "show", "id", str(info.id))
    assert (shown["tag"], shown["name"]) == (info.tag, "rto_test_750")
    assert len(info.tag) == 16 and int(info.tag, 16)
    assert bpf_info.prog_info(fds.prog(SET_REPLY_750, name="other_name")).tag == info.tag


def test_prog_info_lists_referenced_maps(fds):
    map_fd = fds.map(uapi.BPF_MAP_TYPE_ARRAY, 4, 8, 1, name="rto_test_ref")
    info = bpf_info.prog_info(fds.prog(uses_map(map_fd), name="rto_test_ref"))
    assert info.map_ids == [bpf_info.map_info(map_fd).id]


def test_prog_name_is_truncated_to_15_bytes(fds):
    assert bpf_info.prog_info(fds.prog(name="a_name_longer_than_15")).name == "a_name_longer_t"


def test_verifier_failure_carries_the_log():
    error = expect_error(
        "BPF_PROG_LOAD", errno.EACCES, bpf_syscall.prog_load, SOCK_OPS, OUT_OF_BOUNDS, "GPL", name="rto_test_bad"
    )
    assert "invalid bpf_context access" in error.log
    assert str(error) == "bpf(BPF_PROG_LOAD): Permission denied (EACCES)"
    assert isinstance(error, OSError)


def test_verifier_log_buffer_grows(monkeypatch):
    monkeypatch.setattr(bpf_syscall, "_LOG_SIZE_FIRST", 128)  # the smallest the kernel takes: ENOSPC
    error = expect_error("BPF_PROG_LOAD", errno.EACCES, bpf_syscall.prog_load, SOCK_OPS, OUT_OF_BOUNDS, "GPL")
    assert len(error.log) > 128 and "invalid bpf_context access" in error.log


class InterruptedLoads:
    """libc's syscall() in front of the kernel: the first `count` BPF_PROG_LOAD calls fail with
    EAGAIN, as when a signal interrupts the verifier; every other call reaches the kernel."""

    def __init__(self, monkeypatch, count):
        self.syscall, number = bpf_syscall._syscall()
        self.count = count
        self.loads = 0
        monkeypatch.setattr(bpf_syscall, "_SYSCALL", [(self, number)])

    def __call__(self, number, command, attr, size):
        if command.value == 5:  # BPF_PROG_LOAD
            self.loads += 1
            if self.loads <= self.count:
                ctypes.set_errno(errno.EAGAIN)
                return -1
        return self.syscall(number, command, attr, size)


def test_interrupted_prog_load_is_retried(monkeypatch, fds):
    interrupted = InterruptedLoads(monkeypatch, bpf_syscall.PROG_LOAD_ATTEMPTS - 1)
    fd = fds.prog(SET_REPLY_750, name="rto_test_again")
    assert bpf_info.prog_info(fd).name == "rto_test_again"
    assert interrupted.loads == bpf_syscall.PROG_LOAD_ATTEMPTS


def test_prog_load_interrupted_every_time_gives_up(monkeypatch):
    interrupted = InterruptedLoads(monkeypatch, 1000)
    error = expect_error("BPF_PROG_LOAD", errno.EAGAIN, bpf_syscall.prog_load, SOCK_OPS, RETURN_1, "GPL")
    assert error.log == ""
    assert interrupted.loads == bpf_syscall.PROG_LOAD_ATTEMPTS


# Legacy attach


def test_attach_multi_query_detach(fds, cg):
    prog_fd = fds.prog(name="rto_test_multi")
    bpf_syscall.prog_attach(cg.fd, prog_fd, CG_SOCK_OPS, MULTI)
    ident = prog_id(prog_fd)
    assert cg.query() == (MULTI, [ident])
    assert ident in cg.query(effective=True)[1]
    shown = bpftool_json("cgroup", "show", cg.path)
    assert [(entry["id"], entry["attach_type"] in BPFTOOL_SOCK_OPS, entry["name"]) for entry in shown] == [
        (ident, True, "rto_test_multi")
    ]
    expect_error("BPF_PROG_ATTACH", errno.EINVAL, bpf_syscall.prog_attach, cg.fd, prog_fd, CG_SOCK_OPS, MULTI)
    bpf_syscall.prog_detach(cg.fd, prog_fd, CG_SOCK_OPS)
    assert cg.query()[1] == []
    assert bpftool_json("cgroup", "show", cg.path) == []
    expect_error("BPF_PROG_DETACH", errno.ENOENT, bpf_syscall.prog_detach, cg.fd, prog_fd, CG_SOCK_OPS)


def test_attach_flags_must_match(fds, cg):
    bpf_syscall.prog_attach(cg.fd, fds.prog(), CG_SOCK_OPS, MULTI)
    expect_error("BPF_PROG_ATTACH", errno.EPERM, bpf_syscall.prog_attach, cg.fd, fds.prog(), CG_SOCK_OPS, 0)


def test_replace_swaps_in_place(fds, cg):
    first, second, new = fds.prog(name="first"), fds.prog(name="second"), fds.prog(SET_REPLY_750, name="new")
    bpf_syscall.prog_attach(cg.fd, first, CG_SOCK_OPS, MULTI)
    bpf_syscall.prog_attach(cg.fd, second, CG_SOCK_OPS, MULTI)
    bpf_syscall.prog_attach(cg.fd, new, CG_SOCK_OPS, MULTI, replace_prog_fd=first)
    assert cg.query()[1] == [prog_id(new), prog_id(second)]
    # the program to replace is no longer there
    expect_error(
        "BPF_PROG_ATTACH",
        errno.ENOENT,
        bpf_syscall.prog_attach,
        cg.fd,
        fds.prog(),
        CG_SOCK_OPS,
        MULTI,
        replace_prog_fd=first,
    )
    assert cg.query()[1] == [prog_id(new), prog_id(second)]


def test_query_grows_its_id_buffer(fds, cg):
    progs = [fds.prog(name="many_%d" % index) for index in range(20)]  # more than the first guess
    for prog_fd in progs:
        bpf_syscall.prog_attach(cg.fd, prog_fd, CG_SOCK_OPS, MULTI)
    assert cg.query()[1] == [prog_id(prog_fd) for prog_fd in progs]


# Links


def test_link_lifecycle(fds, cg, bpffs):
    old, new = fds.prog(name="rto_test_old"), fds.prog(SET_REPLY_750, name="rto_test_new")
    link_fd = fds.add(bpf_syscall.link_create(old, cg.fd, CG_SOCK_OPS))
    pin = os.path.join(bpffs, "link")
    try:
        assert cg.query()[1] == [prog_id(old)]
        info = bpf_info.link_info(link_fd)
        assert (info.type, info.prog_id, info.cgroup_id, info.attach_type) == (
            uapi.BPF_LINK_TYPE_CGROUP,
            prog_id(old),
            os.stat(cg.path).st_ino,
            CG_SOCK_OPS,
        )
        bpf_syscall.obj_pin(link_fd, pin)
        with bpf_syscall.closing_fd(bpf_syscall.obj_get(pin)) as fd:
            assert bpf_info.link_info(fd) == info
        # a link is always multi: a legacy multi attach can join it
        bpf_syscall.prog_attach(cg.fd, new, CG_SOCK_OPS, MULTI)
        bpf_syscall.prog_detach(cg.fd, new, CG_SOCK_OPS)

        bpf_syscall.link_update(link_fd, new)
        assert cg.query()[1] == [prog_id(new)]
        assert bpf_info.link_info(link_fd).prog_id == prog_id(new)
        expect_error("BPF_LINK_UPDATE", errno.EPERM, bpf_syscall.link_update, link_fd, old, old_prog_fd=old)
        bpf_syscall.link_update(link_fd, old, old_prog_fd=new)
        assert cg.query()[1] == [prog_id(old)]

        bpf_syscall.link_detach(link_fd)
        assert cg.query()[1] == []
        assert bpf_info.link_info(link_fd).cgroup_id == 0  # defunct, the fd still valid
        expect_error("BPF_LINK_UPDATE", errno.ENOLINK, bpf_syscall.link_update, link_fd, new)
    finally:
        if os.path.exists(pin):
            os.unlink(pin)
        try:
            bpf_syscall.link_detach(link_fd)
        except bpf_syscall.BpfError:
            pass


def test_link_goes_with_its_last_fd(fds, cg):
    prog_fd = fds.prog()
    with bpf_syscall.closing_fd(bpf_syscall.link_create(prog_fd, cg.fd, CG_SOCK_OPS)):
        assert cg.query()[1] == [prog_id(prog_fd)]
    assert cg.query()[1] == []


# Ids


def test_get_fd_by_id_round_trips(fds, cg):
    map_fd = fds.map(uapi.BPF_MAP_TYPE_ARRAY, 4, 4, 1)
    prog_fd = fds.prog(uses_map(map_fd))
    link_fd = fds.add(bpf_syscall.link_create(prog_fd, cg.fd, CG_SOCK_OPS))
    try:
        ids = prog_id(prog_fd), bpf_info.map_info(map_fd).id, bpf_info.link_info(link_fd).id
        with bpf_syscall.closing_fd(bpf_info.prog_get_fd_by_id(ids[0])) as fd:
            assert bpf_info.prog_info(fd).map_ids == [ids[1]]
        with bpf_syscall.closing_fd(bpf_info.map_get_fd_by_id(ids[1])) as fd:
            assert bpf_info.map_info(fd).id == ids[1]
        with bpf_syscall.closing_fd(bpf_info.link_get_fd_by_id(ids[2])) as fd:
            assert bpf_info.link_info(fd).prog_id == ids[0]
        assert bpf_info.prog_get_next_id(ids[0] - 1) == ids[0]
        assert bpf_info.link_get_next_id(ids[2] - 1) == ids[2]
        assert ids[0] in walk(bpf_info.prog_get_next_id)
        assert ids[2] in walk(bpf_info.link_get_next_id)
        assert [info.map_ids for info in bpf_info.prog_infos() if info.id == ids[0]] == [[ids[1]]]
        assert [info.prog_id for info in bpf_info.link_infos() if info.id == ids[2]] == [ids[0]]
        # ids are below INT_MAX; a start id from INT_MAX up is EINVAL
        assert bpf_info.prog_get_next_id(0x7FFFFFFE) is None
        assert bpf_info.link_get_next_id(0x7FFFFFFE) is None
        expect_error("BPF_PROG_GET_NEXT_ID", errno.EINVAL, bpf_info.prog_get_next_id, 0x7FFFFFFF)
    finally:
        bpf_syscall.link_detach(link_fd)


def walk(next_id):
    found, current = [], next_id(0)
    while current is not None:
        found.append(current)
        current = next_id(current)
    return found


# Errors


def test_errors_name_the_command_and_errno(fds, cg):
    error = expect_error("BPF_PROG_ATTACH", errno.EBADF, bpf_syscall.prog_attach, cg.fd, 999999, CG_SOCK_OPS)
    assert str(error) == "bpf(BPF_PROG_ATTACH): Bad file descriptor (EBADF)"
    expect_error("BPF_PROG_GET_FD_BY_ID", errno.ENOENT, bpf_info.prog_get_fd_by_id, 0xFFFFFFFF)
    expect_error("BPF_MAP_GET_FD_BY_ID", errno.ENOENT, bpf_info.map_get_fd_by_id, 0xFFFFFFFF)
    expect_error("BPF_LINK_GET_FD_BY_ID", errno.ENOENT, bpf_info.link_get_fd_by_id, 0xFFFFFFFF)
    # a map fd where a program fd is expected
    expect_error(
        "BPF_PROG_ATTACH",
        errno.EINVAL,
        bpf_syscall.prog_attach,
        cg.fd,
        fds.map(uapi.BPF_MAP_TYPE_ARRAY, 4, 4, 1),
        CG_SOCK_OPS,
        MULTI,
    )
    expect_error("BPF_MAP_CREATE", errno.EINVAL, bpf_maps.map_create, uapi.BPF_MAP_TYPE_ARRAY, 4, 4, 0)


# The inventory helper


def test_inventory_sees_objects_and_their_cleanup(cgroup, bpffs):
    before = bpf_inventory.steady([cgroup])
    assert before["cgroups"] == {cgroup: []}
    opened = Fds()
    pin = os.path.join(bpffs, "map")
    cg_fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        map_fd = opened.map(uapi.BPF_MAP_TYPE_ARRAY, 4, 4, 1, name="rto_test_inv")
        prog_fd = opened.prog(uses_map(map_fd), name="rto_test_inv")
        bpf_syscall.obj_pin(map_fd, pin)
        bpf_syscall.prog_attach(cg_fd, prog_fd, CG_SOCK_OPS, MULTI)
        try:
            during = bpf_inventory.snapshot([cgroup])
            ident, map_id = prog_id(prog_fd), bpf_info.map_info(map_fd).id
            assert during["progs"][ident] == ("sock_ops", "rto_test_inv")
            assert during["maps"][map_id] == ("array", "rto_test_inv")
            [(attached_id, attach_type, flags, name)] = during["cgroups"][cgroup]
            assert (attached_id, attach_type in BPFTOOL_SOCK_OPS, flags, name) == (ident, True, "multi", "rto_test_inv")
        finally:
            bpf_syscall.prog_detach(cg_fd, prog_fd, CG_SOCK_OPS)
    finally:
        os.close(cg_fd)
        opened.close()
        if os.path.exists(pin):
            os.unlink(pin)
    # Only what this test made: the machine-wide lists also move with anything else running here.
    deadline = time.monotonic() + 5
    after = bpf_inventory.snapshot([cgroup])
    while (ident in after["progs"] or map_id in after["maps"]) and time.monotonic() < deadline:
        time.sleep(0.05)  # freed after an RCU grace period
        after = bpf_inventory.snapshot([cgroup])
    assert ident not in after["progs"] and map_id not in after["maps"]
    assert after["cgroups"] == before["cgroups"]


def test_a_link_still_being_created_is_waited_for_or_skipped(monkeypatch):
    """BPF_LINK_GET_FD_BY_ID fails with EAGAIN for a link another process is creating (its id
    comes before the kernel settles it): seen at 100 hosts applying at once on one machine, where
    it failed a run's survey of the links. Mocked: the window is microseconds long."""
    answers = {
        1: [errno.EAGAIN, errno.EAGAIN, 101],  # settles after two tries
        2: [errno.EAGAIN] * (bpf_info.UNSETTLED_RETRIES + 1),  # never settles: its creation failed
        3: [errno.ENOENT],  # released meanwhile
        4: [104],
    }

    def get_fd_by_id(kind, obj_id):
        answer = answers[obj_id].pop(0)
        if answer < 100:
            raise bpf_syscall.BpfError("BPF_LINK_GET_FD_BY_ID", answer)
        return answer

    monkeypatch.setattr(bpf_info, "_get_fd_by_id", get_fd_by_id)
    monkeypatch.setattr(bpf_info, "_get_next_id", lambda kind, start: start + 1 if start < 4 else None)
    monkeypatch.setattr(bpf_info.time, "sleep", lambda seconds: None)
    monkeypatch.setattr(bpf_syscall.os, "close", lambda fd: None)
    assert list(bpf_info._infos("LINK", lambda fd: fd)) == [101, 104]
    assert all(not left for left in answers.values())
