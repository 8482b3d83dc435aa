# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reading a BPF ELF object: program section, license, map definitions, map relocations, BTF.

Parsing only, as cilium/ebpf separates its CollectionSpec from loading: nothing here calls
bpf(2). The loader creates the maps, patches their fds in with BpfObject.instructions() and loads
the program. Every offset, size and count read from the file is checked before use, so a damaged
or hostile object raises BpfObjectError, never IndexError or struct.error. Memory and work stay
proportional to a real object whatever the file declares: sections may not overlap (so no bytes
count twice), and the file size, instruction and symbol counts and name lengths are capped (the
MAX_* limits). An ld_imm64 that references a map (or anything else through src_reg) must come
with a relocation: the object cannot name a map by a raw fd.

Supported: one ELF64 relocatable object for the BPF machine, one non-empty code section, maps
either BTF-defined in SEC(".maps") as libbpf 1.0+ writes them (``__uint(type, ...)`` and
``__type(key, ...)`` members, read from the .BTF section) or legacy ``struct bpf_map_def { u32
type, key_size, value_size, max_entries, map_flags; }`` in SEC("maps"). The BTF comes out ready
for BPF_BTF_LOAD (section sizes and variable offsets filled in from the ELF, as libbpf does), with
each map's key and value type ids and the program's func_info and line_info from .BTF.ext; the
loader uses them where the kernel takes them. A legacy object's BTF is optional: one this reader
cannot use is dropped. Not supported (rejected with a message): global data (.rodata/.data/.bss),
bpf-to-bpf calls, several programs, CO-RE relocations. DWARF (.debug_*) is ignored.
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
BTF_SECTION = ".BTF"
BTF_EXT_SECTION = ".BTF.ext"
# struct bpf_map_def as legacy objects declare it: five u32.
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

