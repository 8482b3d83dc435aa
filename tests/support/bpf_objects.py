"""Program objects for tests: the shipped source in variants, built with the collection's compile
command (plugins/plugin_utils/bpf_build.py), and the legacy-maps form earlier releases shipped.

Imported by unit and integration tests."""

import os
import struct
import subprocess

from ansible_collections.netbpf.tcp_rto.plugins.plugin_utils import bpf_build
from ansible_collections.netbpf.tcp_rto.tests.support import paths

SOURCE = os.path.join(paths.REPO, "files", "bpf", "tcp_initial_rto.bpf.c")

# The map definitions of releases before BTF-defined maps: struct bpf_map_def in SEC("maps").
LEGACY_MAPS = """struct bpf_map_def { __u32 type, key_size, value_size, max_entries, map_flags; };

struct bpf_map_def SEC("maps") rules = {
\t.type = BPF_MAP_TYPE_LPM_TRIE, .key_size = sizeof(struct rule_key),
\t.value_size = sizeof(struct rule_value), .max_entries = MAX_RULES,
\t.map_flags = BPF_F_NO_PREALLOC,
};

struct bpf_map_def SEC("maps") config = {
\t.type = BPF_MAP_TYPE_ARRAY, .key_size = sizeof(__u32),
\t.value_size = sizeof(struct config_value), .max_entries = 1,
};

struct bpf_map_def SEC("maps") hits = {
\t.type = BPF_MAP_TYPE_PERCPU_ARRAY, .key_size = sizeof(__u32),
\t.value_size = sizeof(__u64), .max_entries = MAX_RULES + 1,
};

struct bpf_map_def SEC("maps") stats = {
\t.type = BPF_MAP_TYPE_PERCPU_ARRAY, .key_size = sizeof(__u32),
\t.value_size = sizeof(struct slot_stats), .max_entries = MAX_RULES + 1,
};

struct bpf_map_def SEC("maps") syn_rtx_time = {
\t.type = BPF_MAP_TYPE_LRU_HASH, .key_size = sizeof(struct conn_key),
\t.value_size = sizeof(__u64), .max_entries = 4096,
};

struct bpf_map_def SEC("maps") learned = {
\t.type = BPF_MAP_TYPE_LRU_HASH, .key_size = 4 * sizeof(__u32),
\t.value_size = sizeof(struct learned_value), .max_entries = LEARNED_ENTRIES,
};

struct bpf_map_def SEC("maps") auto_conn = {
\t.type = BPF_MAP_TYPE_LRU_HASH, .key_size = sizeof(struct conn_key),
\t.value_size = sizeof(struct auto_conn_value), .max_entries = AUTO_CONN_ENTRIES,
};

"""
BTF_MAPS_START = "struct {\n\t__uint(type, BPF_MAP_TYPE_LPM_TRIE);"
MAPS_END = "static __attribute__((always_inline)) void count_hit"
# What -g adds to the compile command; without it clang emits neither BTF nor DWARF.
DEBUG_FLAGS = ("-g", "-fdebug-compilation-dir=.")


def shipped_source():
    with open(SOURCE) as handle:
        return handle.read()


def legacy_source(source=None):
    """The shipped source (or source) with its maps defined the legacy way."""
    source = shipped_source() if source is None else source
    start, end = source.index(BTF_MAPS_START), source.index(MAPS_END)
    return source[:start] + LEGACY_MAPS + source[end:]


def build(source, directory, name="variant", target="bpf", btf=True):
    """Compile source text in directory -> the object's bytes. btf=False: the command without -g,
    as releases before BTF-defined maps built (no .BTF, no .BTF.ext, no DWARF)."""
    c_file = os.path.join(str(directory), name + ".c")
    o_file = os.path.join(str(directory), name + ".o")
    with open(c_file, "w") as handle:
        handle.write(source)
    command = bpf_build.compile_command(c_file)
    command[command.index("-target") + 1] = target
    if not btf:
        command = [arg for arg in command if arg not in DEBUG_FLAGS]
    subprocess.run([*command, "-o", o_file], cwd=str(directory), check=True)
    if btf:
        subprocess.run([bpf_build.strip_tool(), "--strip-debug", o_file], check=True)
    with open(o_file, "rb") as handle:
        return handle.read()


def build_legacy(directory, name="legacy"):
    """The shipped program with legacy maps, built as earlier releases did -> path of the object."""
    build(legacy_source(), directory, name, btf=False)
    return os.path.join(str(directory), name + ".o")


# --- minimal objects that meet the collection's contract, one thing varied (bad-input cases) ------

CONTRACT_MAPS = {
    "rules": "BPF_MAP_TYPE_LPM_TRIE, .key_size = 20, .value_size = 16, .max_entries = 1024, "
    ".map_flags = BPF_F_NO_PREALLOC",
    "config": "BPF_MAP_TYPE_ARRAY, .key_size = 4, .value_size = 40, .max_entries = 1",
    "hits": "BPF_MAP_TYPE_PERCPU_ARRAY, .key_size = 4, .value_size = 8, .max_entries = 1025",
    "stats": "BPF_MAP_TYPE_PERCPU_ARRAY, .key_size = 4, .value_size = 312, .max_entries = 1025",
    "syn_rtx_time": "BPF_MAP_TYPE_LRU_HASH, .key_size = 40, .value_size = 8, .max_entries = 4096",
    "learned": "BPF_MAP_TYPE_LRU_HASH, .key_size = 16, .value_size = 32, .max_entries = 4096",
    "auto_conn": "BPF_MAP_TYPE_LRU_HASH, .key_size = 40, .value_size = 8, .max_entries = 4096",
}
OK_BODY = "return 1;"


