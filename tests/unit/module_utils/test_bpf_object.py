"""bpf_object: reading the shipped program object (BTF-defined maps) and the legacy-maps object
earlier releases shipped, rebuilding from source, patching map fds, refusing malformed or
off-contract objects, and (kernel) both programs on this kernel, the shipped one loaded by bpftool
too."""

import ctypes
import hashlib
import ipaddress
import json
import os
import platform
import random
import re
import shutil
import struct
import subprocess
import sys
import time

import pytest

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import bpf_object, btf, elf, hz, rto_program, uapi
from ansible_collections.netbpf.tcp_rto.tests.support import bpf_inventory, bpf_objects, sandbox
from ansible_collections.netbpf.tcp_rto.tests.support.paths import SHIPPED_OBJECT

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
BPF_DIR = os.path.join(REPO, "files", "bpf")
SOURCE = os.path.join(BPF_DIR, "tcp_initial_rto.bpf.c")
BUILD = os.path.join(BPF_DIR, "build")

BpfObjectError = bpf_object.BpfObjectError


@pytest.fixture(scope="module")
def shipped_bytes():
    with open(SHIPPED_OBJECT, "rb") as handle:
        return handle.read()


@pytest.fixture(scope="module")
def shipped(shipped_bytes):
    return bpf_object.BpfObject.from_bytes(shipped_bytes)


@pytest.fixture(scope="module")
def legacy_bytes(tmp_path_factory):
    """The object releases before BTF-defined maps shipped: the same program, maps in SEC("maps"),
    no BTF (built from today's source with their command: byte for byte what they shipped)."""
    with open(bpf_objects.build_legacy(tmp_path_factory.mktemp("legacy"), "tcp_initial_rto.bpf"), "rb") as handle:
        return handle.read()


@pytest.fixture(scope="module")
def legacy(legacy_bytes):
    return bpf_object.BpfObject.from_bytes(legacy_bytes)


# --- a minimal ELF64 little-endian editor, independent of the code under test -------------------

_sections = bpf_objects.sections
_btf_types = bpf_objects.btf_types
_btf_type = bpf_objects.btf_type
_ext_block = bpf_objects.btf_ext_block
BTF_KIND_ARRAY, BTF_KIND_STRUCT, BTF_KIND_TYPEDEF, BTF_KIND_VAR, BTF_KIND_DATASEC = 3, 4, 8, 14, 15


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


def test_shipped_object_has_btf_maps_and_no_dwarf_or_global_data(shipped_bytes):
    names = set(_sections(shipped_bytes))
    assert {".BTF", ".BTF.ext", ".maps"} <= names, names
    assert not names & {"maps", ".rodata", ".data", ".bss"}, names
    assert not [name for name in names if name.startswith(".debug")], names


def test_shipped_object_names_no_build_path(shipped_bytes):
    """The one path in the object is the source's, relative (FILE symbol, .BTF line info)."""
    printable = re.findall(rb"[\x20-\x7e]{4,}", shipped_bytes)  # what strings(1) shows
    assert [text for text in printable if b"/" in text] == [b"./tcp_initial_rto.bpf.c"], printable
    assert REPO.encode() not in shipped_bytes


def test_shipped_object_btf_describes_the_maps_and_the_program(shipped):
    kernel_btf = shipped.btf
    assert kernel_btf is not None and kernel_btf.data[:2] == struct.pack("<H", btf.BTF_MAGIC)
    assert sorted(kernel_btf.map_types) == sorted(rto_program.MAP_CONTRACT)
    assert all(key and value for key, value in kernel_btf.map_types.values())
    assert kernel_btf.map_types["config"][0] == kernel_btf.map_types["hits"][0]  # both __u32
    assert kernel_btf.func_info.count == 1 and kernel_btf.func_info.record_size == 8
    assert struct.unpack_from("<I", kernel_btf.func_info.records, 0)[0] == 0  # the function starts at insn 0
    assert kernel_btf.line_info.count > 10 and kernel_btf.line_info.record_size == 16
    offsets = [
        struct.unpack_from("<I", kernel_btf.line_info.records, 16 * i)[0] for i in range(kernel_btf.line_info.count)
    ]
    assert offsets == sorted(offsets) and offsets[-1] < len(shipped.insns) // 8  # instructions, not bytes


