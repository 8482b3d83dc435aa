# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reading a BPF ELF object: program section, license, map relocations; the contract check.

Parsing only, as cilium/ebpf separates its CollectionSpec from loading: nothing here calls
bpf(2). The loader creates the maps, patches their fds in with BpfObject.instructions() and loads
the program. The file is read by elf (bounded: a damaged or hostile object raises
BpfObjectError, never IndexError or struct.error), its maps by map_definitions, its BTF by btf and
btf_ext. The instruction count is capped (MAX_PROGRAM_INSNS). An ld_imm64 that references a map
(or anything else through src_reg) must come with a relocation: the object cannot name a map by a
raw fd.

Supported: one ELF64 relocatable object for the BPF machine, one non-empty code section, maps
BTF-defined in SEC(".maps") or legacy in SEC("maps"). The BTF comes out ready for BPF_BTF_LOAD,
with each map's key and value type ids and the program's func_info and line_info; the loader uses
them where the kernel takes them. A legacy object's BTF is optional: one this reader cannot use is
dropped. Not supported (rejected with a message): global data (.rodata/.data/.bss), bpf-to-bpf
calls, several programs, CO-RE relocations. DWARF (.debug_*) is ignored.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import struct
import sys

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import rto_program, uapi
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.btf import BTF_SECTION, Btf, BtfTypes, loadable_data
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.btf_ext import read_program_info
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.elf import (
    BPF_INSN_SIZE,
    ELF64_REL_SIZE,
    R_BPF_64_32,
    R_BPF_64_64,
    R_BPF_NONE,
    SHF_EXECINSTR,
    SHT_PROGBITS,
    SHT_REL,
    SHT_RELA,
    STT_FUNC,
    BpfObjectError,
    Elf,
    read_file,
)
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.map_definitions import (
    BTF_MAPS_SECTION,
    MAPS_SECTION,
    read_btf_maps,
    read_legacy_maps,
)

BPF_LD_IMM64 = 0x18  # BPF_LD | BPF_IMM | BPF_DW: two instruction slots
# ld_imm64 src_reg values that make the kernel read imm as something other than a constant
# (include/uapi/linux/bpf.h): only the loader may set them, from relocations.
PSEUDO_SOURCES = {
    uapi.BPF_PSEUDO_MAP_FD: "BPF_PSEUDO_MAP_FD",
    2: "BPF_PSEUDO_MAP_VALUE",
    3: "BPF_PSEUDO_BTF_ID",
    4: "BPF_PSEUDO_FUNC",
    5: "BPF_PSEUDO_MAP_IDX",
    6: "BPF_PSEUDO_MAP_IDX_VALUE",
}

MAX_PROGRAM_INSNS = 1000000  # BPF_COMPLEXITY_LIMIT_INSNS: the kernel loads no longer program

LICENSE_SECTION = "license"

# include/linux/license.h license_is_gpl_compatible(): exact strings.
GPL_COMPATIBLE_LICENSES = (
    "GPL",
    "GPL v2",
    "GPL and additional rights",
    "Dual BSD/GPL",
    "Dual MIT/GPL",
    "Dual MPL/GPL",
)

MAP_TYPE_NAMES = {
    uapi.BPF_MAP_TYPE_ARRAY: "ARRAY",
    uapi.BPF_MAP_TYPE_PERCPU_ARRAY: "PERCPU_ARRAY",
    uapi.BPF_MAP_TYPE_LPM_TRIE: "LPM_TRIE",
}


