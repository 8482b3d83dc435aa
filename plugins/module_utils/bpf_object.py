# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reading a BPF ELF object: program section, license, legacy map definitions, map relocations.

Parsing only, as cilium/ebpf separates its CollectionSpec from loading: nothing here calls
bpf(2). The loader creates the maps, patches their fds in with BpfObject.instructions() and loads
the program. Every offset, size and count read from the file is checked before use, so a damaged
or hostile object raises BpfObjectError, never IndexError or struct.error. Memory and work stay
proportional to a real object whatever the file declares: sections may not overlap (so no bytes
count twice), and the file size, instruction and symbol counts and name lengths are capped (the
MAX_* limits). An ld_imm64 that references a map (or anything else through src_reg) must come
with a relocation: the object cannot name a map by a raw fd.

Supported: one ELF64 relocatable object for the BPF machine, one non-empty code section, maps as
legacy ``struct bpf_map_def { u32 type, key_size, value_size, max_entries, map_flags; }`` in
SEC("maps"). Not supported (rejected with a message): BTF-defined maps (.maps), global data
(.rodata/.data/.bss), bpf-to-bpf calls, several programs. BTF and debug sections are ignored.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import collections
import hashlib
import os
import struct
import sys

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import rto_program

EM_BPF = 247
ET_REL = 1
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB, ELFDATA2MSB = 1, 2
SHT_NOBITS, SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_RELA, SHT_REL = 8, 1, 2, 3, 4, 9
SHF_EXECINSTR = 0x4
SHN_UNDEF, SHN_LORESERVE, SHN_XINDEX = 0, 0xFF00, 0xFFFF
STT_FUNC, STT_SECTION = 2, 3
R_BPF_NONE, R_BPF_64_64, R_BPF_64_32 = 0, 1, 10

BPF_INSN_SIZE = 8
BPF_LD_IMM64 = 0x18  # BPF_LD | BPF_IMM | BPF_DW: two instruction slots
BPF_PSEUDO_MAP_FD = 1
# ld_imm64 src_reg values that make the kernel read imm as something other than a constant
# (include/uapi/linux/bpf.h): only the loader may set them, from relocations.
PSEUDO_SOURCES = {
    1: "BPF_PSEUDO_MAP_FD",
    2: "BPF_PSEUDO_MAP_VALUE",
    3: "BPF_PSEUDO_BTF_ID",
    4: "BPF_PSEUDO_FUNC",
    5: "BPF_PSEUDO_MAP_IDX",
    6: "BPF_PSEUDO_MAP_IDX_VALUE",
}

# Limits that keep the reader's memory and work proportional to a real object, whatever a file
# declares. The program object is a few KB; these leave room for big programs with debug info.
MAX_OBJECT_SIZE = 64 * 1024 * 1024
MAX_PROGRAM_INSNS = 1000000  # BPF_COMPLEXITY_LIMIT_INSNS: the kernel loads no longer program
MAX_SYMBOLS = 65536
MAX_NAME_LENGTH = 512  # KSYM_NAME_LEN: the longest symbol name the kernel itself keeps

MAPS_SECTION = "maps"
LICENSE_SECTION = "license"
BTF_MAPS_SECTION = ".maps"
# struct bpf_map_def as the C source declares it: five u32.
MAP_DEF_FIELDS = 5
MAP_DEF_SIZE = 4 * MAP_DEF_FIELDS

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
    rto_program.BPF_MAP_TYPE_ARRAY: "ARRAY",
    rto_program.BPF_MAP_TYPE_PERCPU_ARRAY: "PERCPU_ARRAY",
    rto_program.BPF_MAP_TYPE_LPM_TRIE: "LPM_TRIE",
}

_ELF64_HEADER_SIZE = 64
_ELF64_SHDR_SIZE = 64
_ELF64_SYM_SIZE = 24
_ELF64_REL_SIZE = 16
_ELF64_RELA_SIZE = 24


class BpfObjectError(ValueError):
    """The object is not one this collection can load; the message says what is wrong."""


MapSpec = collections.namedtuple("MapSpec", "name type key_size value_size max_entries flags")

_Section = collections.namedtuple("_Section", "index name type flags offset size link info entsize")
_Symbol = collections.namedtuple("_Symbol", "index name info shndx value size")


