# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The bpf(2) system call through ctypes: maps, BTF, program load, pins, attach, links, query, info.

Plain stdlib: the boot-time restore imports it without Ansible. Every attr is packed at the
offsets of `union bpf_attr` (uapi.COMMANDS) into a zeroed buffer of uapi.ATTR_SIZE bytes; the
kernel copies what it knows and accepts a longer attr whose tail is zero. File descriptors
are plain ints that the caller closes (os.close, or `with closing_fd(...)`).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import collections
import contextlib
import ctypes
import errno
import os
import struct
import sysconfig

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import uapi

# Map types (rto_program.MAP_CONTRACT) and flags.
BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LPM_TRIE = 11
BPF_F_NO_PREALLOC = 1
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

BPF_PROG_TYPE_SOCK_OPS = 13
BPF_CGROUP_SOCK_OPS = 3
BPF_F_ALLOW_OVERRIDE = 1
BPF_F_ALLOW_MULTI = 2
BPF_F_REPLACE = 4
BPF_F_QUERY_EFFECTIVE = 1
BPF_PSEUDO_MAP_FD = 1
BPF_LINK_TYPE_CGROUP = 3
BPF_OBJ_NAME_LEN = 16

# btf_id: the BTF the program or map was loaded with, 0 for none
ProgInfo = collections.namedtuple("ProgInfo", "type id tag name map_ids run_time_ns run_cnt btf_id")
MapInfo = collections.namedtuple("MapInfo", "type id key_size value_size max_entries map_flags name btf_id")
LinkInfo = collections.namedtuple("LinkInfo", "type id prog_id cgroup_id attach_type")

_LOG_SIZE_FIRST = 1 << 20
_LOG_SIZE_MAX = (1 << 24) - 1  # UINT_MAX >> 8: kernels before 5.2 reject a larger log_size


class BpfError(OSError):
    """A failed bpf(2) command: .command ("BPF_PROG_LOAD"), .errno, .log (verifier log or "")."""

    def __init__(self, command, err, log=""):
        super().__init__(err, os.strerror(err))
        self.command = command
        self.log = log

    def __str__(self):
        return "bpf(%s): %s (%s)" % (self.command, self.strerror, errno.errorcode.get(self.errno, self.errno))


@contextlib.contextmanager
def closing_fd(fd):
    """`with closing_fd(obj_get(path)) as fd:` closes fd whatever happens."""
    try:
        yield fd
    finally:
        os.close(fd)


_SYSCALL = []  # [(libc's syscall(), the bpf number)] once known


def process_arch():
    """(machine, pointer bits, multiarch triplet) of this Python process. uname's machine is the
    kernel's: a 32-bit userland on a 64-bit kernel reads x86_64 there but calls the 32-bit table."""
    return os.uname()[4], struct.calcsize("P") * 8, sysconfig.get_config_var("MULTIARCH") or ""


def _syscall():
    if not _SYSCALL:
        number = uapi.syscall_number(*process_arch())
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        _SYSCALL.append((libc.syscall, number))
    return _SYSCALL[0]


def _buffer(data_or_size):
    """A ctypes buffer holding bytes (exactly, no NUL added) or `size` zero bytes."""
    if isinstance(data_or_size, int):
        return ctypes.create_string_buffer(data_or_size)
    return ctypes.create_string_buffer(bytes(data_or_size), len(data_or_size))


def _bytes(text):
    return text if isinstance(text, bytes) else text.encode("utf-8")


def _cstring(text):
    """A NUL-terminated buffer (paths, the license)."""
    return ctypes.create_string_buffer(_bytes(text))


def _bpf(command, **fields):
    """Run one command; -> (return value, attr buffer). Raises BpfError."""
    number, layout = uapi.COMMANDS[command]
    attr = uapi.pack(layout, uapi.ATTR_SIZE, fields)
    syscall, nr_bpf = _syscall()
    ret = syscall(ctypes.c_long(nr_bpf), ctypes.c_long(number), attr, ctypes.c_long(uapi.ATTR_SIZE))
    if ret < 0:
        raise BpfError(command, ctypes.get_errno())
    return ret, attr