def test_shipped_object_btf_is_ready_for_the_kernel(shipped, shipped_bytes):
    """clang leaves DATASEC sizes and variable offsets 0 for the loader; the reader fills them in
    from the ELF, in offset order, as libbpf does: what bpftool reads from the object it loaded."""
    out = subprocess.run(
        ["bpftool", "-j", "btf", "dump", "file", SHIPPED_OBJECT],
        stdout=subprocess.PIPE,
        universal_newlines=True,
        check=True,
    ).stdout
    raw = {entry["name"]: entry for entry in json.loads(out)["types"] if entry["kind"] == "DATASEC"}
    assert raw[".maps"]["size"] == 0  # as clang wrote it
    fixed = shipped.btf.data
    sections = _sections(shipped_bytes)
    datasecs = [(at, vlen, name) for at, kind, vlen, name in _btf_types(fixed, 0)[1].values() if kind == 15]
    assert sorted(name for _at, _vlen, name in datasecs) == [".maps", "license"]
    names = {type_id: name for type_id, (_at, _kind, _vlen, name) in _btf_types(fixed, 0)[1].items()}
    for at, vlen, name in datasecs:
        assert struct.unpack_from("<I", fixed, at + 8)[0] == sections[name][2]
        entries = [struct.unpack_from("<III", fixed, at + 12 + 12 * index) for index in range(vlen)]
        offsets = [offset for _var, offset, _size in entries]
        assert offsets == sorted(offsets)
        for var_id, offset, _size in entries:
            symbol = _symbol_offset(shipped_bytes, names[var_id])
            assert struct.unpack_from("<Q", shipped_bytes, symbol + 8)[0] == offset


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


def test_rebuilding_from_source_gives_the_shipped_program(shipped, shipped_bytes, tmp_path):
    assert shutil.which("clang"), "clang is needed to rebuild files/bpf (scripts/setup-env installs it)"
    out = tmp_path / "x.o"
    subprocess.run([BUILD, str(out)], check=True, cwd=str(tmp_path))
    rebuilt = bpf_object.BpfObject.from_file(str(out))
    assert rebuilt.insns == shipped.insns, "plugins/plugin_utils/tcp_initial_rto.bpf.o is stale: run files/bpf/build"
    assert rebuilt.maps == shipped.maps
    assert rebuilt.license == shipped.license
    assert rebuilt.map_relocations == shipped.map_relocations
    assert rebuilt.section == shipped.section
    assert rebuilt.btf == shipped.btf
    assert out.read_bytes() == shipped_bytes, "the build is not deterministic, or the shipped object is stale"


def test_build_output_does_not_depend_on_the_build_directory(shipped_bytes, tmp_path):
    """The same source in another directory under another path gives the same bytes."""
    elsewhere = tmp_path / "some" / "other" / "place"
    elsewhere.mkdir(parents=True)
    shutil.copy(SOURCE, str(elsewhere / "tcp_initial_rto.bpf.c"))
    out = tmp_path / "elsewhere.o"
    subprocess.run([BUILD, str(out), str(elsewhere / "tcp_initial_rto.bpf.c")], check=True, cwd="/")
    assert out.read_bytes() == shipped_bytes


def test_legacy_object_reads_as_the_shipped_one(legacy, shipped):
    """The object earlier releases shipped: same program, same maps, no BTF."""
    assert legacy.insns == shipped.insns
    assert dict(legacy.maps) == dict(shipped.maps)
    assert legacy.map_relocations == shipped.map_relocations
    assert legacy.btf is None
    bpf_object.check_contract(legacy)