# BTF (include/uapi/linux/btf.h). Kinds and the size of what follows each type record.
BTF_MAGIC = 0xEB9F
BTF_VERSION = 1
BTF_HEADER_SIZE = 24
BTF_EXT_HEADER_SIZE = 24  # up to line_info_len; 32 with the CO-RE relocation fields
BTF_TYPE_SIZE = 12
(
    BTF_KIND_INT,
    BTF_KIND_PTR,
    BTF_KIND_ARRAY,
    BTF_KIND_STRUCT,
    BTF_KIND_UNION,
    BTF_KIND_ENUM,
    BTF_KIND_FWD,
    BTF_KIND_TYPEDEF,
    BTF_KIND_VOLATILE,
    BTF_KIND_CONST,
    BTF_KIND_RESTRICT,
    BTF_KIND_FUNC,
    BTF_KIND_FUNC_PROTO,
    BTF_KIND_VAR,
    BTF_KIND_DATASEC,
    BTF_KIND_FLOAT,
    BTF_KIND_DECL_TAG,
    BTF_KIND_TYPE_TAG,
    BTF_KIND_ENUM64,
) = range(1, 20)
BTF_KIND_NAMES = {
    0: "void",
    1: "INT",
    2: "PTR",
    3: "ARRAY",
    4: "STRUCT",
    5: "UNION",
    6: "ENUM",
    7: "FWD",
    8: "TYPEDEF",
    9: "VOLATILE",
    10: "CONST",
    11: "RESTRICT",
    12: "FUNC",
    13: "FUNC_PROTO",
    14: "VAR",
    15: "DATASEC",
    16: "FLOAT",
    17: "DECL_TAG",
    18: "TYPE_TAG",
    19: "ENUM64",
}
# kind -> (bytes after the 12-byte record, bytes per vlen entry)
_BTF_TRAILERS = {
    BTF_KIND_INT: (4, 0),
    BTF_KIND_PTR: (0, 0),
    BTF_KIND_ARRAY: (12, 0),
    BTF_KIND_STRUCT: (0, 12),
    BTF_KIND_UNION: (0, 12),
    BTF_KIND_ENUM: (0, 8),
    BTF_KIND_FWD: (0, 0),
    BTF_KIND_TYPEDEF: (0, 0),
    BTF_KIND_VOLATILE: (0, 0),
    BTF_KIND_CONST: (0, 0),
    BTF_KIND_RESTRICT: (0, 0),
    BTF_KIND_FUNC: (0, 0),  # vlen is the linkage
    BTF_KIND_FUNC_PROTO: (0, 8),
    BTF_KIND_VAR: (4, 0),
    BTF_KIND_DATASEC: (0, 12),
    BTF_KIND_FLOAT: (0, 0),
    BTF_KIND_DECL_TAG: (4, 0),
    BTF_KIND_TYPE_TAG: (0, 0),
    BTF_KIND_ENUM64: (0, 12),
}
_BTF_MODIFIERS = (BTF_KIND_TYPEDEF, BTF_KIND_VOLATILE, BTF_KIND_CONST, BTF_KIND_RESTRICT, BTF_KIND_TYPE_TAG)
_BTF_SIZED = (
    BTF_KIND_INT,
    BTF_KIND_STRUCT,
    BTF_KIND_UNION,
    BTF_KIND_ENUM,
    BTF_KIND_DATASEC,
    BTF_KIND_FLOAT,
    BTF_KIND_ENUM64,
)
MAX_BTF_TYPES = 0xFFFFF  # BTF_MAX_TYPE: the kernel takes no more
MAX_BTF_RESOLVE_DEPTH = 32  # as libbpf: a longer chain of typedefs and arrays is a loop
BPF_POINTER_SIZE = 8
# The map attributes of a BTF-defined map this reader takes: __uint(name, n) for these,
# __type(key, T) and __type(value, T). "pinning" only as 0: the collection pins maps itself.
BTF_MAP_INT_FIELDS = ("type", "key_size", "value_size", "max_entries", "map_flags", "pinning")
BTF_MAP_TYPE_FIELDS = ("key", "value")
# bpf_func_info {insn_off, type_id} and bpf_line_info {insn_off, file_name_off, line_off, line_col}
MIN_FUNC_INFO_SIZE = 8
MIN_LINE_INFO_SIZE = 16
MAX_EXT_RECORD_SIZE = 252  # the kernel's MAX_FUNCINFO_REC_SIZE and MAX_LINEINFO_REC_SIZE

_ELF64_HEADER_SIZE = 64
_ELF64_SHDR_SIZE = 64
_ELF64_SYM_SIZE = 24
_ELF64_REL_SIZE = 16
_ELF64_RELA_SIZE = 24


class BpfObjectError(ValueError):
    """The object is not one this collection can load; the message says what is wrong."""


MapSpec = collections.namedtuple("MapSpec", "name type key_size value_size max_entries flags")
# BTF for the kernel: data for BPF_BTF_LOAD; map_types {map name: (key type id, value type id)};
# func_info and line_info of the program (ExtInfo, or None), instruction offsets as the kernel
# counts them (instructions, not bytes).
Btf = collections.namedtuple("Btf", "data map_types func_info line_info")
ExtInfo = collections.namedtuple("ExtInfo", "record_size count records")

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
        return _string(self.data, table, offset, what)

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