def _attr_field(command, attr, field):
    return uapi.unpack(uapi.COMMANDS[command][1], attr, field)


def _name(raw):
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def _obj_name(name):
    """Object names: at most BPF_OBJ_NAME_LEN - 1 bytes, NUL-terminated by the zero padding."""
    return _bytes(name)[: BPF_OBJ_NAME_LEN - 1]


# Maps


def map_create(map_type, key_size, value_size, max_entries, flags=0, name="", btf_fd=None, btf_types=None):
    """btf_fd and btf_types (key type id, value type id) describe keys and values to the kernel."""
    key_type, value_type = btf_types or (None, None)
    return _bpf(
        "BPF_MAP_CREATE",
        map_type=map_type,
        key_size=key_size,
        value_size=value_size,
        max_entries=max_entries,
        map_flags=flags,
        map_name=_obj_name(name),
        btf_fd=btf_fd,
        btf_key_type_id=key_type,
        btf_value_type_id=value_type,
    )[0]


def map_lookup(fd, key, value_size):
    """-> value bytes, or None when the key is absent."""
    value = _buffer(value_size)
    try:
        _bpf("BPF_MAP_LOOKUP_ELEM", map_fd=fd, key=_buffer(key), value=value)
    except BpfError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
    return value.raw


def map_update(fd, key, value, flags=BPF_ANY):
    _bpf("BPF_MAP_UPDATE_ELEM", map_fd=fd, key=_buffer(key), value=_buffer(value), flags=flags)


def map_delete(fd, key):
    """-> True if deleted, False if the key was absent."""
    try:
        _bpf("BPF_MAP_DELETE_ELEM", map_fd=fd, key=_buffer(key))
    except BpfError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def map_keys(fd, key_size):
    """Every key, in the map's iteration order (BPF_MAP_GET_NEXT_KEY from a NULL key)."""
    keys, key = [], None
    while True:
        next_key = _buffer(key_size)
        try:
            _bpf("BPF_MAP_GET_NEXT_KEY", map_fd=fd, key=key, next_key=next_key)
        except BpfError as exc:
            if exc.errno == errno.ENOENT:
                return keys
            raise
        keys.append(next_key.raw)
        key = next_key


def possible_cpus(path="/sys/devices/system/cpu/possible"):
    """The possible CPU ids ("0-1,4" -> [0, 1, 4]): per-CPU map values come in this order."""
    with open(path) as handle:
        text = handle.read().strip()
    cpus = []
    for part in text.split(","):
        first, _dash, last = part.partition("-")
        cpus.extend(range(int(first), int(last or first) + 1))
    return cpus


def _percpu_slot(value_size):
    return (value_size + 7) // 8 * 8


def percpu_lookup(fd, key, value_size):
    """-> [value bytes for each possible CPU], or None when the key is absent."""
    slot = _percpu_slot(value_size)
    raw = map_lookup(fd, key, slot * len(possible_cpus()))
    if raw is None:
        return None
    return [raw[start : start + value_size] for start in range(0, len(raw), slot)]


def percpu_update(fd, key, values, flags=BPF_ANY):
    """values: one bytes value per possible CPU, all of one size."""
    ncpus = len(possible_cpus())
    if len(values) != ncpus:
        raise ValueError("%d per-CPU values given, %d possible CPUs" % (len(values), ncpus))
    slot = _percpu_slot(len(values[0]))
    map_update(fd, key, b"".join(bytes(value).ljust(slot, b"\0") for value in values), flags)


# BTF


def btf_load(data):
    """Load BTF (a .BTF section as the kernel takes it) -> fd."""
    return _bpf("BPF_BTF_LOAD", btf=_buffer(data), btf_size=len(data))[0]


# Programs