# --- instructions(): map fds patched in ---------------------------------------------------------


def test_instructions_patch_map_fds(shipped):
    fds = {"rules": 7, "config": 1000, "hits": 2**31 - 1, "stats": 8, "syn_rtx_time": 9, "learned": 10, "auto_conn": 11}
    patched = shipped.instructions(fds)
    assert len(patched) == len(shipped.insns)
    touched = set()
    for index, name in shipped.map_relocations:
        first, second = index * 8, index * 8 + 8
        assert patched[first] == bpf_object.BPF_LD_IMM64
        assert patched[first + 1] >> 4 == uapi.BPF_PSEUDO_MAP_FD
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
    with pytest.raises(BpfObjectError, match="no fd given for map 'auto_conn'"):
        shipped.instructions({"rules": 3, "config": 4, "hits": 5, "stats": 6, "syn_rtx_time": 7, "learned": 8})


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


@pytest.mark.parametrize("section", ["sockops", ".maps", ".BTF", ".BTF.ext", ".symtab", ".relsockops"])
def test_section_offset_past_end(shipped_bytes, section):
    data = _section_field(shipped_bytes, section, SH_OFFSET, "<Q", len(shipped_bytes) - 8)
    assert "past end of file" in _parse_error(data)


def test_legacy_maps_section_offset_past_end(legacy_bytes):
    data = _section_field(legacy_bytes, "maps", SH_OFFSET, "<Q", len(legacy_bytes) - 8)
    assert "past end of file" in _parse_error(data)


def test_section_size_overflow(shipped_bytes):
    assert "past end of file" in _parse_error(_section_field(shipped_bytes, "sockops", SH_SIZE, "<Q", 2**64 - 1))


def test_section_name_offset_past_table(shipped_bytes):
    message = _parse_error(_section_field(shipped_bytes, ".maps", SH_NAME, "<I", 0x7FFFFFFF))
    assert "section 5 name: string offset 2147483647 past its table" in message


def test_no_symbol_table(shipped_bytes):
    data = _section_field(shipped_bytes, ".symtab", SH_TYPE, "<I", elf.SHT_PROGBITS)
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


def test_maps_section_not_whole_definitions(legacy_bytes):
    data = _section_field(legacy_bytes, "maps", SH_SIZE, "<Q", 3 * 20 - 1)
    assert "maps section is 59 bytes, not a multiple of the 20-byte struct bpf_map_def" in _parse_error(data)


def test_map_symbol_outside_maps_section(legacy_bytes):
    end = 20 * len(rto_program.MAP_CONTRACT)  # past the last struct bpf_map_def
    data = _edit(legacy_bytes, _symbol_offset(legacy_bytes, "hits") + 8, "<Q", end)
    assert "map 'hits' at offset %d is not a whole struct bpf_map_def" % end in _parse_error(data)


def test_map_symbol_misaligned(legacy_bytes):
    data = _edit(legacy_bytes, _symbol_offset(legacy_bytes, "hits") + 8, "<Q", 41)
    assert "map 'hits' at offset 41" in _parse_error(data)


def test_map_symbol_wrong_size(legacy_bytes):
    data = _edit(legacy_bytes, _symbol_offset(legacy_bytes, "hits") + 16, "<Q", 24)
    assert "map 'hits' is 24 bytes, struct bpf_map_def is 20" in _parse_error(data)


def test_map_symbol_in_wrong_section(legacy_bytes):
    data = _edit(legacy_bytes, _symbol_offset(legacy_bytes, "hits") + 6, "<H", _sections(legacy_bytes)["license"][3])
    count = len(rto_program.MAP_CONTRACT)
    assert "maps section holds %d definitions but %d are named by symbols" % (count, count - 1) in _parse_error(data)


def _relocation(data, entry):
    """(file offset of relocation entry, r_offset, r_info)"""
    _header, start, _size, _index = _sections(data)[".relsockops"]
    r_offset, r_info = struct.unpack_from("<QQ", data, start + 16 * entry)
    return start + 16 * entry, r_offset, r_info


