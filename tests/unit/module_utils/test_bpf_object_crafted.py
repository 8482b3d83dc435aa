"""bpf_object on crafted objects (issue 11, item 5): files of at most about 1 MB that declare huge
sizes and counts, reference the same bytes many times (one long string named by every symbol,
one relocation table seen through thousands of section headers), refer to themselves or overlap.
Each is read by BpfObject.from_file in a child process whose peak memory (VmHWM) must stay
under a generous bound; the child's address space and CPU time are capped as well, so that a
reader that would need gigabytes fails the test instead of the machine."""

import json
import struct
import subprocess
import sys

import pytest

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import bpf_object, elf
from ansible_collections.netbpf.tcp_rto.tests.support.paths import python_env

PEAK_BOUND_MB = 128  # a 1 MB object; the interpreter itself takes about 15
CHILD_ADDRESS_SPACE = 1 << 30
CHILD_CPU_SECONDS = 60

SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_NOBITS, SHT_REL = 1, 2, 3, 8, 9
SHF_ALLOC_WRITE, SHF_ALLOC_EXEC = 0x3, 0x6
STT_OBJECT_GLOBAL = 0x11
R_BPF_64_64 = 1
SYMBOL = struct.Struct("<IBBHQQ")
REL = struct.Struct("<QQ")
SECTION_HEADER = struct.Struct("<IIQQQQIIQQ")


class ElfWriter:
    """An ELF64 little-endian BPF relocatable object, laid out by hand so that section headers can
    point anywhere: data is placed first, headers name (offset, size) freely."""

    def __init__(self):
        self.body = bytearray(64)  # the ELF header, written last
        self.names = bytearray(b"\0")
        self.headers = [(0,) * 10]

    def place(self, data):
        self.body += b"\0" * (-len(self.body) % 8)
        offset = len(self.body)
        self.body += data
        return offset

    def name(self, text):
        offset = len(self.names)
        self.names += text.encode() + b"\0"
        return offset

    def section(self, name, sh_type, offset, size, flags=0, link=0, info=0, entsize=0, name_offset=None):
        name_offset = self.name(name) if name_offset is None else name_offset
        self.headers.append((name_offset, sh_type, flags, 0, offset, size, link, info, 8, entsize))
        return len(self.headers) - 1

    def add(self, name, sh_type, data, **kwargs):
        return self.section(name, sh_type, self.place(data), len(data), **kwargs)

    def finish(self, shnum=None, shstrndx=None):
        own_name = self.name(".shstrtab")
        names_index = self.add(".shstrtab", SHT_STRTAB, bytes(self.names), name_offset=own_name)
        self.body += b"\0" * (-len(self.body) % 8)
        table = len(self.body)
        for header in self.headers:
            self.body += SECTION_HEADER.pack(*header)
        ident = b"\x7fELF" + bytes([2, 1, 1]) + b"\0" * 9
        header = ident + struct.pack(
            "<HHIQQQIHHHHHH",
            1,  # ET_REL
            247,  # EM_BPF
            1,
            0,
            0,
            table,
            0,
            64,
            0,
            0,
            64,
            len(self.headers) if shnum is None else shnum,
            names_index if shstrndx is None else shstrndx,
        )
        self.body[:64] = header
        return bytes(self.body)


# r1 = map (ld_imm64, to be relocated); r0 = 1; exit
PROGRAM = struct.pack("<BBhi", 0x18, 0x01, 0, 0) + struct.pack("<BBhi", 0, 0, 0, 0) + bytes.fromhex("b700000001000000")
PROGRAM += bytes.fromhex("9500000000000000")
MAP_DEF = struct.pack("<5I", 11, 20, 8, 1024, 1)


def base(writer, strtab_data=None, symbols=None):
    """Program, maps and license sections; -> (program index, symtab index). The symbol table holds
    the null symbol and one map 'rules' unless symbols (a function of the strtab/maps indexes) says."""
    program = writer.add("sockops", SHT_PROGBITS, PROGRAM, flags=SHF_ALLOC_EXEC)
    maps = writer.add("maps", SHT_PROGBITS, MAP_DEF, flags=SHF_ALLOC_WRITE)
    writer.add("license", SHT_PROGBITS, b"GPL\0", flags=SHF_ALLOC_WRITE)
    strings = strtab_data if strtab_data is not None else b"\0rules\0"
    strtab = writer.add(".strtab", SHT_STRTAB, strings)
    entries = symbols(maps) if symbols else [SYMBOL.pack(0, 0, 0, 0, 0, 0), SYMBOL.pack(1, 0x11, 0, maps, 0, 20)]
    symtab = writer.add(".symtab", SHT_SYMTAB, b"".join(entries), link=strtab, info=1, entsize=SYMBOL.size)
    return program, symtab


def valid_object():
    writer = ElfWriter()
    program, symtab = base(writer)
    writer.add(".relsockops", SHT_REL, REL.pack(0, 1 << 32 | R_BPF_64_64), link=symtab, info=program, entsize=16)
    return writer.finish()