def _string(data, table, offset, what):
    """The NUL-terminated string at offset of the string table (start, size) inside data."""
    start, size = table
    if offset >= size:
        raise BpfObjectError("%s: string offset %d past its table (%d bytes)" % (what, offset, size))
    end = data.find(b"\0", start + offset, min(start + size, start + offset + MAX_NAME_LENGTH + 1))
    if end < 0:
        if start + offset + MAX_NAME_LENGTH + 1 < start + size:
            raise BpfObjectError("%s: longer than %d bytes" % (what, MAX_NAME_LENGTH))
        raise BpfObjectError("%s: string not NUL-terminated inside its table" % what)
    try:
        return data[start + offset : end].decode("utf-8")
    except UnicodeDecodeError:
        raise BpfObjectError("%s: not valid UTF-8" % what)


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
        with open(path, "rb") as handle:
            data = handle.read(MAX_OBJECT_SIZE + 1)
        if len(data) > MAX_OBJECT_SIZE:
            raise BpfObjectError(_too_big(os.path.getsize(path)))
        return cls.from_bytes(data)

    @classmethod
    def from_bytes(cls, data):
        data = bytes(data)
        elf = _Elf(data)
        program = _program_section(elf)
        insns = elf.body(program)
        if elf.by_name(BTF_MAPS_SECTION) is None:
            maps, maps_section, map_offsets = _read_maps(elf)
            try:
                btf = _read_btf(elf, _Btf(elf), program, {}) if elf.by_name(BTF_SECTION) is not None else None
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
            types = _Btf(elf)
            maps, maps_section, map_offsets, map_types = _read_btf_maps(elf, types)
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