def test_relocation_symbol_index_out_of_range(shipped_bytes):
    at, r_offset, r_info = _relocation(shipped_bytes, 0)
    data = _edit(shipped_bytes, at, "<QQ", r_offset, (999 << 32) | (r_info & 0xFFFFFFFF))
    assert "symbol index 999 out of range" in _parse_error(data)


@pytest.mark.parametrize("r_offset", ["end", "end-8", 2**63, 2**64 - 8])
def test_relocation_offset_outside_program(shipped_bytes, r_offset):
    """end: the program section's size; end-8: its last instruction, half of no ld_imm64."""
    end = _sections(shipped_bytes)["sockops"][2]
    r_offset = {"end": end, "end-8": end - 8}.get(r_offset, r_offset)
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
    assert "references '_license' in section 'license'; only maps are supported" in message


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


@pytest.mark.parametrize("which", ["shipped", "legacy"])
def test_random_damage_raises_only_bpf_object_error(request, which):
    """Mutated files parse or raise BpfObjectError: never IndexError, struct.error, ..."""
    original = request.getfixturevalue(which + "_bytes")
    rng = random.Random(20240601)
    parsed = 0
    for _round in range(3000):
        data = bytearray(original)
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


# --- malformed BTF (the shipped object, edited) ----------------------------------------------------


def _map_struct_member(data, map_name, member):
    """File offset of the btf_member entry `member` of the struct that defines map_name."""
    _start, types, strings = _btf_types(data)
    _var_id, var_at = _btf_type(data, BTF_KIND_VAR, map_name)
    struct_at, kind, vlen, _name = types[struct.unpack_from("<I", data, var_at + 8)[0]]
    assert kind == BTF_KIND_STRUCT
    for index in range(vlen):
        at = struct_at + 12 + 12 * index
        if struct.unpack_from("<I", data, at)[0] == strings[member]:
            return at
    raise AssertionError("no member %r" % member)


def _btf_header_field(data, offset, fmt, value):
    return _edit(data, _sections(data)[".BTF"][1] + offset, fmt, value)


@pytest.mark.parametrize(
    "edit, error",
    [
        (lambda d: _section_field(d, ".BTF", SH_SIZE, "<Q", 10), ".BTF header truncated (10 of 24 bytes)"),
        (lambda d: _btf_header_field(d, 0, "<H", 0x9FEB), "byte order differs from the ELF's"),
        (lambda d: _btf_header_field(d, 0, "<H", 0x1234), ".BTF magic 0x1234 is not 0xeb9f"),
        (lambda d: _btf_header_field(d, 2, "B", 2), ".BTF version 2, this reader knows version 1"),
        (lambda d: _btf_header_field(d, 4, "<I", 2**32 - 1), ".BTF header size 4294967295 outside 24.."),
        (lambda d: _btf_header_field(d, 12, "<I", 2**32 - 1), ".BTF type section (offset 0, 4294967295 bytes) past"),
        (lambda d: _btf_header_field(d, 20, "<I", 2**31), ".BTF string section (offset"),
        (lambda d: _btf_header_field(d, 8, "<I", 2), ".BTF type section offset 2 is not 4-byte aligned"),
    ],
)
def test_btf_header_damage(shipped_bytes, edit, error):
    assert error in _parse_error(edit(shipped_bytes))


def test_btf_unknown_kind(shipped_bytes):
    _start, types, _strings = _btf_types(shipped_bytes)
    data = _edit(shipped_bytes, types[1][0] + 4, "<I", 31 << 24)
    assert ".BTF type 1 has kind 31, unknown to this reader" in _parse_error(data)


def test_btf_huge_member_count(shipped_bytes):
    type_id, at = _btf_type(shipped_bytes, BTF_KIND_STRUCT, "rule_key")
    data = _edit(shipped_bytes, at + 4, "<I", BTF_KIND_STRUCT << 24 | 0xFFFF)
    assert ".BTF type %d (STRUCT, vlen 65535) runs past the end of the type section" % type_id in _parse_error(data)


