# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""bpf(2) on kernel objects by id: the programs, maps and links the kernel holds, and their info
(BPF_OBJ_GET_INFO_BY_FD).

Plain stdlib: the boot-time restore imports it without Ansible."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import collections
import ctypes
import errno
import time

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import bpf_syscall, uapi

# btf_id: the BTF the program or map was loaded with, 0 for none
ProgInfo = collections.namedtuple("ProgInfo", "type id tag name map_ids run_time_ns run_cnt btf_id")
MapInfo = collections.namedtuple("MapInfo", "type id key_size value_size max_entries map_flags name btf_id")
LinkInfo = collections.namedtuple("LinkInfo", "type id prog_id cgroup_id attach_type")


def _get_fd_by_id(kind, obj_id):
    return bpf_syscall.call("BPF_%s_GET_FD_BY_ID" % kind, id=obj_id, open_flags=0)[0]


def _get_next_id(kind, start):
    command = "BPF_%s_GET_NEXT_ID" % kind
    try:
        _result, attr = bpf_syscall.call(command, start_id=start)
    except bpf_syscall.BpfError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
    return bpf_syscall.attr_field(command, attr, "next_id")


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


# A link another process is creating has its id before the kernel settles it: BPF_LINK_GET_FD_BY_ID
# then fails with EAGAIN (bpf_link_by_id()) for the microseconds until bpf_link_settle().
UNSETTLED_RETRIES = 5
UNSETTLED_WAIT_S = 0.001


def _open_by_id(kind, obj_id):
    """_get_fd_by_id(), waiting out a link still being created; None when the object is gone (or
    stays unsettled: a creation that failed releases its id)."""
    for attempt in range(UNSETTLED_RETRIES + 1):
        if attempt:
            time.sleep(UNSETTLED_WAIT_S)
        try:
            return _get_fd_by_id(kind, obj_id)
        except bpf_syscall.BpfError as exc:
            if exc.errno == errno.ENOENT:
                return None
            if exc.errno != errno.EAGAIN:
                raise
    return None


def _infos(kind, info_of):
    """info_of(fd) of every object of kind ("PROG", "LINK") the kernel holds, in id order; one
    released between its id and its fd is skipped, and so is a link whose creation does not settle."""
    obj_id = 0
    while True:
        obj_id = _get_next_id(kind, obj_id)
        if obj_id is None:
            return
        fd = _open_by_id(kind, obj_id)
        if fd is None:
            continue
        with bpf_syscall.closing_fd(fd):
            try:
                info = info_of(fd)
            except bpf_syscall.BpfError as exc:
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


def _obj_info(fd, info_struct, **fields):
    """BPF_OBJ_GET_INFO_BY_FD -> {field: value}; fields the kernel did not fill read as zero."""
    size, layout = info_struct
    info = uapi.pack(layout, size, fields)
    bpf_syscall.call("BPF_OBJ_GET_INFO_BY_FD", bpf_fd=fd, info_len=size, info=info)
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
        bpf_syscall.decode_name(first["name"]),
        map_ids,
        first["run_time_ns"],
        first["run_cnt"],
        first["btf_id"],
    )


def map_info(fd):
    info = _obj_info(fd, uapi.MAP_INFO)
    info["name"] = bpf_syscall.decode_name(info["name"])
    return MapInfo(**info)


def link_info(fd):
    return LinkInfo(**_obj_info(fd, uapi.LINK_INFO))


def _hex(raw):
    return "".join("%02x" % byte for byte in bytearray(raw))