class _Btf:
    """Bounds-checked access to the types and strings of an object's .BTF section."""

    def __init__(self, elf):
        self.body = body = elf.body(elf.by_name(BTF_SECTION))
        self.endian = endian = elf.endian
        if len(body) < BTF_HEADER_SIZE:
            raise BpfObjectError(".BTF header truncated (%d of %d bytes)" % (len(body), BTF_HEADER_SIZE))
        magic, version, _flags, header_size = struct.unpack_from(endian + "HBBI", body, 0)
        if magic != BTF_MAGIC:
            swapped = magic == ((BTF_MAGIC & 0xFF) << 8 | BTF_MAGIC >> 8)
            raise BpfObjectError(
                ".BTF magic 0x%04x is not 0x%04x%s"
                % (magic, BTF_MAGIC, " (byte order differs from the ELF's)" if swapped else "")
            )
        if version != BTF_VERSION:
            raise BpfObjectError(".BTF version %d, this reader knows version %d" % (version, BTF_VERSION))
        if not BTF_HEADER_SIZE <= header_size <= len(body):
            raise BpfObjectError(".BTF header size %d outside %d..%d" % (header_size, BTF_HEADER_SIZE, len(body)))
        type_off, type_len, str_off, str_len = struct.unpack_from(endian + "IIII", body, 8)
        for what, offset, length in (("type", type_off, type_len), ("string", str_off, str_len)):
            if header_size + offset + length > len(body):
                raise BpfObjectError(
                    ".BTF %s section (offset %d, %d bytes) past the end of .BTF (%d bytes after the header)"
                    % (what, offset, length, len(body) - header_size)
                )
        if type_off % 4:
            raise BpfObjectError(".BTF type section offset %d is not 4-byte aligned" % type_off)
        self.strings = (header_size + str_off, str_len)
        self.positions = []  # byte position of each type record; type id = index + 1
        position, end = header_size + type_off, header_size + type_off + type_len
        while position < end:
            if len(self.positions) >= MAX_BTF_TYPES:
                raise BpfObjectError(".BTF has more than %d types, the kernel's limit" % MAX_BTF_TYPES)
            if position + BTF_TYPE_SIZE > end:
                raise BpfObjectError(".BTF type %d truncated" % (len(self.positions) + 1))
            info = struct.unpack_from(endian + "I", body, position + 4)[0]
            kind, vlen = info >> 24 & 0x1F, info & 0xFFFF
            if kind not in _BTF_TRAILERS:
                raise BpfObjectError(
                    ".BTF type %d has kind %d, unknown to this reader" % (len(self.positions) + 1, kind)
                )
            fixed, per_entry = _BTF_TRAILERS[kind]
            following = fixed + per_entry * vlen
            if position + BTF_TYPE_SIZE + following > end:
                raise BpfObjectError(
                    ".BTF type %d (%s, vlen %d) runs past the end of the type section"
                    % (len(self.positions) + 1, BTF_KIND_NAMES[kind], vlen)
                )
            self.positions.append(position)
            position += BTF_TYPE_SIZE + following

    def type(self, type_id, what):
        """-> (kind, name offset, vlen, size or type, record position)"""
        if not 1 <= type_id <= len(self.positions):
            raise BpfObjectError("%s: BTF type id %d out of range (1..%d)" % (what, type_id, len(self.positions)))
        position = self.positions[type_id - 1]
        name_off, info, size_or_type = struct.unpack_from(self.endian + "III", self.body, position)
        return info >> 24 & 0x1F, name_off, info & 0xFFFF, size_or_type, position

    def name(self, name_off, what):
        return _string(self.body, self.strings, name_off, what + " name")

    def kind_name(self, type_id):
        return BTF_KIND_NAMES.get(self.type(type_id, "type")[0], "?") if type_id else "void"

    def entries(self, type_id, what, fmt):
        """The vlen entries that follow a STRUCT, UNION or DATASEC record, unpacked with fmt."""
        _kind, _name, vlen, _size, position = self.type(type_id, what)
        size = struct.calcsize(self.endian + fmt)
        start = position + BTF_TYPE_SIZE
        return [struct.unpack_from(self.endian + fmt, self.body, start + index * size) for index in range(vlen)]

    def skip_modifiers(self, type_id, what):
        for _depth in range(MAX_BTF_RESOLVE_DEPTH):
            if type_id == 0:
                return 0
            kind, _name, _vlen, target, _position = self.type(type_id, what)
            if kind not in _BTF_MODIFIERS:
                return type_id
            type_id = target
        raise BpfObjectError("%s: BTF typedef/modifier chain longer than %d" % (what, MAX_BTF_RESOLVE_DEPTH))

    def size(self, type_id, what):
        """Byte size of a type, as the kernel resolves it (arrays multiplied out)."""
        count = 1
        for _depth in range(MAX_BTF_RESOLVE_DEPTH):
            if type_id == 0:
                break
            kind, _name, _vlen, size_or_type, position = self.type(type_id, what)
            if kind in _BTF_SIZED:
                size = count * size_or_type
            elif kind == BTF_KIND_PTR:
                size = count * BPF_POINTER_SIZE
            elif kind in _BTF_MODIFIERS or kind == BTF_KIND_VAR:
                type_id = size_or_type
                continue
            elif kind == BTF_KIND_ARRAY:
                type_id, _index_type, elements = struct.unpack_from(
                    self.endian + "III", self.body, position + BTF_TYPE_SIZE
                )
                count *= elements
                if count > 0xFFFFFFFF:
                    raise BpfObjectError("%s: BTF array type %d has more than 2**32 elements" % (what, type_id))
                continue
            else:
                break
            if size > 0xFFFFFFFF:
                raise BpfObjectError("%s: BTF type %d is larger than 4 GiB" % (what, type_id))
            return size
        else:
            raise BpfObjectError("%s: BTF type chain longer than %d" % (what, MAX_BTF_RESOLVE_DEPTH))
        raise BpfObjectError("%s: BTF type %d (%s) has no size" % (what, type_id, self.kind_name(type_id)))

    def pointee(self, type_id, what):
        """The type a member declared as a pointer points to (libbpf's __type and __uint)."""
        pointer = self.skip_modifiers(type_id, what)
        kind, _name, _vlen, target, _position = self.type(pointer, what) if pointer else (0, 0, 0, 0, 0)
        if kind != BTF_KIND_PTR:
            raise BpfObjectError("%s: BTF type %d is %s, not a pointer" % (what, pointer, self.kind_name(pointer)))
        return target

    def array_length(self, type_id, what):
        """The value of a __uint(name, value) member: pointer to an array of value elements."""
        array = self.pointee(type_id, what)
        kind, _name, _vlen, _size, position = self.type(array, what) if array else (0, 0, 0, 0, 0)
        if kind != BTF_KIND_ARRAY:
            raise BpfObjectError(
                "%s: BTF type %d is a pointer to %s, not to an array as __uint() declares"
                % (what, type_id, self.kind_name(array))
            )
        return struct.unpack_from(self.endian + "I", self.body, position + BTF_TYPE_SIZE + 8)[0]

    def datasecs(self):
        """-> [(type id, section name)] of every DATASEC."""
        found = []
        for type_id in range(1, len(self.positions) + 1):
            kind, name_off, _vlen, _size, _position = self.type(type_id, "DATASEC")
            if kind == BTF_KIND_DATASEC:
                found.append((type_id, self.name(name_off, "DATASEC %d" % type_id)))
        return found