# The verifier answers EAGAIN when a signal interrupts it: libbpf tries a load this many times.
PROG_LOAD_ATTEMPTS = 5


def _prog_load_attempts(**fields):
    """BPF_PROG_LOAD -> fd, again while it fails with EAGAIN, at most PROG_LOAD_ATTEMPTS times."""
    attempt = 1
    while True:
        try:
            return _bpf("BPF_PROG_LOAD", **fields)[0]
        except BpfError as exc:
            if exc.errno != errno.EAGAIN or attempt == PROG_LOAD_ATTEMPTS:
                raise
        attempt += 1


def prog_load(
    prog_type,
    insns,
    license,
    name="",
    expected_attach_type=0,
    btf_fd=None,
    func_info=None,
    line_info=None,
    verifier_log=True,
):
    """Load raw instructions (bytes, 8 per insn) -> fd. btf_fd: the program's BTF, func_info and
    line_info (each (record size, count, records) or None) refer to it. On failure, load again
    with the verifier log on and raise BpfError with .log (unless verifier_log is False)."""
    fields = dict(
        prog_type=prog_type,
        insn_cnt=len(insns) // 8,
        insns=_buffer(insns),
        license=_cstring(license),
        prog_name=_obj_name(name),
        expected_attach_type=expected_attach_type,
        prog_btf_fd=btf_fd,
    )
    for kind, info in (("func_info", func_info), ("line_info", line_info)):
        if info is not None:
            record_size, count, records = info
            fields.update({kind + "_rec_size": record_size, kind + "_cnt": count, kind: _buffer(records)})
    try:
        return _prog_load_attempts(**fields)
    except BpfError as exc:
        if exc.errno == errno.EAGAIN or not verifier_log:
            raise  # EAGAIN: interrupted every time, a load with the log on would be too
    log_size = _LOG_SIZE_FIRST
    while True:
        log = _buffer(log_size)
        try:
            return _prog_load_attempts(log_level=1, log_size=log_size, log_buf=log, **fields)
        except BpfError as exc:
            if exc.errno == errno.ENOSPC and log_size < _LOG_SIZE_MAX:
                log_size = min(log_size * 4, _LOG_SIZE_MAX)
                continue
            exc.log = _name(log.raw)
            raise


def obj_pin(fd, path):
    _bpf("BPF_OBJ_PIN", pathname=_cstring(path), bpf_fd=fd)


def obj_get(path):
    return _bpf("BPF_OBJ_GET", pathname=_cstring(path), file_flags=0)[0]


def prog_attach(target_fd, prog_fd, attach_type, flags=0, replace_prog_fd=None):
    """Legacy attach; with replace_prog_fd, BPF_F_REPLACE swaps that program for prog_fd."""
    if replace_prog_fd is not None:
        flags |= BPF_F_REPLACE
    _bpf(
        "BPF_PROG_ATTACH",
        target_fd=target_fd,
        attach_bpf_fd=prog_fd,
        attach_type=attach_type,
        attach_flags=flags,
        replace_bpf_fd=replace_prog_fd,
    )


def prog_detach(target_fd, prog_fd, attach_type):
    _bpf("BPF_PROG_DETACH", target_fd=target_fd, attach_bpf_fd=prog_fd, attach_type=attach_type)


def prog_query(target_fd, attach_type, effective=False):
    """-> (attach_flags, [program ids]) attached to target_fd (the effective array if asked)."""
    count = 16
    while True:
        ids = (ctypes.c_uint32 * count)()
        try:
            _result, attr = _bpf(
                "BPF_PROG_QUERY",
                target_fd=target_fd,
                attach_type=attach_type,
                query_flags=BPF_F_QUERY_EFFECTIVE if effective else 0,
                prog_ids=ids,
                prog_cnt=count,
            )
        except BpfError as exc:
            if exc.errno == errno.ENOSPC:
                count *= 4
                continue
            raise
        found = _attr_field("BPF_PROG_QUERY", attr, "prog_cnt")
        return _attr_field("BPF_PROG_QUERY", attr, "attach_flags"), list(ids[:found])