def test_btf_member_type_id_out_of_range(shipped_bytes):
    data = _edit(shipped_bytes, _map_struct_member(shipped_bytes, "config", "key") + 4, "<I", 99999)
    message = _parse_error(data)
    assert "map 'config' attribute 'key': BTF type id 99999 out of range" in message


def test_btf_typedef_loop(shipped_bytes):
    type_id, at = _btf_type(shipped_bytes, BTF_KIND_TYPEDEF, "__u64")  # hits' value type
    data = _edit(shipped_bytes, at + 8, "<I", type_id)
    assert "map 'hits' value: BTF type chain longer than 32" in _parse_error(data)


def test_btf_value_larger_than_4_gib(tmp_path):
    data = _variant(tmp_path, ("__type(value, __u64);", "__type(value, __u64[3]);"))
    arrays = [
        (type_id, t[0])
        for type_id, t in _btf_types(data)[1].items()
        if t[1] == BTF_KIND_ARRAY and struct.unpack_from("<I", data, t[0] + 12 + 8)[0] == 3
    ]
    data = _edit(data, arrays[0][1] + 12 + 8, "<I", 2**31)
    assert "map 'hits' value: BTF type" in _parse_error(data) and "larger than 4 GiB" in _parse_error(data)


def test_btf_without_maps_datasec(shipped_bytes):
    _type_id, at = _btf_type(shipped_bytes, BTF_KIND_DATASEC, ".maps")
    data = _edit(shipped_bytes, at, "<I", _btf_types(shipped_bytes)[2]["license"])
    assert "object's .BTF has 0 DATASEC '.maps' types, expected 1" in _parse_error(data)


def test_btf_map_without_symbol(shipped_bytes):
    _type_id, at = _btf_type(shipped_bytes, BTF_KIND_VAR, "config")
    data = _edit(shipped_bytes, at, "<I", _btf_types(shipped_bytes)[2]["tcp_initial_rto"])
    assert "map 'tcp_initial_rto' is in the .maps BTF but has no symbol in the .maps section" in _parse_error(data)


def test_btf_map_not_a_struct(shipped_bytes):
    _type_id, at = _btf_type(shipped_bytes, BTF_KIND_VAR, "config")
    int_id = _btf_type(shipped_bytes, 1, "int")[0]
    data = _edit(shipped_bytes, at + 8, "<I", int_id)
    assert "map 'config': BTF type %d is INT; a map definition is a struct" % int_id in _parse_error(data)


def test_btf_map_symbol_past_its_section(shipped_bytes):
    size = _sections(shipped_bytes)[".maps"][2]
    data = _edit(shipped_bytes, _symbol_offset(shipped_bytes, "hits") + 8, "<Q", size - 4)
    message = "map 'hits' (32 bytes at offset %d) runs past the %d-byte .maps section" % (size - 4, size)
    assert message in _parse_error(data)


def test_btf_ext_record_size(shipped_bytes):
    data = _edit(shipped_bytes, _ext_block(shipped_bytes, 0), "<I", 4)
    assert ".BTF.ext func_info record size 4 outside 8..252" in _parse_error(data)


def test_btf_ext_record_count_past_its_end(shipped_bytes):
    data = _edit(shipped_bytes, _ext_block(shipped_bytes, 1) + 8, "<I", 2**30)
    assert ".BTF.ext line_info: 1073741824 records of 16 bytes run past its end" in _parse_error(data)


def test_btf_ext_instruction_offset_outside_the_program(shipped_bytes, shipped):
    data = _edit(shipped_bytes, _ext_block(shipped_bytes, 1) + 12 + 16, "<I", len(shipped.insns))
    assert ".BTF.ext line_info record 1: instruction offset %d is not inside" % len(shipped.insns) in _parse_error(data)