class BpfObject:
    """What the loader needs from one BPF object file. Build with from_bytes() or from_file()."""

    def __init__(self, section, name, insns, license, maps, map_relocations, sha256, byteorder, btf=None):
        self.section = section  # program section name, e.g. "sockops"
        self.name = name  # function symbol at the start of that section, or None
        self.insns = insns  # raw instructions, bytes (8 per slot)
        self.license = license  # str, None when the object has no license section
        self.maps = maps  # OrderedDict name -> MapSpec, in definition order
        self.map_relocations = map_relocations  # [(instruction index, map name)]
        self.sha256 = sha256  # hex digest of the whole file
        self.byteorder = byteorder  # "little" or "big"
        self.btf = btf  # Btf, or None when the object has none (or a legacy object's is unusable)

    def __repr__(self):
        return "BpfObject(section=%r, insns=%d, maps=%r, sha256=%s)" % (
            self.section,
            len(self.insns) // BPF_INSN_SIZE,
            list(self.maps),
            self.sha256[:12],
        )

    @classmethod
    def from_file(cls, path):
        return cls.from_bytes(read_file(path))

    @classmethod
    def from_bytes(cls, data):
        data = bytes(data)
        elf = Elf(data)
        program = _program_section(elf)
        insns = elf.body(program)
        if elf.by_name(BTF_MAPS_SECTION) is None:
            maps, maps_section, map_offsets = read_legacy_maps(elf)
            try:
                btf = _read_btf(elf, BtfTypes(elf), program, {}) if elf.by_name(BTF_SECTION) is not None else None
            except BpfObjectError:
                btf = None  # optional for legacy maps: load without, as on a kernel that refuses it
        else:
            if elf.by_name(MAPS_SECTION) is not None:
                raise BpfObjectError('object mixes legacy SEC("maps") and BTF-defined SEC(".maps") maps')
            if elf.by_name(BTF_SECTION) is None:
                raise BpfObjectError(
                    "object has BTF-defined maps (.maps) but no .BTF section, which describes them: "
                    "build it with clang -g (and strip with llvm-strip -g, which keeps .BTF)"
                )
            types = BtfTypes(elf)
            maps, maps_section, map_offsets, map_types = read_btf_maps(elf, types)
            btf = _read_btf(elf, types, program, map_types)
        relocations = _read_relocations(elf, program, insns, maps_section, map_offsets)
        _refuse_unrelocated_pseudo_loads(insns, relocations, elf.byteorder)
        return cls(
            section=program.name,
            name=_function_name(elf, program),
            insns=insns,
            license=_read_license(elf),
            maps=maps,
            map_relocations=relocations,
            sha256=hashlib.sha256(data).hexdigest(),
            byteorder=elf.byteorder,
            btf=btf,
        )

    def instructions(self, map_fds):
        """The instructions with each map reference turned into the fd the loader made for it:
        ld_imm64 src_reg = BPF_PSEUDO_MAP_FD, imm = fd (map_fds: map name -> fd)."""
        insns = bytearray(self.insns)
        endian = "<" if self.byteorder == "little" else ">"
        for index, name in self.map_relocations:
            if name not in map_fds:
                raise BpfObjectError("no fd given for map %r" % name)
            fd = map_fds[name]
            if not isinstance(fd, int) or not 0 <= fd < 2**31:
                raise BpfObjectError("fd %r for map %r is not a file descriptor" % (fd, name))
            offset = index * BPF_INSN_SIZE
            dst_reg = _regs(insns[offset + 1], self.byteorder)[0]
            insns[offset + 1] = _pack_regs(dst_reg, uapi.BPF_PSEUDO_MAP_FD, self.byteorder)
            struct.pack_into(endian + "i", insns, offset + 4, fd)
            struct.pack_into(endian + "i", insns, offset + BPF_INSN_SIZE + 4, 0)
        return bytes(insns)


def _refuse_unrelocated_pseudo_loads(insns, relocations, byteorder):
    """An ld_imm64 whose src_reg asks the kernel to read imm as a map fd (or another reference)
    must be one the loader patches from a relocation: a number written in the object would name
    whatever the loading process happens to hold at that fd."""
    relocated = {index for index, _name in relocations}
    count = len(insns) // BPF_INSN_SIZE
    index = 0
    while index < count:
        offset = index * BPF_INSN_SIZE
        if insns[offset] != BPF_LD_IMM64:
            index += 1
            continue
        src_reg = _regs(insns[offset + 1], byteorder)[1]
        if src_reg and index not in relocated:
            imm = int.from_bytes(insns[offset + 4 : offset + 8], byteorder, signed=True)
            raise BpfObjectError(
                "instruction %d is an ld_imm64 with src_reg %d (%s) and imm %d but no relocation: "
                "an object refers to maps through their symbols, never by a raw fd or "
                "index, which would name whatever the loading process has open"
                % (index, src_reg, PSEUDO_SOURCES.get(src_reg, "unknown"), imm)
            )
        index += 2  # the second slot of ld_imm64 carries the upper 32 bits


def _regs(byte, byteorder):
    """(dst_reg, src_reg) of an instruction's register byte: the nibble order follows the byte order."""
    if byteorder == "little":
        return byte & 0xF, byte >> 4
    return byte >> 4, byte & 0xF


