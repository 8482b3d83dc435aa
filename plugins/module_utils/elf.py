# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The bounded ELF reader under bpf_object: headers, sections, string and symbol tables.

Every offset, size and count read from the file is checked before use, so a damaged or hostile
file raises BpfObjectError, never IndexError or struct.error. Memory and work stay proportional to
a real object whatever the file declares: sections may not overlap (so no bytes count twice), and
the file size, symbol count and name lengths are capped (the MAX_* limits). Supported: one ELF64
relocatable object for the BPF machine, either byte order.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import collections
import os
import struct

EM_BPF = 247
ET_REL = 1
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB, ELFDATA2MSB = 1, 2
SHT_NOBITS, SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_RELA, SHT_REL = 8, 1, 2, 3, 4, 9
SHF_EXECINSTR = 0x4
SHN_UNDEF, SHN_LORESERVE, SHN_XINDEX = 0, 0xFF00, 0xFFFF
STT_FUNC, STT_SECTION = 2, 3
R_BPF_NONE, R_BPF_64_64, R_BPF_64_32 = 0, 1, 10

BPF_INSN_SIZE = 8  # offsets into the BPF machine's code count these

# Limits that keep the reader's memory and work proportional to a real object, whatever a file
# declares. The program object is a few KB; these leave room for big programs with debug info.
MAX_OBJECT_SIZE = 64 * 1024 * 1024
MAX_SYMBOLS = 65536
MAX_NAME_LENGTH = 512  # KSYM_NAME_LEN: the longest symbol name the kernel itself keeps

_ELF64_HEADER_SIZE = 64
_ELF64_SHDR_SIZE = 64
_ELF64_SYM_SIZE = 24
ELF64_REL_SIZE = 16


class BpfObjectError(ValueError):
    """The object is not one this collection can load; the message says what is wrong."""


Section = collections.namedtuple("Section", "index name type flags offset size link info entsize")
Symbol = collections.namedtuple("Symbol", "index name info shndx value size")


class Elf:
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
            self.sections.append(Section(index, section_name, sh_type, flags, offset, size, link, info, entsize))
        self.symbols = self._read_symbols()

    def _string(self, table, offset, what):
        return string_at(self.data, table, offset, what)

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
                Symbol(index, self._string(strings, name, "symbol %d name" % index), info, shndx, value, size)
            )
        return symbols

    def symbol_section_name(self, symbol):
        if symbol.shndx == SHN_UNDEF:
            return None
        if symbol.shndx >= SHN_LORESERVE:
            return "special section 0x%x" % symbol.shndx
        return self.section(symbol.shndx, "symbol %r" % symbol.name).name


def string_at(data, table, offset, what):
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


def read_file(path):
    """The bytes of an object file; a file larger than MAX_OBJECT_SIZE is refused unread."""
    with open(path, "rb") as handle:
        data = handle.read(MAX_OBJECT_SIZE + 1)
    if len(data) > MAX_OBJECT_SIZE:
        raise BpfObjectError(_too_big(os.path.getsize(path)))
    return data


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


def symbols_by_section(elf):
    """{section index: {name: symbol}} of the named, non-section symbols, in one pass."""
    by_section = collections.defaultdict(dict)
    for symbol in elf.symbols:
        if symbol.name and symbol.info & 0xF != STT_SECTION and SHN_UNDEF < symbol.shndx < SHN_LORESERVE:
            symbols = by_section[symbol.shndx]
            if symbol.name in symbols:
                raise BpfObjectError("symbol %r defined twice in section %d" % (symbol.name, symbol.shndx))
            symbols[symbol.name] = symbol
    return by_section