def test_btf_ext_func_type_out_of_range(shipped_bytes):
    data = _edit(shipped_bytes, _ext_block(shipped_bytes, 0) + 12 + 4, "<I", 77777)
    assert ".BTF.ext func_info record 0: BTF type id 77777 out of range" in _parse_error(data)


def test_btf_ext_core_relocations_are_refused(tmp_path):
    data = _variant(
        tmp_path,
        ("remote_ip4 = skops->remote_ip4;", "remote_ip4 = *__builtin_preserve_access_index(&skops->remote_ip4);"),
    )
    assert "program 'sockops' has CO-RE relocations (.BTF.ext core_relo): not supported" in _parse_error(data)


# --- contract checks on byte edits of the legacy object ------------------------------------------


@pytest.mark.parametrize("name", sorted(rto_program.MAP_CONTRACT))
def test_missing_map(legacy_bytes, name):
    at = _symbol_offset(legacy_bytes, name)
    (st_name,) = struct.unpack_from("<I", legacy_bytes, at)
    strtab = _sections(legacy_bytes)[".strtab"][1]
    data = _edit(legacy_bytes, strtab + st_name + len(name) - 1, "B", ord("z"))
    obj = bpf_object.BpfObject.from_bytes(data)
    assert name not in obj.maps
    assert _contract_error(obj) == "object has no %r map" % name


def _map_field(data, name, field, value):
    maps_offset = _sections(data)["maps"][1]
    (symbol_value,) = struct.unpack_from("<Q", data, _symbol_offset(data, name) + 8)
    return _edit(data, maps_offset + symbol_value + 4 * field, "<I", value)


def test_wrong_map_type(legacy_bytes):
    obj = bpf_object.BpfObject.from_bytes(_map_field(legacy_bytes, "rules", 0, 2))
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
def test_wrong_map_size_or_flags(legacy_bytes, name, field, label):
    want = rto_program.MAP_CONTRACT[name][field]
    obj = bpf_object.BpfObject.from_bytes(_map_field(legacy_bytes, name, field, want + 1))
    assert _contract_error(obj) == "map %r has %s %d, the program needs %d" % (name, label, want + 1, want)


def test_missing_license(legacy_bytes):
    (name_offset,) = struct.unpack_from("<I", legacy_bytes, _sections(legacy_bytes)["license"][0])
    strtab = _sections(legacy_bytes)[".strtab"][1]
    data = _edit(legacy_bytes, strtab + name_offset, "B", ord("L"))  # section now "License"
    obj = bpf_object.BpfObject.from_bytes(data)
    assert obj.license is None
    assert "object has no license section" in _contract_error(obj)


def test_big_endian_contract_depends_on_the_host(shipped):
    assert "object is little-endian, the host is big-endian" in _contract_error(shipped, byteorder="big")


# --- variants compiled from the source -----------------------------------------------------------


def _compile(tmp_path, source, target="bpf", name="variant"):
    assert shutil.which("clang"), "clang is needed for these tests (scripts/setup-env installs it)"
    return bpf_objects.build(source, tmp_path, name, target)


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


def test_legacy_maps_with_btf(tmp_path, shipped):
    """Legacy maps built with -g: maps from SEC("maps"), BTF for the program only."""
    obj = bpf_object.BpfObject.from_bytes(_compile(tmp_path, bpf_objects.legacy_source()))
    assert dict(obj.maps) == dict(shipped.maps)
    assert obj.btf.map_types == {} and obj.btf.func_info.count == 1 and obj.btf.line_info.count
    bpf_object.check_contract(obj)


def test_legacy_maps_with_unusable_btf_read_without_it(tmp_path, shipped):
    data = _compile(tmp_path, bpf_objects.legacy_source())
    data = _section_field(data, ".BTF", SH_SIZE, "<Q", 8)  # header cut short
    obj = bpf_object.BpfObject.from_bytes(data)
    assert obj.btf is None and dict(obj.maps) == dict(shipped.maps)


