# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The BTF of a BPF object (.BTF): a bounded reader of its types and strings, and its bytes made
ready for BPF_BTF_LOAD.

clang leaves each DATASEC's size and its variables' offsets to the loader; they are filled in from
the ELF, as libbpf does. Every size, count and type id is checked: a damaged .BTF raises
BpfObjectError. The func_info and line_info of .BTF.ext are read by btf_ext.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import collections
import struct

from ansible_collections.netbpf.tcp_rto.plugins.module_utils.elf import BpfObjectError, string_at, symbols_by_section

BTF_SECTION = ".BTF"
# BTF (include/uapi/linux/btf.h). Kinds and the size of what follows each type record.
BTF_MAGIC = 0xEB9F
BTF_VERSION = 1
BTF_HEADER_SIZE = 24
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

# BTF for the kernel: data for BPF_BTF_LOAD; map_types {map name: (key type id, value type id)};
# func_info and line_info of the program (ExtInfo, or None), instruction offsets as the kernel
# counts them (instructions, not bytes).
Btf = collections.namedtuple("Btf", "data map_types func_info line_info")


class BtfTypes:
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
        return string_at(self.body, self.strings, name_off, what + " name")

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


def var_name(btf, var_id, section_name):
    what = "DATASEC %r variable" % section_name
    kind, name_off, _vlen, var_type, _position = btf.type(var_id, what)
    if kind != BTF_KIND_VAR:
        raise BpfObjectError("%s: BTF type %d is %s, not VAR" % (what, var_id, BTF_KIND_NAMES.get(kind, kind)))
    return btf.name(name_off, what), var_type


def loadable_data(elf, btf):
    """The object's .BTF ready for BPF_BTF_LOAD: each DATASEC's size and variable offsets filled in."""
    data = bytearray(btf.body)
    sections = {}
    for section in elf.sections:
        sections[section.name] = None if section.name in sections else section  # None: ambiguous
    symbols_in = symbols_by_section(elf)
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
        symbols = symbols_in[section.index]
        variables = []
        for var_id, _offset, size in btf.entries(datasec, what, "III"):
            name, _var_type = var_name(btf, var_id, section_name)
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
    return bytes(data)