class _Elf:
    """Bounds-checked access to the sections and symbols of an ELF64 relocatable object."""

    def __init__(self, data):
        self.data = data
        if len(data) < 4 or data[:4] != b"\x7fELF":
            raise BpfObjectError("not an ELF file")
        if len(data) > MAX_OBJECT_SIZE:
            raise BpfObjectError(_too_big(len(data)))
        if len(data) < 16:
            raise BpfObjectError("ELF identification truncated (%d bytes)" % len(data))
        elf_class, elf_data = data[4], data[5]
        if elf_class == ELFCLASS32:
            raise BpfObjectError("ELF32 object: BPF objects are ELF64 (build with clang -target bpf)")
        if elf_class != ELFCLASS64:
            raise BpfObjectError("unknown ELF class %d (not ELF64)" % elf_class)
        if elf_data == ELFDATA2LSB:
            self.byteorder, self.endian = "little", "<"
        elif elf_data == ELFDATA2MSB:
            self.byteorder, self.endian = "big", ">"
        else:
            raise BpfObjectError("unknown ELF data encoding %d (neither little- nor big-endian)" % elf_data)
        if len(data) < _ELF64_HEADER_SIZE:
            raise BpfObjectError("ELF header truncated (%d of %d bytes)" % (len(data), _ELF64_HEADER_SIZE))
        (
            e_type,
            e_machine,
            _version,
            _entry,
            _phoff,
            e_shoff,
            _flags,
            _ehsize,
            _phentsize,
            _phnum,
            e_shentsize,
            e_shnum,
            e_shstrndx,
        ) = struct.unpack_from(self.endian + "HHIQQQIHHHHHH", data, 16)
        if e_machine != EM_BPF:
            raise BpfObjectError("ELF machine %d is not BPF (%d)" % (e_machine, EM_BPF))
        if e_type != ET_REL:
            raise BpfObjectError("ELF type %d is not a relocatable object (%d); build with clang -c" % (e_type, ET_REL))
        if e_shoff == 0 or e_shnum == 0:
            raise BpfObjectError("object has no section header table (or more than 65279 sections)")
        if e_shentsize != _ELF64_SHDR_SIZE:
            raise BpfObjectError("section header size %d, expected %d" % (e_shentsize, _ELF64_SHDR_SIZE))
        if e_shoff + e_shnum * e_shentsize > len(data):
            raise BpfObjectError(
                "section header table past end of file (truncated?): %d headers at offset %d, "
                "file is %d bytes" % (e_shnum, e_shoff, len(data))
            )
        if e_shstrndx == SHN_XINDEX or e_shstrndx >= e_shnum:
            raise BpfObjectError("section name table index %d out of range (%d sections)" % (e_shstrndx, e_shnum))
        headers = [
            struct.unpack_from(self.endian + "IIQQQQIIQQ", data, e_shoff + i * e_shentsize) for i in range(e_shnum)
        ]
        for index, (_name, sh_type, _flags, _addr, offset, size, _link, _info, _align, _entsize) in enumerate(headers):
            if sh_type != SHT_NOBITS and offset + size > len(data):
                raise BpfObjectError(
                    "section %d (offset %d, size %d) past end of file (%d bytes, truncated?)"
                    % (index, offset, size, len(data))
                )
        _refuse_overlaps(headers, e_shoff, e_shnum * e_shentsize)
        names_header = headers[e_shstrndx]
        self._shstrtab = (names_header[4], names_header[5])
        self.sections = []
        for index, (name, sh_type, flags, _addr, offset, size, link, info, _align, entsize) in enumerate(headers):
            section_name = self._string(self._shstrtab, name, "section %d name" % index)
            self.sections.append(_Section(index, section_name, sh_type, flags, offset, size, link, info, entsize))
        self.symbols = self._read_symbols()

    def _string(self, table, offset, what):
        start, size = table
        if offset >= size:
            raise BpfObjectError("%s: string offset %d past its table (%d bytes)" % (what, offset, size))
        end = self.data.find(b"\0", start + offset, min(start + size, start + offset + MAX_NAME_LENGTH + 1))
        if end < 0:
            if start + offset + MAX_NAME_LENGTH + 1 < start + size:
                raise BpfObjectError("%s: longer than %d bytes" % (what, MAX_NAME_LENGTH))
            raise BpfObjectError("%s: string not NUL-terminated inside its table" % what)
        try:
            return self.data[start + offset : end].decode("utf-8")
        except UnicodeDecodeError:
            raise BpfObjectError("%s: not valid UTF-8" % what)

    def body(self, section):
        if section.type == SHT_NOBITS:
            return b""
        return self.data[section.offset : section.offset + section.size]

    def by_name(self, name):
        found = [section for section in self.sections if section.name == name]
        if len(found) > 1:
            raise BpfObjectError("object has %d sections named %r" % (len(found), name))
        return found[0] if found else None

    def section(self, index, what):
        if index >= len(self.sections):
            raise BpfObjectError("%s: section index %d out of range (%d sections)" % (what, index, len(self.sections)))
        return self.sections[index]

    def _read_symbols(self):
        tables = [section for section in self.sections if section.type == SHT_SYMTAB]
        if not tables:
            raise BpfObjectError("object has no symbol table (.symtab); was it stripped?")
        if len(tables) > 1:
            raise BpfObjectError("object has %d symbol tables" % len(tables))
        table = tables[0]
        self.symtab_index = table.index
        if table.entsize != _ELF64_SYM_SIZE or table.size % _ELF64_SYM_SIZE:
            raise BpfObjectError(
                "symbol table entry size %d / size %d, expected multiples of %d"
                % (table.entsize, table.size, _ELF64_SYM_SIZE)
            )
        strtab = self.section(table.link, "symbol table string table")
        if strtab.type != SHT_STRTAB:
            raise BpfObjectError(
                "symbol table links section %d (%r), which is not a string table" % (strtab.index, strtab.name)
            )
        if table.size // _ELF64_SYM_SIZE > MAX_SYMBOLS:
            raise BpfObjectError(
                "symbol table has %d entries, more than the %d this reader takes"
                % (table.size // _ELF64_SYM_SIZE, MAX_SYMBOLS)
            )
        strings = (strtab.offset, strtab.size)
        symbols = []
        for index in range(table.size // _ELF64_SYM_SIZE):
            name, info, _other, shndx, value, size = struct.unpack_from(
                self.endian + "IBBHQQ", self.data, table.offset + index * _ELF64_SYM_SIZE
            )
            symbols.append(
                _Symbol(index, self._string(strings, name, "symbol %d name" % index), info, shndx, value, size)
            )
        return symbols

    def symbol_section_name(self, symbol):
        if symbol.shndx == SHN_UNDEF:
            return None
        if symbol.shndx >= SHN_LORESERVE:
            return "special section 0x%x" % symbol.shndx
        return self.section(symbol.shndx, "symbol %r" % symbol.name).name


class BpfObject:
    """What the loader needs from one BPF object file. Build with from_bytes() or from_file()."""

    def __init__(self, section, name, insns, license, maps, map_relocations, sha256, byteorder):
        self.section = section  # program section name, e.g. "sockops"
        self.name = name  # function symbol at the start of that section, or None
        self.insns = insns  # raw instructions, bytes (8 per slot)
        self.license = license  # str, None when the object has no license section
        self.maps = maps  # OrderedDict name -> MapSpec, in definition order
        self.map_relocations = map_relocations  # [(instruction index, map name)]
        self.sha256 = sha256  # hex digest of the whole file
        self.byteorder = byteorder  # "little" or "big"

    def __repr__(self):
        return "BpfObject(section=%r, insns=%d, maps=%r, sha256=%s)" % (
            self.section,
            len(self.insns) // BPF_INSN_SIZE,
            list(self.maps),
            self.sha256[:12],
        )

    @classmethod
    def from_file(cls, path):
        with open(path, "rb") as handle:
            data = handle.read(MAX_OBJECT_SIZE + 1)
        if len(data) > MAX_OBJECT_SIZE:
            raise BpfObjectError(_too_big(os.path.getsize(path)))
        return cls.from_bytes(data)

    @classmethod
    def from_bytes(cls, data):
        data = bytes(data)
        elf = _Elf(data)
        if elf.by_name(BTF_MAPS_SECTION) is not None:
            raise BpfObjectError('uses BTF-defined maps (.maps section); build it with legacy SEC("maps") definitions')
        program = _program_section(elf)
        insns = elf.body(program)
        maps, maps_section, map_offsets = _read_maps(elf)
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
            insns[offset + 1] = _pack_regs(dst_reg, BPF_PSEUDO_MAP_FD, self.byteorder)
            struct.pack_into(endian + "i", insns, offset + 4, fd)
            struct.pack_into(endian + "i", insns, offset + BPF_INSN_SIZE + 4, 0)
        return bytes(insns)


def _too_big(size):
    return "%d bytes, more than the %d MiB a BPF object may have here" % (size, MAX_OBJECT_SIZE // (1024 * 1024))


def _refuse_overlaps(headers, table_offset, table_size):
    """No two sections share bytes, nor with the ELF header or the section header table. Real
    objects never do; a file whose sections alias each other would make one stretch of bytes
    count as many relocation or symbol tables."""
    extents = [(0, _ELF64_HEADER_SIZE, "the ELF header"), (table_offset, table_size, "the section header table")]
    for index, header in enumerate(headers):
        sh_type, offset, size = header[1], header[4], header[5]
        if sh_type not in (SHT_NOBITS, 0) and size:
            extents.append((offset, size, "section %d" % index))
    extents.sort()
    for (offset, size, what), (next_offset, _next_size, next_what) in zip(extents, extents[1:]):
        if offset + size > next_offset:
            raise BpfObjectError(
                "%s (bytes %d-%d) overlaps %s (from byte %d)"
                % (what, offset, offset + size - 1, next_what, next_offset)
            )


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
                'an object refers to maps through symbols in SEC("maps"), never by a raw fd or '
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


def _read_maps(elf):
    """-> (OrderedDict name -> MapSpec, maps section or None, {offset in section: name})"""
    maps = collections.OrderedDict()
    section = elf.by_name(MAPS_SECTION)
    if section is None:
        return maps, None, {}
    if section.type != SHT_PROGBITS:
        raise BpfObjectError("maps section has type %d, expected PROGBITS (initialised definitions)" % section.type)
    if section.size % MAP_DEF_SIZE:
        raise BpfObjectError(
            "maps section is %d bytes, not a multiple of the %d-byte struct bpf_map_def "
            "(five u32: type, key_size, value_size, max_entries, map_flags)" % (section.size, MAP_DEF_SIZE)
        )
    body = elf.body(section)
    named = sorted(
        (
            symbol
            for symbol in elf.symbols
            if symbol.shndx == section.index and symbol.name and symbol.info & 0xF != STT_SECTION
        ),
        key=lambda symbol: symbol.value,
    )
    offsets = {}
    for symbol in named:
        if symbol.value % MAP_DEF_SIZE or symbol.value + MAP_DEF_SIZE > section.size:
            raise BpfObjectError(
                "map %r at offset %d is not a whole struct bpf_map_def inside the %d-byte maps section"
                % (symbol.name, symbol.value, section.size)
            )
        if symbol.size not in (0, MAP_DEF_SIZE):
            raise BpfObjectError(
                "map %r is %d bytes, struct bpf_map_def is %d" % (symbol.name, symbol.size, MAP_DEF_SIZE)
            )
        if symbol.name in maps:
            raise BpfObjectError("map name %r defined twice" % symbol.name)
        if symbol.value in offsets:
            raise BpfObjectError("maps %r and %r share offset %d" % (offsets[symbol.value], symbol.name, symbol.value))
        fields = struct.unpack_from(elf.endian + "I" * MAP_DEF_FIELDS, body, symbol.value)
        maps[symbol.name] = MapSpec(symbol.name, *fields)
        offsets[symbol.value] = symbol.name
    if len(maps) != section.size // MAP_DEF_SIZE:
        raise BpfObjectError(
            "maps section holds %d definitions but %d are named by symbols" % (section.size // MAP_DEF_SIZE, len(maps))
        )
    return maps, section, offsets


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
        if section.size % _ELF64_REL_SIZE:
            raise BpfObjectError(
                "relocation section %r is %d bytes, not a multiple of %d"
                % (section.name, section.size, _ELF64_REL_SIZE)
            )
        for entry in range(section.size // _ELF64_REL_SIZE):
            r_offset, r_info = struct.unpack_from(elf.endian + "QQ", elf.data, section.offset + entry * _ELF64_REL_SIZE)
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
                        "%s: instruction %d references undefined symbol %r (an extern?); only maps in "
                        'SEC("maps") are supported' % (where, index, symbol.name)
                    )
                raise BpfObjectError(
                    '%s: instruction %d references %r in section %r; only maps in SEC("maps") are '
                    "supported (no global data: .rodata, .data, .bss)"
                    % (where, index, symbol.name or section_name, section_name)
                )
            # REL has no addend field: it sits in the instruction's imm (0 for a named map symbol).
            addend = struct.unpack_from(elf.endian + "i", insns, r_offset + 4)[0]
            target = symbol.value + addend
            if target not in map_offsets:
                raise BpfObjectError(
                    "%s: instruction %d references offset %d of the maps section, where no map starts"
                    % (where, index, target)
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