def test_legacy_and_btf_maps_mixed(tmp_path):
    legacy_maps = re.sub(r"\) (\w+) = \{", r") old_\1 = {", bpf_objects.LEGACY_MAPS)
    data = _variant(tmp_path, (LICENSE_LINE, LICENSE_LINE + "\n" + legacy_maps))
    assert 'object mixes legacy SEC("maps") and BTF-defined SEC(".maps") maps' in _parse_error(data)


def test_btf_maps_without_btf(shipped_bytes):
    data = _section_field(shipped_bytes, ".BTF", SH_NAME, "<I", 0)  # renamed to ""
    assert "BTF-defined maps (.maps) but no .BTF section" in _parse_error(data)


MAP_LINE = "__uint(max_entries, 1);"


@pytest.mark.parametrize(
    "old, new, error",
    [
        (MAP_LINE, "__uint(max_entries, 2);", "map 'config' has max_entries 2, the program needs 1"),
        ("__uint(type, BPF_MAP_TYPE_ARRAY);", "__uint(type, BPF_MAP_TYPE_HASH);", "map 'config' is type 1"),
        ("__type(value, struct config_value);", "__type(value, __u64[2]);", "map 'config' has value_size 16"),
        ("__uint(map_flags, BPF_F_NO_PREALLOC);", "", "map 'rules' has map_flags 0, the program needs 1"),
    ],
)
def test_btf_map_attributes_reach_the_contract(tmp_path, old, new, error):
    obj = bpf_object.BpfObject.from_bytes(_variant(tmp_path, (old, new)))
    assert error in _contract_error(obj)


@pytest.mark.parametrize(
    "old, new, error",
    [
        (MAP_LINE, MAP_LINE + " __uint(numa_node, 1);", "map 'config': attribute 'numa_node' is not supported"),
        (MAP_LINE, MAP_LINE + " __uint(pinning, 1);", "map 'config': pinning 1 is not supported"),
        (MAP_LINE, MAP_LINE + " __uint(key_size, 8);", "map 'config': key_size 8 but its key type is 4 bytes"),
        (MAP_LINE, MAP_LINE + " int *max_len;", "map 'config': attribute 'max_len' is not supported"),
        (MAP_LINE, "int max_entries;", "attribute 'max_entries': BTF type 2 is INT, not a pointer"),
        (MAP_LINE, "int *max_entries;", "is a pointer to INT, not to an array as __uint() declares"),
    ],
)
def test_btf_map_definitions_refused(tmp_path, old, new, error):
    assert error in _parse_error(_variant(tmp_path, (old, new)))


def test_btf_map_key_and_value_sizes_from_types(tmp_path):
    """__type(key, T): the key size is T's, through typedefs and arrays, as the kernel resolves it."""
    obj = bpf_object.BpfObject.from_bytes(
        _variant(
            tmp_path,
            ("__type(value, struct config_value);", "__type(value, const volatile struct config_value[3]);"),
            ("__type(value, __u64);", "__uint(value_size, 8);"),
        )
    )
    assert obj.maps["config"].value_size == 3 * rto_program.CONFIG_VALUE.size
    assert obj.maps["hits"].value_size == 8 and obj.btf.map_types["hits"][1] == 0


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
    assert "references 'knob' in section %r; only maps are supported" % section in message


