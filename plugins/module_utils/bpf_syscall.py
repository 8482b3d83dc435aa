# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The bpf(2) system call through ctypes, and its commands on programs: BTF, program load, pins,
attach, links, query. Maps are in bpf_maps.py, object ids and info in bpf_info.py.

Plain stdlib: the boot-time restore imports it without Ansible. Every attr is packed at the
offsets of `union bpf_attr` (uapi.COMMANDS) into a zeroed buffer of uapi.ATTR_SIZE bytes; the
kernel copies what it knows and accepts a longer attr whose tail is zero. File descriptors
are plain ints that the caller closes (os.close, or `with closing_fd(...)`).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import ctypes
import errno
import os
import struct
import sysconfig

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import uapi

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


def buffer(data_or_size):
    """A ctypes buffer holding bytes (exactly, no NUL added) or `size` zero bytes."""
    if isinstance(data_or_size, int):
        return ctypes.create_string_buffer(data_or_size)
    return ctypes.create_string_buffer(bytes(data_or_size), len(data_or_size))


def _bytes(text):
    return text if isinstance(text, bytes) else text.encode("utf-8")


def _cstring(text):
    """A NUL-terminated buffer (paths, the license)."""
    return ctypes.create_string_buffer(_bytes(text))


def call(command, **fields):
    """Run one command; -> (return value, attr buffer). Raises BpfError."""
    number, layout = uapi.COMMANDS[command]
    attr = uapi.pack(layout, uapi.ATTR_SIZE, fields)
    syscall, nr_bpf = _syscall()
    ret = syscall(ctypes.c_long(nr_bpf), ctypes.c_long(number), attr, ctypes.c_long(uapi.ATTR_SIZE))
    if ret < 0:
        raise BpfError(command, ctypes.get_errno())
    return ret, attr


def attr_field(command, attr, field):
    return uapi.unpack(uapi.COMMANDS[command][1], attr, field)


def decode_name(raw):
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def object_name(name):
    """Object names: at most uapi.BPF_OBJ_NAME_LEN - 1 bytes, NUL-terminated by the zero padding."""
    return _bytes(name)[: uapi.BPF_OBJ_NAME_LEN - 1]


# BTF


def btf_load(data):
    """Load BTF (a .BTF section as the kernel takes it) -> fd."""
    return call("BPF_BTF_LOAD", btf=buffer(data), btf_size=len(data))[0]


# Programs


# The verifier answers EAGAIN when a signal interrupts it: libbpf tries a load this many times.
PROG_LOAD_ATTEMPTS = 5


def _prog_load_attempts(**fields):
    """BPF_PROG_LOAD -> fd, again while it fails with EAGAIN, at most PROG_LOAD_ATTEMPTS times."""
    attempt = 1
    while True:
        try:
            return call("BPF_PROG_LOAD", **fields)[0]
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
        insns=buffer(insns),
        license=_cstring(license),
        prog_name=object_name(name),
        expected_attach_type=expected_attach_type,
        prog_btf_fd=btf_fd,
    )
    for kind, info in (("func_info", func_info), ("line_info", line_info)):
        if info is not None:
            record_size, count, records = info
            fields.update({kind + "_rec_size": record_size, kind + "_cnt": count, kind: buffer(records)})
    try:
        return _prog_load_attempts(**fields)
    except BpfError as exc:
        if exc.errno == errno.EAGAIN or not verifier_log:
            raise  # EAGAIN: interrupted every time, a load with the log on would be too
    log_size = _LOG_SIZE_FIRST
    while True:
        log = buffer(log_size)
        try:
            return _prog_load_attempts(log_level=1, log_size=log_size, log_buf=log, **fields)
        except BpfError as exc:
            if exc.errno == errno.ENOSPC and log_size < _LOG_SIZE_MAX:
                log_size = min(log_size * 4, _LOG_SIZE_MAX)
                continue
            exc.log = decode_name(log.raw)
            raise


def obj_pin(fd, path):
    call("BPF_OBJ_PIN", pathname=_cstring(path), bpf_fd=fd)


def obj_get(path):
    return call("BPF_OBJ_GET", pathname=_cstring(path), file_flags=0)[0]


def prog_attach(target_fd, prog_fd, attach_type, flags=0, replace_prog_fd=None):
    """Legacy attach; with replace_prog_fd, uapi.BPF_F_REPLACE swaps that program for prog_fd."""
    if replace_prog_fd is not None:
        flags |= uapi.BPF_F_REPLACE
    call(
        "BPF_PROG_ATTACH",
        target_fd=target_fd,
        attach_bpf_fd=prog_fd,
        attach_type=attach_type,
        attach_flags=flags,
        replace_bpf_fd=replace_prog_fd,
    )


def prog_detach(target_fd, prog_fd, attach_type):
    call("BPF_PROG_DETACH", target_fd=target_fd, attach_bpf_fd=prog_fd, attach_type=attach_type)


def prog_query(target_fd, attach_type, effective=False):
    """-> (attach_flags, [program ids]) attached to target_fd (the effective array if asked)."""
    count = 16
    while True:
        ids = (ctypes.c_uint32 * count)()
        try:
            _result, attr = call(
                "BPF_PROG_QUERY",
                target_fd=target_fd,
                attach_type=attach_type,
                query_flags=uapi.BPF_F_QUERY_EFFECTIVE if effective else 0,
                prog_ids=ids,
                prog_cnt=count,
            )
        except BpfError as exc:
            if exc.errno == errno.ENOSPC:
                count *= 4
                continue
            raise
        found = attr_field("BPF_PROG_QUERY", attr, "prog_cnt")
        return attr_field("BPF_PROG_QUERY", attr, "attach_flags"), list(ids[:found])


# Links


def link_create(prog_fd, target_fd, attach_type):
    return call("BPF_LINK_CREATE", prog_fd=prog_fd, target_fd=target_fd, attach_type=attach_type)[0]


def link_update(link_fd, new_prog_fd, old_prog_fd=None):
    """Swap the link's program; with old_prog_fd, only if that is the current one (else EPERM)."""
    call(
        "BPF_LINK_UPDATE",
        link_fd=link_fd,
        new_prog_fd=new_prog_fd,
        flags=uapi.BPF_F_REPLACE if old_prog_fd is not None else 0,
        old_prog_fd=old_prog_fd,
    )


def link_detach(link_fd):
    call("BPF_LINK_DETACH", link_fd=link_fd)
