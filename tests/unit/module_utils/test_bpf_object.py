"""bpf_object: reading the shipped program object, rebuilding it from source, patching map fds,
refusing malformed or off-contract objects, and (kernel) the shipped program on this kernel."""

import ctypes
import hashlib
import ipaddress
import json
import os
import platform
import random
import shutil
import struct
import subprocess
import sys

import pytest
import sandbox

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import bpf_object, reconcile, rto_program

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
BPF_DIR = os.path.join(REPO, "files", "bpf")
SHIPPED = os.path.join(REPO, "plugins", "plugin_utils", "tcp_initial_rto.bpf.o")
SOURCE = os.path.join(BPF_DIR, "tcp_initial_rto.bpf.c")
BUILD = os.path.join(BPF_DIR, "build")

BpfObjectError = bpf_object.BpfObjectError


@pytest.fixture(scope="module")
def shipped_bytes():
    with open(SHIPPED, "rb") as handle:
        return handle.read()


@pytest.fixture(scope="module")
def shipped(shipped_bytes):
    return bpf_object.BpfObject.from_bytes(shipped_bytes)


# --- a minimal ELF64 little-endian editor, independent of the code under test -------------------


def _sections(data):
    """name -> (header offset, section offset, size, index)"""
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shnum, shstrndx = struct.unpack_from("<HH", data, 0x3C)
    headers = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + 64 * index) for index in range(shnum)]
    names_offset = headers[shstrndx][4]
    result = {}
    for index, header in enumerate(headers):
        start = names_offset + header[0]
        name = data[start : data.index(b"\0", start)].decode()
        result[name] = (shoff + 64 * index, header[4], header[5], index)
    return result