def test_extra_map(tmp_path):
    data = _variant(
        tmp_path,
        (
            LICENSE_LINE,
            LICENSE_LINE + "\nstruct { __uint(type, BPF_MAP_TYPE_ARRAY); __type(key, __u32); __type(value, __u32); "
            '__uint(max_entries, 1); } extra SEC(".maps");\n',
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
    fds = {"rules": 5, "config": 6, "hits": 7, "stats": 8, "syn_rtx_time": 9, "learned": 10, "auto_conn": 11}
    patched = obj.instructions(fds)
    for index, name in obj.map_relocations:
        offset = index * 8
        assert patched[offset + 1] & 0xF == uapi.BPF_PSEUDO_MAP_FD  # src_reg: low nibble in big-endian
        assert patched[offset + 1] >> 4 == obj.insns[offset + 1] >> 4
        assert struct.unpack_from(">i", patched, offset + 4)[0] == fds[name]


# --- the shipped program on this kernel -----------------------------------------------------------
# Loaded three ways: by bpftool (libbpf, which shares no code with the collection), and with bpf(2)
# through ctypes from what bpf_object parsed, for the shipped object and for the legacy-maps one
# (libbpf 1.0+ refuses legacy SEC("maps") objects). Map updates and lookups, attach and detach are
# left to bpftool as an independent check.

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


def _bpftool_load(obj_path, directory):
    """bpftool prog loadall with the maps pinned too; -> {"prog": path, name: path}."""
    os.mkdir(directory)
    _bpftool("prog", "loadall", obj_path, os.path.join(directory, "progs"), "pinmaps", os.path.join(directory, "maps"))
    paths = {name: os.path.join(directory, "maps", name) for name in rto_program.MAP_CONTRACT}
    paths["prog"] = os.path.join(directory, "progs", rto_program.PROGRAM_NAME)
    assert sorted(os.listdir(os.path.join(directory, "maps"))) == sorted(rto_program.MAP_CONTRACT)
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
    return hz.discover(None, os.uname().release)[0]


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


LOADERS = {
    "bpftool": lambda request, directory: _bpftool_load(SHIPPED_OBJECT, directory),
    "reader": lambda request, directory: _load_and_pin(request.getfixturevalue("shipped"), directory),
    "reader-legacy": lambda request, directory: _load_and_pin(request.getfixturevalue("legacy"), directory),
}


@pytest.mark.kernel
def test_bpftool_loads_the_shipped_object_with_btf(bpffs):
    """libbpf takes the object: typed map dumps, source lines in the program dump. Unpinned, the
    program and its maps are gone; nothing was attached anywhere."""
    paths = _bpftool_load(SHIPPED_OBJECT, os.path.join(bpffs, "loaded"))
    prog = json.loads(_bpftool("-j", "prog", "show", "pinned", paths["prog"]))
    assert prog["type"] == "sock_ops" and prog["name"] == rto_program.PROGRAM_NAME and prog.get("btf_id")
    assert len(prog["map_ids"]) == len(rto_program.MAP_CONTRACT)
    config = json.loads(_bpftool("-j", "map", "dump", "pinned", paths["config"]))
    assert config[0]["formatted"] == {"key": 0, "value": bpf_inventory.config_as_bpftool_shows()}
    xlated = _bpftool("prog", "dump", "xlated", "pinned", paths["prog"])
    assert "; if (op != BPF_SOCK_OPS_TIMEOUT_INIT && op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB &&" in xlated
    prog_id, map_ids = prog["id"], prog["map_ids"]
    for path in paths.values():
        os.unlink(path)
    # The pins held the last references. The kernel frees a program's maps from a work queue after
    # the program: wait (bounded) for them to go.
    assert not _bpftool_shows("prog", prog_id)
    deadline = time.monotonic() + 30
    while any(_bpftool_shows("map", map_id) for map_id in map_ids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [map_id for map_id in map_ids if _bpftool_shows("map", map_id)]


def _bpftool_shows(kind, object_id):
    shown = subprocess.run(
        ["bpftool", kind, "show", "id", str(object_id)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    return shown.returncode == 0


@pytest.mark.kernel
@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_shipped_program_sets_the_initial_rto(request, loader, bpffs, cgroup):
    load = LOADERS[loader]
    hz = _config_hz()
    jiffies_us = 1000000 // hz
    assert _probe_rto(cgroup) == 1000000  # kernel default, nothing attached yet

    outer = load(request, os.path.join(bpffs, "outer"))
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
        inner = load(request, os.path.join(bpffs, "inner"))
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
