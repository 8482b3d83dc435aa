# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The map definitions of a BPF object: BTF-defined in SEC(".maps"), as libbpf 1.0+ reads them
(``__uint(type, ...)`` and ``__type(key, ...)`` members, from the .BTF section), or legacy
``struct bpf_map_def { u32 type, key_size, value_size, max_entries, map_flags; }`` in SEC("maps").
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import collections
import struct

from ansible_collections.netbpf.tcp_rto.plugins.module_utils.btf import BTF_KIND_STRUCT, var_name
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.elf import (
    SHT_PROGBITS,
    STT_SECTION,
    BpfObjectError,
    symbols_by_section,
)

MAPS_SECTION = "maps"
BTF_MAPS_SECTION = ".maps"
# struct bpf_map_def as legacy objects declare it: five u32.
MAP_DEF_FIELDS = 5
MAP_DEF_SIZE = 4 * MAP_DEF_FIELDS
# The map attributes of a BTF-defined map this reader takes: __uint(name, n) for these,
# __type(key, T) and __type(value, T). "pinning" only as 0: the collection pins maps itself.
BTF_MAP_INT_FIELDS = ("type", "key_size", "value_size", "max_entries", "map_flags", "pinning")
BTF_MAP_TYPE_FIELDS = ("key", "value")

MapSpec = collections.namedtuple("MapSpec", "name type key_size value_size max_entries flags")


def read_legacy_maps(elf):
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


def read_btf_maps(elf, btf):
    """BTF-defined maps, as libbpf reads them. -> (OrderedDict name -> MapSpec, .maps section,
    {offset in section: name}, {name: (key type id, value type id)})"""
    section = elf.by_name(BTF_MAPS_SECTION)
    if section.type != SHT_PROGBITS:
        raise BpfObjectError(".maps section has type %d, expected PROGBITS" % section.type)
    datasec = [type_id for type_id, name in btf.datasecs() if name == BTF_MAPS_SECTION]
    if len(datasec) != 1:
        raise BpfObjectError("object's .BTF has %d DATASEC '.maps' types, expected 1" % len(datasec))
    symbols = dict(symbols_by_section(elf)[section.index])
    found = []
    for var_id, _offset, _size in btf.entries(datasec[0], "DATASEC '.maps'", "III"):
        name, var_type = var_name(btf, var_id, BTF_MAPS_SECTION)
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