# Links


def link_create(prog_fd, target_fd, attach_type):
    return _bpf("BPF_LINK_CREATE", prog_fd=prog_fd, target_fd=target_fd, attach_type=attach_type)[0]


def link_update(link_fd, new_prog_fd, old_prog_fd=None):
    """Swap the link's program; with old_prog_fd, only if that is the current one (else EPERM)."""
    _bpf(
        "BPF_LINK_UPDATE",
        link_fd=link_fd,
        new_prog_fd=new_prog_fd,
        flags=BPF_F_REPLACE if old_prog_fd is not None else 0,
        old_prog_fd=old_prog_fd,
    )


def link_detach(link_fd):
    _bpf("BPF_LINK_DETACH", link_fd=link_fd)


# Ids


def _get_fd_by_id(kind, obj_id):
    return _bpf("BPF_%s_GET_FD_BY_ID" % kind, id=obj_id, open_flags=0)[0]


def _get_next_id(kind, start):
    command = "BPF_%s_GET_NEXT_ID" % kind
    try:
        _result, attr = _bpf(command, start_id=start)
    except BpfError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
    return _attr_field(command, attr, "next_id")


def prog_get_fd_by_id(prog_id):
    return _get_fd_by_id("PROG", prog_id)


def map_get_fd_by_id(map_id):
    return _get_fd_by_id("MAP", map_id)


def link_get_fd_by_id(link_id):
    return _get_fd_by_id("LINK", link_id)


def prog_get_next_id(start=0):
    """The smallest program id above start, or None."""
    return _get_next_id("PROG", start)


def link_get_next_id(start=0):
    """The smallest link id above start, or None."""
    return _get_next_id("LINK", start)


def _infos(kind, info_of):
    """info_of(fd) of every object of kind ("PROG", "LINK") the kernel holds, in id order; one
    released between its id and its fd is skipped."""
    obj_id = 0
    while True:
        obj_id = _get_next_id(kind, obj_id)
        if obj_id is None:
            return
        try:
            with closing_fd(_get_fd_by_id(kind, obj_id)) as fd:
                info = info_of(fd)
        except BpfError as exc:
            if exc.errno != errno.ENOENT:
                raise
            continue
        yield info


def prog_infos():
    """ProgInfo of every loaded program."""
    return _infos("PROG", prog_info)


def link_infos():
    """LinkInfo of every bpf_link."""
    return _infos("LINK", link_info)


# Object info


def _obj_info(fd, info_struct, **fields):
    """BPF_OBJ_GET_INFO_BY_FD -> {field: value}; fields the kernel did not fill read as zero."""
    size, layout = info_struct
    info = uapi.pack(layout, size, fields)
    _bpf("BPF_OBJ_GET_INFO_BY_FD", bpf_fd=fd, info_len=size, info=info)
    return {field: uapi.unpack(layout, info, field) for field in layout}


def prog_info(fd):
    first = _obj_info(fd, uapi.PROG_INFO)
    map_ids = []
    if first["nr_map_ids"]:
        ids = (ctypes.c_uint32 * first["nr_map_ids"])()
        second = _obj_info(fd, uapi.PROG_INFO, nr_map_ids=len(ids), map_ids=ids)
        map_ids = list(ids[: min(second["nr_map_ids"], len(ids))])
    return ProgInfo(
        first["type"],
        first["id"],
        _hex(first["tag"]),
        _name(first["name"]),
        map_ids,
        first["run_time_ns"],
        first["run_cnt"],
        first["btf_id"],
    )


def map_info(fd):
    info = _obj_info(fd, uapi.MAP_INFO)
    info["name"] = _name(info["name"])
    return MapInfo(**info)


def link_info(fd):
    return LinkInfo(**_obj_info(fd, uapi.LINK_INFO))


def _hex(raw):
    return "".join("%02x" % byte for byte in bytearray(raw))
