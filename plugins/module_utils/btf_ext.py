# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The program's func_info and line_info from a BPF object's .BTF.ext, for BPF_PROG_LOAD.

Instruction offsets come out in instructions, as the kernel counts them (the file has bytes).
CO-RE relocations are refused: the loader does not apply them.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import collections
import struct

from ansible_collections.netbpf.tcp_rto.plugins.module_utils.btf import BTF_MAGIC, BTF_VERSION
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.elf import BPF_INSN_SIZE, BpfObjectError

BTF_EXT_SECTION = ".BTF.ext"
BTF_EXT_HEADER_SIZE = 24  # up to line_info_len; 32 with the CO-RE relocation fields
# bpf_func_info {insn_off, type_id} and bpf_line_info {insn_off, file_name_off, line_off, line_col}
MIN_FUNC_INFO_SIZE = 8
MIN_LINE_INFO_SIZE = 16
MAX_EXT_RECORD_SIZE = 252  # the kernel's MAX_FUNCINFO_REC_SIZE and MAX_LINEINFO_REC_SIZE

ExtInfo = collections.namedtuple("ExtInfo", "record_size count records")


def read_program_info(elf, btf, program):
    """-> (func_info, line_info) of the program section, each ExtInfo or None (both None without
    .BTF.ext). btf: the object's btf.BtfTypes, which the records refer to."""
    section = elf.by_name(BTF_EXT_SECTION)
    if section is None:
        return None, None
    return _read_btf_ext(elf.body(section), elf.endian, btf, program)


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