def _symbols_by_section(elf):
    """{section index: {name: symbol}} of the named, non-section symbols, in one pass."""
    by_section = collections.defaultdict(dict)
    for symbol in elf.symbols:
        if symbol.name and symbol.info & 0xF != STT_SECTION and SHN_UNDEF < symbol.shndx < SHN_LORESERVE:
            symbols = by_section[symbol.shndx]
            if symbol.name in symbols:
                raise BpfObjectError("symbol %r defined twice in section %d" % (symbol.name, symbol.shndx))
            symbols[symbol.name] = symbol
    return by_section


def _var_name(btf, var_id, section_name):
    what = "DATASEC %r variable" % section_name
    kind, name_off, _vlen, var_type, _position = btf.type(var_id, what)
    if kind != BTF_KIND_VAR:
        raise BpfObjectError("%s: BTF type %d is %s, not VAR" % (what, var_id, BTF_KIND_NAMES.get(kind, kind)))
    return btf.name(name_off, what), var_type


def _read_btf_maps(elf, btf):
    """BTF-defined maps, as libbpf reads them. -> (OrderedDict name -> MapSpec, .maps section,
    {offset in section: name}, {name: (key type id, value type id)})"""
    section = elf.by_name(BTF_MAPS_SECTION)
    if section.type != SHT_PROGBITS:
        raise BpfObjectError(".maps section has type %d, expected PROGBITS" % section.type)
    datasec = [type_id for type_id, name in btf.datasecs() if name == BTF_MAPS_SECTION]
    if len(datasec) != 1:
        raise BpfObjectError("object's .BTF has %d DATASEC '.maps' types, expected 1" % len(datasec))
    symbols = dict(_symbols_by_section(elf)[section.index])
    found = []
    for var_id, _offset, _size in btf.entries(datasec[0], "DATASEC '.maps'", "III"):
        name, var_type = _var_name(btf, var_id, BTF_MAPS_SECTION)
        symbol = symbols.pop(name, None)
        if symbol is None:
            raise BpfObjectError("map %r is in the .maps BTF but has no symbol in the .maps section" % name)
        spec, types, struct_size = _btf_map_definition(btf, name, var_type)
        if symbol.value + struct_size > section.size:
            raise BpfObjectError(
                "map %r (%d bytes at offset %d) runs past the %d-byte .maps section"
                % (name, struct_size, symbol.value, section.size)
            )
        found.append((symbol.value, name, spec, types))
    if symbols:
        raise BpfObjectError(
            "symbol(s) %s in the .maps section have no BTF description"
            % ", ".join(repr(name) for name in sorted(symbols))
        )
    found.sort()
    maps, offsets, map_types = collections.OrderedDict(), {}, {}
    for offset, name, spec, types in found:
        if offset in offsets:
            raise BpfObjectError("maps %r and %r share offset %d" % (offsets[offset], name, offset))
        offsets[offset] = name
        maps[name] = spec
        map_types[name] = types
    return maps, section, offsets, map_types