def _pack_regs(dst_reg, src_reg, byteorder):
    if byteorder == "little":
        return (src_reg << 4) | dst_reg
    return (dst_reg << 4) | src_reg


def _program_section(elf):
    code = [
        section
        for section in elf.sections
        if section.type == SHT_PROGBITS and section.flags & SHF_EXECINSTR and section.size > 0
    ]
    if not code:
        raise BpfObjectError("object has no program section (no non-empty executable section)")
    if len(code) > 1:
        names = ", ".join(section.name for section in code)
        if any(section.name == ".text" for section in code):
            raise BpfObjectError(
                "object has code in .text besides its program (%s): functions that were not "
                "inlined (bpf-to-bpf calls) are not supported; mark them always_inline" % names
            )
        raise BpfObjectError("object has %d program sections (%s); the loader loads exactly one" % (len(code), names))
    program = code[0]
    if program.size > MAX_PROGRAM_INSNS * BPF_INSN_SIZE:
        raise BpfObjectError(
            "program section %r has %d instructions; the kernel loads at most %d"
            % (program.name, program.size // BPF_INSN_SIZE, MAX_PROGRAM_INSNS)
        )
    if program.size % BPF_INSN_SIZE:
        raise BpfObjectError(
            "program section %r is %d bytes, not a multiple of the %d-byte instruction"
            % (program.name, program.size, BPF_INSN_SIZE)
        )
    return program


def _function_name(elf, program):
    for symbol in elf.symbols:
        if symbol.shndx == program.index and symbol.value == 0 and symbol.info & 0xF == STT_FUNC:
            return symbol.name
    return None


def _read_license(elf):
    section = elf.by_name(LICENSE_SECTION)
    if section is None:
        return None
    raw = elf.body(section).split(b"\0", 1)[0]
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise BpfObjectError("license section is not ASCII: %r" % raw)


def _read_btf(elf, types, program, map_types):
    """The object's BTF for the kernel (Btf): .BTF ready for BPF_BTF_LOAD, the program's func_info
    and line_info. types: the object's BtfTypes."""
    func_info, line_info = read_program_info(elf, types, program)
    return Btf(loadable_data(elf, types), map_types, func_info, line_info)


def _read_relocations(elf, program, insns, maps_section, map_offsets):
    """-> [(instruction index, map name)] for the program section, every entry checked."""
    relocations = []
    relocated = set()
    count = len(insns) // BPF_INSN_SIZE
    for section in elf.sections:
        if section.type not in (SHT_REL, SHT_RELA) or section.info != program.index:
            continue
        if section.type == SHT_RELA:
            raise BpfObjectError("relocation section %r is RELA; BPF objects use REL" % section.name)
        if section.link != elf.symtab_index:
            raise BpfObjectError(
                "relocation section %r links section %d, not the symbol table (%d)"
                % (section.name, section.link, elf.symtab_index)
            )
        if section.size % ELF64_REL_SIZE:
            raise BpfObjectError(
                "relocation section %r is %d bytes, not a multiple of %d" % (section.name, section.size, ELF64_REL_SIZE)
            )
        for entry in range(section.size // ELF64_REL_SIZE):
            r_offset, r_info = struct.unpack_from(elf.endian + "QQ", elf.data, section.offset + entry * ELF64_REL_SIZE)
            sym_index, r_type = r_info >> 32, r_info & 0xFFFFFFFF
            where = "relocation %d of %r" % (entry, section.name)
            if r_type == R_BPF_NONE:
                continue
            if r_offset % BPF_INSN_SIZE or r_offset + 2 * BPF_INSN_SIZE > len(insns):
                raise BpfObjectError(
                    "%s: offset %d is outside the program section %r (%d instructions) "
                    "or not on an ld_imm64" % (where, r_offset, program.name, count)
                )
            if sym_index >= len(elf.symbols):
                raise BpfObjectError(
                    "%s: symbol index %d out of range (%d symbols)" % (where, sym_index, len(elf.symbols))
                )
            symbol = elf.symbols[sym_index]
            index = r_offset // BPF_INSN_SIZE
            if index in relocated:
                raise BpfObjectError("%s: instruction %d has a relocation already" % (where, index))
            relocated.add(index)
            if r_type == R_BPF_64_32:
                raise BpfObjectError(
                    "%s: instruction %d calls %r: bpf-to-bpf calls are not supported; "
                    "mark the function always_inline" % (where, index, symbol.name)
                )
            if r_type != R_BPF_64_64:
                raise BpfObjectError(
                    "%s: relocation type %d is not supported (only R_BPF_64_64 map references)" % (where, r_type)
                )
            if insns[r_offset] != BPF_LD_IMM64:
                raise BpfObjectError(
                    "%s: instruction %d has opcode 0x%02x, not ld_imm64 (0x18)" % (where, index, insns[r_offset])
                )
            section_name = elf.symbol_section_name(symbol)
            if maps_section is None or symbol.shndx != maps_section.index:
                if section_name is None:
                    raise BpfObjectError(
                        "%s: instruction %d references undefined symbol %r (an extern?); only maps are "
                        'supported (SEC(".maps") or legacy SEC("maps"))' % (where, index, symbol.name)
                    )
                raise BpfObjectError(
                    '%s: instruction %d references %r in section %r; only maps are supported (SEC(".maps") '
                    'or legacy SEC("maps")), no global data (.rodata, .data, .bss)'
                    % (where, index, symbol.name or section_name, section_name)
                )
            # REL has no addend field: it sits in the instruction's imm (0 for a named map symbol).
            addend = struct.unpack_from(elf.endian + "i", insns, r_offset + 4)[0]
            target = symbol.value + addend
            if target not in map_offsets:
                raise BpfObjectError(
                    "%s: instruction %d references offset %d of the %s section, where no map starts"
                    % (where, index, target, maps_section.name)
                )
            relocations.append((index, map_offsets[target]))
    relocations.sort()
    return relocations


def _map_type_name(map_type):
    return MAP_TYPE_NAMES.get(map_type, "unknown to this collection")


def check_contract(obj, byteorder=sys.byteorder):
    """Raise BpfObjectError unless obj is a program this collection can load and drive:
    one sockops program, a GPL-compatible license, exactly the maps of rto_program.MAP_CONTRACT,
    instructions in the byte order of the host that loads it (byteorder: "little" or "big")."""
    if obj.byteorder != byteorder:
        raise BpfObjectError(
            "object is %s-endian, the host is %s-endian: build it with clang -target bpf "
            "on a host of the same byte order (or -target bpf%s)"
            % (obj.byteorder, byteorder, "el" if byteorder == "little" else "eb")
        )
    if obj.section != rto_program.PROGRAM_SECTION and not obj.section.startswith(rto_program.PROGRAM_SECTION + "/"):
        raise BpfObjectError(
            "program section is %r; a sock_ops program must be in SEC(%r) (or %r)"
            % (obj.section, rto_program.PROGRAM_SECTION, rto_program.PROGRAM_SECTION + "/...")
        )
    if obj.license is None:
        raise BpfObjectError('object has no license section: add char _license[] SEC("license") = "GPL";')
    if obj.license not in GPL_COMPATIBLE_LICENSES:
        # The kernel loads a non-GPL program as long as it calls no GPL-only helper (this one calls
        # only bpf_map_lookup_elem, which is not); the requirement is the collection's.
        raise BpfObjectError(
            "license %r is not GPL-compatible: the collection requires one of %s, as the "
            "kernel spells them (a non-GPL program may not call GPL-only helpers such as "
            "bpf_trace_printk or bpf_perf_event_output)"
            % (obj.license, ", ".join(repr(name) for name in GPL_COMPATIBLE_LICENSES))
        )
    for name in sorted(rto_program.MAP_CONTRACT):
        want = rto_program.MAP_CONTRACT[name]
        spec = obj.maps.get(name)
        if spec is None:
            raise BpfObjectError("object has no %r map" % name)
        if spec.type != want[0]:
            raise BpfObjectError(
                "map %r is type %d (%s), the program needs %d (%s)"
                % (name, spec.type, _map_type_name(spec.type), want[0], _map_type_name(want[0]))
            )
        got = spec[2:]
        labels = ("key_size", "value_size", "max_entries", "map_flags")
        for label, have, need in zip(labels, got, want[1:]):
            if have != need:
                raise BpfObjectError("map %r has %s %d, the program needs %d" % (name, label, have, need))
    extra = [name for name in obj.maps if name not in rto_program.MAP_CONTRACT]
    if extra:
        raise BpfObjectError(
            "map(s) %s are not part of the program's contract (%s); the loader creates only those"
            % (", ".join(repr(name) for name in extra), ", ".join(sorted(rto_program.MAP_CONTRACT)))
        )