def contract_source(section="sockops", license="GPL", maps=None, body=OK_BODY):
    """C source of a sock_ops program with the contract's maps (legacy definitions); section or
    license None leaves that section out."""
    maps = CONTRACT_MAPS if maps is None else maps
    lines = [
        "#include <linux/bpf.h>",
        "#define SEC(name) __attribute__((section(name), used))",
        "struct bpf_map_def { __u32 type, key_size, value_size, max_entries, map_flags; };",
    ]
    lines += ['struct bpf_map_def SEC("maps") %s = { .type = %s };' % (name, spec) for name, spec in maps.items()]
    if section is not None:
        lines.append('SEC("%s") int prog(struct bpf_sock_ops *skops) { %s }' % (section, body))
    if license is not None:
        lines.append('char _license[] SEC("license") = "%s";' % license)
    return "\n".join(lines) + "\n"


def compile_to(source, path):
    """The collection's compile command (what the action plugin runs): source text -> object at path."""
    c_file = path[:-2] + ".c"
    with open(c_file, "w") as handle:
        handle.write(source)
    code, output = bpf_build.compile_object(c_file, path)
    assert code == 0, output
    return path


# ELF64 header fields and section header fields (struct Elf64_Shdr) by byte offset.
E_SHOFF, E_SHENTSIZE, E_SHNUM, E_SHSTRNDX = 0x28, 0x3A, 0x3C, 0x3E
SH_NAME, SH_OFFSET, SH_SIZE, SH_LINK = 0, 24, 32, 40


def at(offset):
    return lambda _data: offset


def section_header(name, field):
    """Offset of a field of the section header called name."""
    return lambda data: sections(data)[name][0] + field


def section_body(name, offset):
    """Offset of byte `offset` of the section called name."""
    return lambda data: sections(data)[name][1] + offset


def shipped_section_size(name):
    """The size of the shipped object's section called name."""
    with open(paths.SHIPPED_OBJECT, "rb") as handle:
        return sections(handle.read())[name][2]


def patched(data, *patches):
    """data with patches applied, each (offset_of(data), struct format, value)."""
    data = bytearray(data)
    for offset_of, fmt, value in patches:
        struct.pack_into("<" + fmt, data, offset_of(data), value)
    return bytes(data)


# --- reading objects without the code under test: ELF64 and BTF, little-endian ---------------------


def sections(data):
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


# kind -> (bytes after the 12-byte type record, bytes per vlen entry), from include/uapi/linux/btf.h
BTF_TRAILERS = {1: (4, 0), 3: (12, 0), 4: (0, 12), 5: (0, 12), 6: (0, 8), 13: (0, 8), 14: (4, 0), 15: (0, 12)}


def btf_types(data, start=None):
    """-> (file offset of .BTF, {type id: (file offset of the record, kind, vlen, name)},
    {string: offset in the string table}). start: where the BTF begins in data (default: the
    object's .BTF section; 0 for BTF on its own)."""
    start = sections(data)[".BTF"][1] if start is None else start
    header_size, type_off, type_len, str_off, str_len = struct.unpack_from("<IIIII", data, start + 4)
    strings_at = start + header_size + str_off
    strings = {}
    for offset, text in _split_strings(data[strings_at : strings_at + str_len]):
        strings.setdefault(text, offset)
    position, end = start + header_size + type_off, start + header_size + type_off + type_len
    types = {}
    while position < end:
        name_off, info = struct.unpack_from("<II", data, position)
        kind, vlen = info >> 24 & 0x1F, info & 0xFFFF
        name = data[strings_at + name_off : data.index(b"\0", strings_at + name_off)].decode()
        types[len(types) + 1] = (position, kind, vlen, name)
        fixed, per_entry = BTF_TRAILERS.get(kind, (0, 0))
        position += 12 + fixed + per_entry * vlen
    return start, types, strings


def _split_strings(table):
    offset = 0
    for text in table.split(b"\0"):
        yield offset, text.decode()
        offset += len(text) + 1


def btf_type(data, kind, name):
    """(type id, file offset of its record) of the one type of kind called name."""
    found = [(type_id, t[0]) for type_id, t in btf_types(data)[1].items() if t[1] == kind and t[3] == name]
    assert len(found) == 1, (kind, name, found)
    return found[0]


def btf_ext_block(data, which):
    """File offset of the first record of .BTF.ext func_info (which=0) or line_info (which=1)."""
    start = sections(data)[".BTF.ext"][1]
    header_size = struct.unpack_from("<I", data, start + 4)[0]
    block_offset = struct.unpack_from("<I", data, start + 8 + 8 * which)[0]
    return start + header_size + block_offset