def _btf_map_definition(btf, name, var_type):
    """-> (MapSpec, (key type id, value type id), size of the definition struct)"""
    what = "map %r" % name
    definition = btf.skip_modifiers(var_type, what)
    if not definition or btf.type(definition, what)[0] != BTF_KIND_STRUCT:
        raise BpfObjectError(
            "%s: BTF type %d is %s; a map definition is a struct" % (what, definition, btf.kind_name(definition))
        )
    values = dict.fromkeys(BTF_MAP_INT_FIELDS)
    types = dict.fromkeys(BTF_MAP_TYPE_FIELDS, 0)
    for name_off, member_type, _offset in btf.entries(definition, what, "III"):
        member = btf.name(name_off, what + " member")
        where = "map %r attribute %r" % (name, member)
        if member in BTF_MAP_INT_FIELDS:
            values[member] = btf.array_length(member_type, where)
        elif member in BTF_MAP_TYPE_FIELDS:
            types[member] = btf.pointee(member_type, where)
        else:
            raise BpfObjectError(
                "%s: attribute %r is not supported (supported: %s)"
                % (what, member, ", ".join(BTF_MAP_INT_FIELDS + BTF_MAP_TYPE_FIELDS))
            )
    if values["pinning"]:
        raise BpfObjectError(
            "%s: pinning %s is not supported: the collection pins its maps itself" % (what, values["pinning"])
        )
    sizes = {}
    for field in BTF_MAP_TYPE_FIELDS:
        size = btf.size(types[field], "map %r %s" % (name, field)) if types[field] else None
        declared = values[field + "_size"]
        if size is not None and declared is not None and size != declared:
            raise BpfObjectError("%s: %s_size %s but its %s type is %s bytes" % (what, field, declared, field, size))
        sizes[field] = size if size is not None else declared or 0
    spec = MapSpec(
        name,
        values["type"] or 0,
        sizes["key"],
        sizes["value"],
        values["max_entries"] or 0,
        values["map_flags"] or 0,
    )
    return spec, (types["key"], types["value"]), btf.size(definition, what)


def _read_btf(elf, btf, program, map_types):
    """The object's BTF ready for BPF_BTF_LOAD, with the program's func_info and line_info."""
    data = bytearray(btf.body)
    sections = {}
    for section in elf.sections:
        sections[section.name] = None if section.name in sections else section  # None: ambiguous
    symbols_by_section = _symbols_by_section(elf)
    fixed = set()
    # clang leaves each DATASEC's size and its variables' offsets to the loader (relocations in
    # .rel.BTF); the kernel refuses a DATASEC of size 0 and wants its variables in offset order.
    for datasec, section_name in btf.datasecs():
        what = "DATASEC %r" % section_name
        section = sections.get(section_name)
        if section is None:
            raise BpfObjectError("%s in .BTF names no section of the object, or several" % what)
        if section_name in fixed:
            raise BpfObjectError("two DATASECs in .BTF name section %r" % section_name)
        fixed.add(section_name)
        if section.size > 0xFFFFFFFF:
            raise BpfObjectError("section %r is larger than a DATASEC can describe" % section_name)
        symbols = symbols_by_section[section.index]
        variables = []
        for var_id, _offset, size in btf.entries(datasec, what, "III"):
            name, _var_type = _var_name(btf, var_id, section_name)
            if name not in symbols:
                raise BpfObjectError("%s variable %r has no symbol in section %r" % (what, name, section_name))
            offset = symbols[name].value
            if offset + size > section.size:
                raise BpfObjectError(
                    "%s variable %r (%d bytes at offset %d) runs past its %d-byte section"
                    % (what, name, size, offset, section.size)
                )
            variables.append((offset, var_id, size))
        variables.sort()
        position = btf.type(datasec, what)[4]
        struct.pack_into(elf.endian + "I", data, position + 8, section.size)
        for index, (offset, var_id, size) in enumerate(variables):
            struct.pack_into(elf.endian + "III", data, position + BTF_TYPE_SIZE + 12 * index, var_id, offset, size)
    func_info = line_info = None
    ext = elf.by_name(BTF_EXT_SECTION)
    if ext is not None:
        func_info, line_info = _read_btf_ext(elf.body(ext), elf.endian, btf, program)
    return Btf(bytes(data), map_types, func_info, line_info)