def one_long_string_named_by_every_symbol():
    count = 16000
    return ElfWriter(), dict(
        strtab_data=b"\0" + b"A" * 600000 + b"\0",
        symbols=lambda maps: [SYMBOL.pack(0, 0, 0, 0, 0, 0)] + [SYMBOL.pack(1, 0x11, 0, 0, 0, 0)] * count,
    )


def crafted_long_symbol_names():
    writer, parts = one_long_string_named_by_every_symbol()
    base(writer, **parts)
    return writer.finish()


def crafted_symbol_names_at_every_offset():
    writer = ElfWriter()
    base(
        writer,
        strtab_data=b"\0" + b"A" * 600000 + b"\0",
        symbols=lambda maps: (
            [SYMBOL.pack(0, 0, 0, 0, 0, 0)] + [SYMBOL.pack(1 + index * 37, 0x11, 0, 0, 0, 0) for index in range(16000)]
        ),
    )
    return writer.finish()


def crafted_long_section_names():
    writer = ElfWriter()
    long_name = writer.name("B" * 600000)
    for _index in range(6000):
        writer.section("", SHT_NOBITS, 0, 0, name_offset=long_name)
    base(writer)
    return writer.finish()


def crafted_relocation_table_seen_many_times():
    """One 64 KB table of relocations of the program's ld_imm64 behind 14000 section headers."""
    writer = ElfWriter()
    program, symtab = base(writer)
    table = writer.place(REL.pack(0, 1 << 32 | R_BPF_64_64) * 4096)
    name = writer.name(".relsockops")
    for _index in range(14000):
        writer.section("", SHT_REL, table, 4096 * REL.size, link=symtab, info=program, entsize=16, name_offset=name)
    return writer.finish()


def crafted_relocation_table_of_nones_seen_many_times():
    """The same with R_BPF_NONE entries, which are skipped: work, not memory."""
    writer = ElfWriter()
    program, symtab = base(writer)
    table = writer.place(bytes(REL.size * 4096))
    name = writer.name(".relsockops")
    for _index in range(14000):
        writer.section("", SHT_REL, table, 4096 * REL.size, link=symtab, info=program, entsize=16, name_offset=name)
    return writer.finish()


def crafted_many_symbols_with_long_names():
    """Names just inside the length limit, one per symbol: what a readable-length name can cost."""
    writer = ElfWriter()
    base(
        writer,
        strtab_data=b"\0" + b"C" * elf.MAX_NAME_LENGTH + b"\0",
        symbols=lambda maps: [SYMBOL.pack(0, 0, 0, 0, 0, 0)] + [SYMBOL.pack(1, 0x11, 0, 0, 0, 0)] * 40000,
    )
    return writer.finish()


def crafted_huge_declared_sizes():
    writer = ElfWriter()
    base(writer)
    writer.section(".bss", SHT_NOBITS, 0, 1 << 62)  # occupies no file bytes: allowed, never read
    writer.section(".big", SHT_PROGBITS, 64, 1 << 40)
    return writer.finish()


def crafted_huge_symbol_count():
    writer = ElfWriter()
    program = writer.add("sockops", SHT_PROGBITS, PROGRAM, flags=SHF_ALLOC_EXEC)
    strtab = writer.add(".strtab", SHT_STRTAB, b"\0")
    writer.section(".symtab", SHT_SYMTAB, writer.place(b""), (1 << 40) * 24, link=strtab, entsize=24)
    del program
    return writer.finish()


def crafted_section_count_past_the_file():
    data = bytearray(valid_object())
    struct.pack_into("<H", data, 0x3C, 0xFEFF)
    return bytes(data)


def crafted_symbol_table_linking_itself():
    writer = ElfWriter()
    base(writer)
    symtab = len(writer.headers) - 1
    header = list(writer.headers[symtab])
    header[6] = symtab
    writer.headers[symtab] = tuple(header)
    return writer.finish()


def crafted_names_read_from_the_section_header_table():
    writer = ElfWriter()
    base(writer)
    data = bytearray(writer.finish())
    (table,) = struct.unpack_from("<Q", data, 0x28)
    (shnum, shstrndx) = struct.unpack_from("<HH", data, 0x3C)
    struct.pack_into("<QQ", data, table + 64 * shstrndx + 24, table, 64 * shnum)
    return bytes(data)


def crafted_symbol_table_over_the_string_table():
    writer = ElfWriter()
    base(writer, strtab_data=b"\0rules\0" + bytes(48 * 24))
    strtab, symtab = len(writer.headers) - 2, len(writer.headers) - 1
    header = list(writer.headers[symtab])
    header[4], header[5] = writer.headers[strtab][4], 48 * 24
    writer.headers[symtab] = tuple(header)
    return writer.finish()