def _symbol_offset(data, name):
    """File offset of the symbol table entry called name."""
    sections = _sections(data)
    _header, symtab, size, _index = sections[".symtab"]
    _header, strtab, _size, _index = sections[".strtab"]
    for entry in range(size // 24):
        (st_name,) = struct.unpack_from("<I", data, symtab + 24 * entry)
        start = strtab + st_name
        if data[start : data.index(b"\0", start)] == name.encode():
            return symtab + 24 * entry
    raise AssertionError("no symbol %r" % name)


def _symbol_index(data, name):
    return (_symbol_offset(data, name) - _sections(data)[".symtab"][1]) // 24


def _edit(data, offset, fmt, *values):
    edited = bytearray(data)
    struct.pack_into(fmt, edited, offset, *values)
    return bytes(edited)


def _section_field(data, section, field_offset, fmt, value):
    return _edit(data, _sections(data)[section][0] + field_offset, fmt, value)


SH_NAME, SH_TYPE, SH_FLAGS, SH_OFFSET, SH_SIZE, SH_LINK = 0, 4, 8, 24, 32, 40


def _parse_error(data):
    with pytest.raises(BpfObjectError) as caught:
        bpf_object.BpfObject.from_bytes(data)
    return str(caught.value)


def _contract_error(obj, **kwargs):
    with pytest.raises(BpfObjectError) as caught:
        bpf_object.check_contract(obj, **kwargs)
    return str(caught.value)


# --- the shipped object -------------------------------------------------------------------------


def test_shipped_object_matches_the_contract(shipped, shipped_bytes):
    assert shipped.section == rto_program.PROGRAM_SECTION
    assert shipped.name == rto_program.PROGRAM_NAME
    assert shipped.license == "GPL"
    assert shipped.byteorder == "little"
    assert shipped.sha256 == hashlib.sha256(shipped_bytes).hexdigest()
    assert len(shipped.insns) % 8 == 0 and len(shipped.insns) > 0
    assert {name: tuple(spec[1:]) for name, spec in shipped.maps.items()} == rto_program.MAP_CONTRACT
    assert all(spec.name == name for name, spec in shipped.maps.items())
    bpf_object.check_contract(shipped)


def test_shipped_object_relocations_are_map_loads(shipped):
    assert sorted({name for _offset, name in shipped.map_relocations}) == sorted(rto_program.MAP_CONTRACT)
    for index, _name in shipped.map_relocations:
        assert shipped.insns[index * 8] == bpf_object.BPF_LD_IMM64
    assert shipped.map_relocations == sorted(shipped.map_relocations)


def test_shipped_object_has_no_btf_debug_or_global_data(shipped_bytes):
    names = set(_sections(shipped_bytes))
    assert not names & {".BTF", ".BTF.ext", ".maps", ".rodata", ".data", ".bss"}, names
    assert not [name for name in names if name.startswith(".debug")], names


def test_from_file_reads_the_same_as_from_bytes(shipped, tmp_path, shipped_bytes):
    copy = tmp_path / "copy.o"
    copy.write_bytes(shipped_bytes)
    again = bpf_object.BpfObject.from_file(str(copy))
    assert (again.insns, again.maps, again.map_relocations, again.sha256) == (
        shipped.insns,
        shipped.maps,
        shipped.map_relocations,
        shipped.sha256,
    )


def test_rebuilding_from_source_gives_the_shipped_program(shipped, tmp_path):
    assert shutil.which("clang"), "clang is needed to rebuild files/bpf (scripts/setup-env installs it)"
    out = tmp_path / "x.o"
    subprocess.run([BUILD, str(out)], check=True, cwd=str(tmp_path))
    rebuilt = bpf_object.BpfObject.from_file(str(out))
    assert rebuilt.insns == shipped.insns, "plugins/plugin_utils/tcp_initial_rto.bpf.o is stale: run files/bpf/build"
    assert rebuilt.maps == shipped.maps
    assert rebuilt.license == shipped.license
    assert rebuilt.map_relocations == shipped.map_relocations
    assert rebuilt.section == shipped.section


# --- instructions(): map fds patched in ---------------------------------------------------------


def test_instructions_patch_map_fds(shipped):
    fds = {"rules": 7, "config": 1000, "hits": 2**31 - 1}
    patched = shipped.instructions(fds)
    assert len(patched) == len(shipped.insns)
    touched = set()
    for index, name in shipped.map_relocations:
        first, second = index * 8, index * 8 + 8
        assert patched[first] == bpf_object.BPF_LD_IMM64
        assert patched[first + 1] >> 4 == bpf_object.BPF_PSEUDO_MAP_FD
        assert patched[first + 1] & 0xF == shipped.insns[first + 1] & 0xF  # dst_reg kept
        assert struct.unpack_from("<i", patched, first + 4)[0] == fds[name]
        assert struct.unpack_from("<i", patched, second + 4)[0] == 0
        touched.update(
            (first + 1, first + 4, first + 5, first + 6, first + 7, second + 4, second + 5, second + 6, second + 7)
        )
    for offset in range(len(patched)):
        if offset not in touched:
            assert patched[offset] == shipped.insns[offset], offset
    assert shipped.instructions(fds) == patched  # the object itself is left alone


def test_instructions_need_every_map_fd(shipped):
    with pytest.raises(BpfObjectError, match="no fd given for map 'hits'"):
        shipped.instructions({"rules": 3, "config": 4})


@pytest.mark.parametrize("fd", [-1, 2**31, "3", None])
def test_instructions_refuse_what_is_not_an_fd(shipped, fd):
    with pytest.raises(BpfObjectError, match="for map 'config' is not a file descriptor"):
        shipped.instructions({"rules": 3, "config": fd, "hits": 5})


# --- malformed files ----------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"\x7fEL", b"hello world, not an object", b"MZ\x90\x00" + b"\0" * 60])
def test_not_elf(data):
    assert _parse_error(data) == "not an ELF file"


def test_source_file_is_not_elf():
    with open(SOURCE, "rb") as handle:
        assert _parse_error(handle.read()) == "not an ELF file"


@pytest.mark.parametrize("cut", [4, 15, 16, 40, 63, 64, 0x100, -64 * 3, -1])
def test_truncated(shipped_bytes, cut):
    message = _parse_error(shipped_bytes[:cut])
    if cut < 0 or cut >= 64:
        assert "past end of file (truncated?)" in message
    else:
        assert "truncated" in message


def test_elf32(shipped_bytes):
    assert "ELF32" in _parse_error(_edit(shipped_bytes, 4, "B", 1))


def test_unknown_class(shipped_bytes):
    assert "unknown ELF class 7" in _parse_error(_edit(shipped_bytes, 4, "B", 7))


def test_unknown_data_encoding(shipped_bytes):
    assert "unknown ELF data encoding 0" in _parse_error(_edit(shipped_bytes, 5, "B", 0))


def test_little_endian_bytes_marked_big_endian(shipped_bytes):
    _parse_error(_edit(shipped_bytes, 5, "B", 2))  # every field reads wrong: refused, not misread


def test_wrong_machine(shipped_bytes):
    assert _parse_error(_edit(shipped_bytes, 18, "<H", 62)) == "ELF machine 62 is not BPF (247)"


def test_not_relocatable(shipped_bytes):
    assert "not a relocatable object" in _parse_error(_edit(shipped_bytes, 16, "<H", 2))


def test_section_count_past_end(shipped_bytes):
    message = _parse_error(_edit(shipped_bytes, 0x3C, "<H", 0xFEFF))
    assert message.startswith("section header table past end of file (truncated?)")


def test_section_table_offset_past_end(shipped_bytes):
    message = _parse_error(_edit(shipped_bytes, 0x28, "<Q", len(shipped_bytes)))
    assert message.startswith("section header table past end of file (truncated?)")


def test_section_table_offset_overflow(shipped_bytes):
    assert "past end of file" in _parse_error(_edit(shipped_bytes, 0x28, "<Q", 2**64 - 8))


def test_no_section_table(shipped_bytes):
    assert "no section header table" in _parse_error(_edit(shipped_bytes, 0x28, "<Q", 0))


def test_wrong_section_header_size(shipped_bytes):
    assert "section header size 40" in _parse_error(_edit(shipped_bytes, 0x3A, "<H", 40))


def test_section_name_table_index_out_of_range(shipped_bytes):
    assert "section name table index 200 out of range" in _parse_error(_edit(shipped_bytes, 0x3E, "<H", 200))


@pytest.mark.parametrize("section", ["sockops", "maps", ".symtab", ".relsockops"])
def test_section_offset_past_end(shipped_bytes, section):
    data = _section_field(shipped_bytes, section, SH_OFFSET, "<Q", len(shipped_bytes) - 8)
    assert "past end of file" in _parse_error(data)


def test_section_size_overflow(shipped_bytes):
    assert "past end of file" in _parse_error(_section_field(shipped_bytes, "sockops", SH_SIZE, "<Q", 2**64 - 1))


def test_section_name_offset_past_table(shipped_bytes):
    message = _parse_error(_section_field(shipped_bytes, "maps", SH_NAME, "<I", 0x7FFFFFFF))
    assert "section 5 name: string offset 2147483647 past its table" in message


def test_no_symbol_table(shipped_bytes):
    data = _section_field(shipped_bytes, ".symtab", SH_TYPE, "<I", bpf_object.SHT_PROGBITS)
    assert "no symbol table" in _parse_error(data)


def test_symbol_table_string_table_out_of_range(shipped_bytes):
    data = _section_field(shipped_bytes, ".symtab", SH_LINK, "<I", 99)
    assert "section index 99 out of range" in _parse_error(data)


def test_symbol_name_offset_out_of_range(shipped_bytes):
    data = _edit(shipped_bytes, _symbol_offset(shipped_bytes, "config"), "<I", 0xFFFFFF)
    assert "string offset 16777215 past its table" in _parse_error(data)


def test_no_program_section(shipped_bytes):
    data = _section_field(shipped_bytes, "sockops", SH_FLAGS, "<Q", 0x3)  # ALLOC|WRITE, not EXECINSTR
    assert "no program section" in _parse_error(data)


def test_program_size_not_whole_instructions(shipped_bytes):
    size = _sections(shipped_bytes)["sockops"][2]
    data = _section_field(shipped_bytes, "sockops", SH_SIZE, "<Q", size - 4)
    assert "not a multiple of the 8-byte instruction" in _parse_error(data)


def test_maps_section_not_whole_definitions(shipped_bytes):
    data = _section_field(shipped_bytes, "maps", SH_SIZE, "<Q", 3 * 20 - 1)
    assert "maps section is 59 bytes, not a multiple of the 20-byte struct bpf_map_def" in _parse_error(data)


def test_map_symbol_outside_maps_section(shipped_bytes):
    data = _edit(shipped_bytes, _symbol_offset(shipped_bytes, "hits") + 8, "<Q", 60)
    assert "map 'hits' at offset 60 is not a whole struct bpf_map_def" in _parse_error(data)


def test_map_symbol_misaligned(shipped_bytes):
    data = _edit(shipped_bytes, _symbol_offset(shipped_bytes, "hits") + 8, "<Q", 41)
    assert "map 'hits' at offset 41" in _parse_error(data)


def test_map_symbol_wrong_size(shipped_bytes):
    data = _edit(shipped_bytes, _symbol_offset(shipped_bytes, "hits") + 16, "<Q", 24)
    assert "map 'hits' is 24 bytes, struct bpf_map_def is 20" in _parse_error(data)


def test_map_symbol_in_wrong_section(shipped_bytes):
    data = _edit(shipped_bytes, _symbol_offset(shipped_bytes, "hits") + 6, "<H", _sections(shipped_bytes)["license"][3])
    assert "maps section holds 3 definitions but 2 are named by symbols" in _parse_error(data)


def _relocation(data, entry):
    """(file offset of relocation entry, r_offset, r_info)"""
    _header, start, _size, _index = _sections(data)[".relsockops"]
    r_offset, r_info = struct.unpack_from("<QQ", data, start + 16 * entry)
    return start + 16 * entry, r_offset, r_info


def test_relocation_symbol_index_out_of_range(shipped_bytes):
    at, r_offset, r_info = _relocation(shipped_bytes, 0)
    data = _edit(shipped_bytes, at, "<QQ", r_offset, (999 << 32) | (r_info & 0xFFFFFFFF))
    assert "symbol index 999 out of range" in _parse_error(data)


@pytest.mark.parametrize("r_offset", [0x280, 0x278, 2**63, 2**64 - 8])
def test_relocation_offset_outside_program(shipped_bytes, r_offset):
    at, _r_offset, r_info = _relocation(shipped_bytes, 0)
    message = _parse_error(_edit(shipped_bytes, at, "<QQ", r_offset, r_info))
    assert "is outside the program section 'sockops'" in message


def test_relocation_offset_misaligned(shipped_bytes):
    at, r_offset, r_info = _relocation(shipped_bytes, 0)
    assert "or not on an ld_imm64" in _parse_error(_edit(shipped_bytes, at, "<QQ", r_offset + 3, r_info))


def test_relocation_on_other_instruction(shipped_bytes):
    at, _r_offset, r_info = _relocation(shipped_bytes, 0)
    assert "instruction 0 has opcode 0xbf, not ld_imm64" in _parse_error(_edit(shipped_bytes, at, "<QQ", 0, r_info))


def test_relocation_type_unsupported(shipped_bytes):
    at, r_offset, r_info = _relocation(shipped_bytes, 0)
    data = _edit(shipped_bytes, at, "<QQ", r_offset, (r_info & ~0xFFFFFFFF) | 2)
    assert "relocation type 2 is not supported" in _parse_error(data)


def test_relocation_to_a_non_map_section(shipped_bytes):
    at, r_offset, _r_info = _relocation(shipped_bytes, 0)
    data = _edit(shipped_bytes, at, "<QQ", r_offset, (_symbol_index(shipped_bytes, "_license") << 32) | 1)
    message = _parse_error(data)
    assert "references '_license' in section 'license'; only maps in SEC(\"maps\") are supported" in message


def test_relocation_to_undefined_symbol(shipped_bytes):
    at, r_offset, _r_info = _relocation(shipped_bytes, 0)
    assert "undefined symbol" in _parse_error(_edit(shipped_bytes, at, "<QQ", r_offset, (0 << 32) | 1))


def _unrelocated(data, src_reg, imm=3):
    """The first map load without its relocation (R_BPF_NONE), its src_reg and imm set as given."""
    at, r_offset, r_info = _relocation(data, 0)
    data = _edit(data, at, "<QQ", r_offset, r_info & ~0xFFFFFFFF)
    insn = _sections(data)["sockops"][1] + r_offset
    dst_reg = data[insn + 1] & 0xF
    data = _edit(data, insn + 1, "B", src_reg << 4 | dst_reg)
    return _edit(data, insn + 4, "<i", imm), r_offset // 8


@pytest.mark.parametrize(
    "src_reg, kind", [(1, "BPF_PSEUDO_MAP_FD"), (2, "BPF_PSEUDO_MAP_VALUE"), (5, "BPF_PSEUDO_MAP_IDX")]
)
def test_map_load_by_raw_fd_is_refused(shipped_bytes, src_reg, kind):
    """An object that names a map by fd number would reach whatever the loader has open there."""
    data, index = _unrelocated(shipped_bytes, src_reg)
    message = _parse_error(data)
    assert "instruction %d is an ld_imm64 with src_reg %d (%s" % (index, src_reg, kind) in message
    assert "imm 3 but no relocation" in message


def test_unrelocated_ld_imm64_of_a_constant_is_kept(shipped_bytes, shipped):
    data, index = _unrelocated(shipped_bytes, 0, imm=12345)
    obj = bpf_object.BpfObject.from_bytes(data)
    assert index not in dict(obj.map_relocations)
    assert obj.insns[index * 8 + 4 : index * 8 + 8] == struct.pack("<i", 12345)
    assert len(obj.map_relocations) == len(shipped.map_relocations) - 1


def test_two_relocations_of_one_instruction_are_refused(shipped_bytes):
    at, r_offset, r_info = _relocation(shipped_bytes, 0)
    data = _edit(shipped_bytes, at + 16, "<QQ", r_offset, r_info)
    assert "has a relocation already" in _parse_error(data)


def test_relocation_section_linking_the_wrong_symbol_table(shipped_bytes):
    data = _section_field(shipped_bytes, ".relsockops", SH_LINK, "<I", 1)
    assert "links section 1, not the symbol table" in _parse_error(data)


def test_random_damage_raises_only_bpf_object_error(shipped_bytes):
    """Mutated files parse or raise BpfObjectError: never IndexError, struct.error, ..."""
    rng = random.Random(20240601)
    parsed = 0
    for _round in range(3000):
        data = bytearray(shipped_bytes)
        for _change in range(rng.randint(1, 4)):
            offset = rng.randrange(len(data))
            data[offset] = rng.choice((0, 0xFF, 0x7F, 0x80, rng.randrange(256)))
        if rng.random() < 0.2:
            data = data[: rng.randrange(len(data))]
        try:
            obj = bpf_object.BpfObject.from_bytes(bytes(data))
        except BpfObjectError:
            continue
        parsed += 1
        try:
            bpf_object.check_contract(obj)
            obj.instructions(dict.fromkeys(obj.maps, 3))
        except BpfObjectError:
            pass
    assert parsed > 0  # some damage is harmless (padding, instruction bytes)


# --- contract checks on byte edits of the shipped object -----------------------------------------


@pytest.mark.parametrize("name", sorted(rto_program.MAP_CONTRACT))
def test_missing_map(shipped_bytes, name):
    at = _symbol_offset(shipped_bytes, name)
    (st_name,) = struct.unpack_from("<I", shipped_bytes, at)
    strtab = _sections(shipped_bytes)[".strtab"][1]
    data = _edit(shipped_bytes, strtab + st_name + len(name) - 1, "B", ord("z"))
    obj = bpf_object.BpfObject.from_bytes(data)
    assert name not in obj.maps
    assert _contract_error(obj) == "object has no %r map" % name


def _map_field(data, name, field, value):
    maps_offset = _sections(data)["maps"][1]
    (symbol_value,) = struct.unpack_from("<Q", data, _symbol_offset(data, name) + 8)
    return _edit(data, maps_offset + symbol_value + 4 * field, "<I", value)


def test_wrong_map_type(shipped_bytes):
    obj = bpf_object.BpfObject.from_bytes(_map_field(shipped_bytes, "rules", 0, 2))
    assert _contract_error(obj) == "map 'rules' is type 2 (ARRAY), the program needs 11 (LPM_TRIE)"


@pytest.mark.parametrize(
    "name, field, label",
    [
        ("rules", 1, "key_size"),
        ("rules", 2, "value_size"),
        ("config", 3, "max_entries"),
        ("rules", 4, "map_flags"),
        ("hits", 2, "value_size"),
        ("hits", 3, "max_entries"),
    ],
)
def test_wrong_map_size_or_flags(shipped_bytes, name, field, label):
    want = rto_program.MAP_CONTRACT[name][field]
    obj = bpf_object.BpfObject.from_bytes(_map_field(shipped_bytes, name, field, want + 1))
    assert _contract_error(obj) == "map %r has %s %d, the program needs %d" % (name, label, want + 1, want)


def test_missing_license(shipped_bytes):
    (name_offset,) = struct.unpack_from("<I", shipped_bytes, _sections(shipped_bytes)["license"][0])
    strtab = _sections(shipped_bytes)[".strtab"][1]
    data = _edit(shipped_bytes, strtab + name_offset, "B", ord("L"))  # section now "License"
    obj = bpf_object.BpfObject.from_bytes(data)
    assert obj.license is None
    assert "object has no license section" in _contract_error(obj)


def test_big_endian_contract_depends_on_the_host(shipped):
    assert "object is little-endian, the host is big-endian" in _contract_error(shipped, byteorder="big")


# --- variants compiled from the source -----------------------------------------------------------


def _compile(tmp_path, source, target="bpf", name="variant"):
    assert shutil.which("clang"), "clang is needed for these tests (scripts/setup-env installs it)"
    multiarch = (
        subprocess.run(
            ["gcc", "-print-multiarch"], stdout=subprocess.PIPE, universal_newlines=True, check=False
        ).stdout.strip()
        or "x86_64-linux-gnu"
    )
    c_file, o_file = tmp_path / (name + ".c"), tmp_path / (name + ".o")
    c_file.write_text(source)
    subprocess.run(
        [
            "clang",
            "-O2",
            "-target",
            target,
            "-mcpu=v2",
            "-fno-addrsig",
            "-Wall",
            "-I/usr/include/" + multiarch,
            "-c",
            str(c_file),
            "-o",
            str(o_file),
        ],
        check=True,
    )
    return o_file.read_bytes()


def _variant(tmp_path, *replacements, **kwargs):
    with open(SOURCE) as handle:
        source = handle.read()
    for old, new in replacements:
        assert old in source, "the source changed: update this test (%r)" % old
        source = source.replace(old, new)
    return _compile(tmp_path, source, **kwargs)


LICENSE_LINE = 'char _license[] SEC("license") = "GPL";'
PROGRAM_SEC = 'SEC("sockops")\nint tcp_initial_rto'


def test_variant_build_matches_shipped(shipped, tmp_path):
    """The variants below differ from the shipped object only by what they change."""
    variant = bpf_object.BpfObject.from_bytes(_variant(tmp_path))
    assert variant.insns == shipped.insns and variant.maps == shipped.maps


def test_two_program_sections(tmp_path):
    data = _variant(
        tmp_path,
        (
            LICENSE_LINE,
            LICENSE_LINE + '\nSEC("sockops/second")\nint second(struct bpf_sock_ops *skops) { return 1; }\n',
        ),
    )
    assert "object has 2 program sections (sockops, sockops/second)" in _parse_error(data)


def test_wrong_program_section_name(tmp_path):
    obj = bpf_object.BpfObject.from_bytes(
        _variant(tmp_path, (PROGRAM_SEC, PROGRAM_SEC.replace("sockops", "kprobe/tcp_connect")))
    )
    assert obj.section == "kprobe/tcp_connect"
    assert "program section is 'kprobe/tcp_connect'; a sock_ops program must be in SEC('sockops')" in _contract_error(
        obj
    )


def test_sockops_subsection_is_accepted(tmp_path):
    obj = bpf_object.BpfObject.from_bytes(
        _variant(tmp_path, (PROGRAM_SEC, PROGRAM_SEC.replace("sockops", "sockops/rto")))
    )
    assert obj.section == "sockops/rto"
    bpf_object.check_contract(obj)


def test_sockops_prefix_without_slash_is_refused(tmp_path):
    obj = bpf_object.BpfObject.from_bytes(_variant(tmp_path, (PROGRAM_SEC, PROGRAM_SEC.replace("sockops", "sockopsx"))))
    assert "program section is 'sockopsx'" in _contract_error(obj)


def test_not_inlined_function(tmp_path):
    data = _variant(
        tmp_path,
        ("static __attribute__((always_inline)) void count_hit", "static __attribute__((noinline)) void count_hit"),
    )
    assert "code in .text besides its program" in _parse_error(data)


@pytest.mark.parametrize("license", ["Proprietary", "GPLv2", "GPL-2.0", "MIT", "gpl"])
def test_non_gpl_license(tmp_path, license):
    obj = bpf_object.BpfObject.from_bytes(
        _variant(tmp_path, (LICENSE_LINE, LICENSE_LINE.replace('"GPL"', '"%s"' % license)))
    )
    assert obj.license == license
    assert "license %r is not GPL-compatible" % license in _contract_error(obj)


@pytest.mark.parametrize("license", ["Dual BSD/GPL", "GPL v2", "Dual MIT/GPL"])
def test_gpl_compatible_license(tmp_path, license):
    obj = bpf_object.BpfObject.from_bytes(
        _variant(tmp_path, (LICENSE_LINE, LICENSE_LINE.replace('"GPL"', '"%s"' % license)))
    )
    bpf_object.check_contract(obj)


def test_no_license_section(tmp_path):
    obj = bpf_object.BpfObject.from_bytes(_variant(tmp_path, (LICENSE_LINE, "")))
    assert "object has no license section" in _contract_error(obj)


def test_btf_defined_maps(tmp_path):
    data = _variant(tmp_path, (LICENSE_LINE, LICENSE_LINE + '\nstruct { int type; } btf_map SEC(".maps");\n'))
    assert _parse_error(data) == 'uses BTF-defined maps (.maps section); build it with legacy SEC("maps") definitions'


@pytest.mark.parametrize(
    "declaration, section",
    [
        ("volatile __u32 knob = FULL_PREFIX;", ".data"),
        ("volatile __u32 knob;", ".bss"),
        ("const volatile __u32 knob = FULL_PREFIX;", ".rodata"),
    ],
)
def test_global_data(tmp_path, declaration, section):
    data = _variant(
        tmp_path,
        (PROGRAM_SEC, declaration + "\n" + PROGRAM_SEC),
        ("key.prefixlen = FULL_PREFIX;", "key.prefixlen = knob;"),
    )
    message = _parse_error(data)
    assert "references 'knob' in section %r; only maps in SEC(\"maps\") are supported" % section in message


def test_extra_map(tmp_path):
    data = _variant(
        tmp_path,
        (
            LICENSE_LINE,
            LICENSE_LINE + '\nstruct bpf_map_def SEC("maps") extra = '
            "{ .type = BPF_MAP_TYPE_ARRAY, .key_size = 4, .value_size = 4, .max_entries = 1 };\n",
        ),
    )
    obj = bpf_object.BpfObject.from_bytes(data)
    assert list(obj.maps)[-1] == "extra"
    assert "map(s) 'extra' are not part of the program's contract" in _contract_error(obj)


def test_big_endian_object(tmp_path, shipped):
    obj = bpf_object.BpfObject.from_bytes(_variant(tmp_path, target="bpfeb"))
    assert obj.byteorder == "big"
    assert obj.maps == shipped.maps  # the code differs: V4_MAPPED_WORD follows the byte order
    assert sorted({name for _offset, name in obj.map_relocations}) == sorted(obj.maps)
    if sys.byteorder == "little":
        assert "object is big-endian, the host is little-endian" in _contract_error(obj)
    bpf_object.check_contract(obj, byteorder="big")
    patched = obj.instructions({"rules": 5, "config": 6, "hits": 7})
    for index, name in obj.map_relocations:
        offset = index * 8
        assert patched[offset + 1] & 0xF == bpf_object.BPF_PSEUDO_MAP_FD  # src_reg: low nibble in big-endian
        assert patched[offset + 1] >> 4 == obj.insns[offset + 1] >> 4
        assert struct.unpack_from(">i", patched, offset + 4)[0] == {"rules": 5, "config": 6, "hits": 7}[name]


# --- the shipped program on this kernel -----------------------------------------------------------
# libbpf 1.0+ (bpftool 7+) refuses legacy SEC("maps") objects, so bpftool cannot load this object:
# the test loads it with bpf(2) through ctypes, from what bpf_object parsed, and leaves the rest
# (map updates and lookups, attach, detach) to bpftool as an independent check.

BPF_MAP_CREATE, BPF_PROG_LOAD, BPF_OBJ_PIN = 0, 5, 6
BPF_PROG_TYPE_SOCK_OPS = 13
_SYS_BPF = {"x86_64": 321, "aarch64": 280}


def _bpf(cmd, attr):
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(attr, 128)
    result = libc.syscall(_SYS_BPF[platform.machine()], cmd, buf, ctypes.c_uint(128))
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    return result


def _pin(fd, path):
    path_buf = ctypes.create_string_buffer(path.encode())
    _bpf(BPF_OBJ_PIN, struct.pack("=QII", ctypes.addressof(path_buf), fd, 0))


def _load_and_pin(obj, directory):
    """Create the maps, load the program, pin all under directory; -> {"prog": path, name: path}."""
    os.mkdir(directory)
    fds, paths = {}, {"prog": os.path.join(directory, "prog")}
    try:
        for name, spec in obj.maps.items():
            fds[name] = _bpf(
                BPF_MAP_CREATE,
                struct.pack(
                    "=IIIIIII16s",
                    spec.type,
                    spec.key_size,
                    spec.value_size,
                    spec.max_entries,
                    spec.flags,
                    0,
                    0,
                    name.encode(),
                ),
            )
            paths[name] = os.path.join(directory, name)
            _pin(fds[name], paths[name])
        insns = obj.instructions(fds)
        insns_buf = ctypes.create_string_buffer(insns, len(insns))
        license_buf = ctypes.create_string_buffer(obj.license.encode())
        log = ctypes.create_string_buffer(1 << 20)
        try:
            prog = _bpf(
                BPF_PROG_LOAD,
                struct.pack(
                    "=IIQQIIQII16s",
                    BPF_PROG_TYPE_SOCK_OPS,
                    len(insns) // 8,
                    ctypes.addressof(insns_buf),
                    ctypes.addressof(license_buf),
                    1,
                    len(log),
                    ctypes.addressof(log),
                    0,
                    0,
                    b"tcp_initial_rto",
                ),
            )
        except OSError as exc:
            raise AssertionError("verifier refused the program: %s\n%s" % (exc, log.value.decode(errors="replace")))
        fds["prog"] = prog
        _pin(prog, paths["prog"])
    finally:
        for fd in fds.values():
            os.close(fd)
    return paths


def _bpftool(*args):
    result = subprocess.run(
        ("bpftool", *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False
    )
    assert result.returncode == 0, "bpftool %s: %s%s" % (" ".join(args), result.stdout, result.stderr)
    return result.stdout


def _hex(data):
    return ["hex"] + ["%02x" % byte for byte in bytearray(data)]


def _map_update(path, key, value):
    _bpftool("map", "update", "pinned", path, "key", *([*_hex(key), "value", *_hex(value)]))


def _hits(path, slot):
    """Sum over CPUs of hits[slot]."""
    out = json.loads(_bpftool("-j", "map", "lookup", "pinned", path, "key", *_hex(rto_program.HIT_KEY.pack(slot))))
    return sum(rto_program.HIT_VALUE.unpack(bytes(int(byte, 16) for byte in cpu["value"]))[0] for cpu in out["values"])


def _config_hz():
    """CONFIG_HZ as the module finds it."""
    return reconcile.discover_hz(dict(hz=None), os.uname().release)[0]


# Runs in a child process that joins a cgroup first: a socket belongs to its creator's cgroup. A
# listen(0) listener takes one connection; the next SYN is dropped, so the second non-blocking
# connect stays in SYN_SENT, where TCP_INFO.tcpi_rto (u32 at byte 8) shows the initial RTO.
_PROBE = r"""
import json, os, socket, struct, sys
with open(os.path.join(sys.argv[1], "cgroup.procs"), "w") as procs:
    procs.write(str(os.getpid()))
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(0)
first = socket.create_connection(listener.getsockname(), timeout=5)
second = socket.socket()
second.setblocking(False)
error = second.connect_ex(listener.getsockname())
info = second.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
print(json.dumps({"errno": error, "state": info[0], "rto_us": struct.unpack_from("=I", info, 8)[0]}))
"""
TCP_SYN_SENT = 2


def _probe_rto(cgroup):
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, cgroup],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    probe = json.loads(result.stdout)
    assert probe["state"] == TCP_SYN_SENT, probe
    return probe["rto_us"]


@pytest.mark.kernel
def test_shipped_program_sets_the_initial_rto(shipped, bpffs, cgroup):
    hz = _config_hz()
    jiffies_us = 1000000 // hz
    assert _probe_rto(cgroup) == 1000000  # kernel default, nothing attached yet

    outer = _load_and_pin(shipped, os.path.join(bpffs, "outer"))
    _map_update(outer["config"], rto_program.CONFIG_KEY.pack(0), rto_program.encode_config(750, 3))
    _bpftool("cgroup", "attach", cgroup, "sock_ops", "pinned", outer["prog"], "multi")
    inner_cgroup, inner = None, None
    try:
        # default for both directions: both connects (outgoing) and the listener's request socket
        # (incoming) count in the default slot
        assert _probe_rto(cgroup) == 750 * 1000000 // hz
        assert _hits(outer["hits"], rto_program.DEFAULT_HIT_SLOT) == 3

        # incoming only: outgoing connects keep the kernel default; the request socket counts
        _map_update(outer["config"], rto_program.CONFIG_KEY.pack(0), rto_program.encode_config(750, 2))
        assert _probe_rto(cgroup) == 1000000
        assert _hits(outer["hits"], rto_program.DEFAULT_HIT_SLOT) == 4

        # a rule for 127.0.0.0/8 beats the default
        _map_update(outer["config"], rto_program.CONFIG_KEY.pack(0), rto_program.encode_config(750, 3))
        _map_update(
            outer["rules"],
            rto_program.encode_rule_key(ipaddress.ip_network("127.0.0.0/8")),
            rto_program.encode_rule_value(100, 0),
        )
        assert _probe_rto(cgroup) == 100 * jiffies_us
        assert _hits(outer["hits"], 0) >= 3
        assert _hits(outer["hits"], rto_program.DEFAULT_HIT_SLOT) == 4

        # a program of a cgroup closer to the socket answers first; the outer one keeps its reply
        inner_cgroup = sandbox.make_cgroup(parent=cgroup, label="inner")
        inner = _load_and_pin(shipped, os.path.join(bpffs, "inner"))
        _map_update(inner["config"], rto_program.CONFIG_KEY.pack(0), rto_program.encode_config(500, 3))
        _bpftool("cgroup", "attach", inner_cgroup, "sock_ops", "pinned", inner["prog"], "multi")
        outer_rule_hits = _hits(outer["hits"], 0)
        assert _probe_rto(inner_cgroup) == 500 * jiffies_us
        assert _hits(inner["hits"], rto_program.DEFAULT_HIT_SLOT) == 3
        assert _hits(outer["hits"], 0) == outer_rule_hits
    finally:
        if inner is not None:
            _bpftool("cgroup", "detach", inner_cgroup, "sock_ops", "pinned", inner["prog"])
        _bpftool("cgroup", "detach", cgroup, "sock_ops", "pinned", outer["prog"])