def _read_btf_ext(body, endian, btf, program):
    """-> (func_info, line_info) of the program section, each ExtInfo or None."""
    if len(body) < BTF_EXT_HEADER_SIZE:
        raise BpfObjectError(".BTF.ext header truncated (%d of %d bytes)" % (len(body), BTF_EXT_HEADER_SIZE))
    magic, version, _flags, header_size = struct.unpack_from(endian + "HBBI", body, 0)
    if magic != BTF_MAGIC or version != BTF_VERSION:
        raise BpfObjectError(
            ".BTF.ext magic 0x%04x version %d, expected 0x%04x version %d" % (magic, version, BTF_MAGIC, BTF_VERSION)
        )
    if not BTF_EXT_HEADER_SIZE <= header_size <= len(body):
        raise BpfObjectError(".BTF.ext header size %d outside %d..%d" % (header_size, BTF_EXT_HEADER_SIZE, len(body)))
    blocks = [("func_info", 8, MIN_FUNC_INFO_SIZE), ("line_info", 16, MIN_LINE_INFO_SIZE)]
    if header_size >= BTF_EXT_HEADER_SIZE + 8:
        blocks.append(("core_relo", 24, 16))
    found = []
    for what, field, min_record in blocks:
        offset, length = struct.unpack_from(endian + "II", body, field)
        if header_size + offset + length > len(body):
            raise BpfObjectError(".BTF.ext %s (offset %d, %d bytes) past the end of .BTF.ext" % (what, offset, length))
        found.append(_ext_records(body, endian, header_size + offset, length, what, min_record, btf, program))
    if len(found) > 2 and found[2] is not None:
        raise BpfObjectError(
            "program %r has CO-RE relocations (.BTF.ext core_relo): not supported, the loader does not "
            "apply them" % program.name
        )
    return found[0], found[1]


def _ext_records(body, endian, start, length, what, min_record, btf, program):
    """The program section's records of one .BTF.ext block, instruction offsets in instructions."""
    if length == 0:
        return None
    if length < 4:
        raise BpfObjectError(".BTF.ext %s is %d bytes, too short for its record size" % (what, length))
    record_size = struct.unpack_from(endian + "I", body, start)[0]
    if not min_record <= record_size <= MAX_EXT_RECORD_SIZE or record_size % 4:
        raise BpfObjectError(
            ".BTF.ext %s record size %d outside %d..%d or not a multiple of 4"
            % (what, record_size, min_record, MAX_EXT_RECORD_SIZE)
        )
    position, end = start + 4, start + length
    records = None
    while position < end:
        if position + 8 > end:
            raise BpfObjectError(".BTF.ext %s truncated" % what)
        name_off, count = struct.unpack_from(endian + "II", body, position)
        position += 8
        if count * record_size > end - position:
            raise BpfObjectError(".BTF.ext %s: %d records of %d bytes run past its end" % (what, count, record_size))
        section_name = btf.name(name_off, ".BTF.ext %s section" % what)
        chunk = body[position : position + count * record_size]
        position += count * record_size
        if section_name != program.name:
            continue
        if records is not None:
            raise BpfObjectError(".BTF.ext %s lists section %r twice" % (what, section_name))
        records = bytearray(chunk)
        for index in range(count):
            at = index * record_size
            insn_off = struct.unpack_from(endian + "I", records, at)[0]
            if insn_off % BPF_INSN_SIZE or insn_off >= program.size:
                raise BpfObjectError(
                    ".BTF.ext %s record %d: instruction offset %d is not inside the program" % (what, index, insn_off)
                )
            struct.pack_into(endian + "I", records, at, insn_off // BPF_INSN_SIZE)
            if what == "func_info":
                btf.type(struct.unpack_from(endian + "I", records, at + 4)[0], ".BTF.ext func_info record %d" % index)
    if not records:
        return None
    return ExtInfo(record_size, len(records) // record_size, bytes(records))


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