def crafted_section_over_the_whole_file():
    writer = ElfWriter()
    base(writer)
    writer.section(".everything", SHT_PROGBITS, 0, 1)
    data = bytearray(writer.finish())
    (table,) = struct.unpack_from("<Q", data, 0x28)
    (shnum,) = struct.unpack_from("<H", data, 0x3C)
    everything = table + 64 * (shnum - 2)  # the section before .shstrtab
    struct.pack_into("<Q", data, everything + 32, len(data))
    return bytes(data)


CRAFTED = {
    "long-symbol-names": (crafted_long_symbol_names, "longer than 512 bytes"),
    "symbol-names-at-every-offset": (crafted_symbol_names_at_every_offset, "longer than 512 bytes"),
    "long-section-names": (crafted_long_section_names, "longer than 512 bytes"),
    "many-symbols-with-long-names": (crafted_many_symbols_with_long_names, "named by symbols"),
    "relocations-seen-many-times": (crafted_relocation_table_seen_many_times, "overlaps section"),
    "none-relocations-seen-many-times": (crafted_relocation_table_of_nones_seen_many_times, "overlaps section"),
    "huge-declared-sizes": (crafted_huge_declared_sizes, "past end of file"),
    "huge-symbol-count": (crafted_huge_symbol_count, "past end of file"),
    "section-count-past-the-file": (crafted_section_count_past_the_file, "past end of file"),
    "symbol-table-linking-itself": (crafted_symbol_table_linking_itself, "which is not a string table"),
    "names-in-the-section-header-table": (crafted_names_read_from_the_section_header_table, "overlaps"),
    "symbol-table-over-the-string-table": (crafted_symbol_table_over_the_string_table, "overlaps"),
    "section-over-the-whole-file": (crafted_section_over_the_whole_file, "overlaps"),
}

_CHILD = r"""
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (%(address_space)d, %(address_space)d))
resource.setrlimit(resource.RLIMIT_CPU, (%(cpu)d, %(cpu)d))
from ansible_collections.netbpf.tcp_rto.plugins.module_utils import bpf_object
from ansible_collections.netbpf.tcp_rto.tests.support.paths import python_env
try:
    bpf_object.BpfObject.from_file(sys.argv[1])
    outcome = "parsed"
except bpf_object.BpfObjectError as exc:
    outcome = "refused: %%s" %% exc
except MemoryError:
    outcome = "MemoryError"
# VmHWM is this address space's own peak; ru_maxrss would carry the parent's peak across vfork+exec.
peak_kb = [int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
print(json.dumps({"outcome": outcome, "peak_kb": peak_kb}))
"""


def read_in_child(path):
    """-> (outcome, peak resident memory in MB) of from_file(path) in a fresh interpreter."""
    script = _CHILD % dict(address_space=CHILD_ADDRESS_SPACE, cpu=CHILD_CPU_SECONDS)
    result = subprocess.run(
        [sys.executable, "-c", script, path],
        env=python_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,
        timeout=CHILD_CPU_SECONDS * 3,
        check=False,
    )
    assert result.returncode == 0, "the reader died (signal or limit): %d %s" % (result.returncode, result.stderr)
    report = json.loads(result.stdout)
    return report["outcome"], report["peak_kb"] / 1024.0


def test_the_builder_makes_a_valid_object(tmp_path):
    """The crafted files below differ from a readable object only by what they craft."""
    path = tmp_path / "valid.o"
    path.write_bytes(valid_object())
    obj = bpf_object.BpfObject.from_file(str(path))
    assert (obj.section, list(obj.maps), obj.map_relocations, obj.license) == (
        "sockops",
        ["rules"],
        [(0, "rules")],
        "GPL",
    )
    outcome, peak_mb = read_in_child(str(path))
    assert outcome == "parsed"
    assert peak_mb < PEAK_BOUND_MB


@pytest.mark.parametrize("name", list(CRAFTED))
def test_crafted_object_is_refused_in_bounded_memory(tmp_path, name):
    craft, says = CRAFTED[name]
    data = craft()
    assert len(data) <= 1100000, len(data)  # about 1 MB: the point is what it declares
    path = tmp_path / (name + ".o")
    path.write_bytes(data)
    outcome, peak_mb = read_in_child(str(path))
    assert outcome.startswith("refused: ") and says in outcome, outcome
    assert peak_mb < PEAK_BOUND_MB, "%s: peak %.0f MB" % (name, peak_mb)


def test_an_object_bigger_than_the_cap_is_not_read_whole(tmp_path):
    path = tmp_path / "big.o"
    with open(str(path), "wb") as handle:
        handle.write(valid_object())
        handle.truncate(elf.MAX_OBJECT_SIZE * 4)  # sparse: no disk used
    outcome, peak_mb = read_in_child(str(path))
    assert outcome == "refused: %d bytes, more than the 64 MiB a BPF object may have here" % (elf.MAX_OBJECT_SIZE * 4)
    assert peak_mb < PEAK_BOUND_MB
