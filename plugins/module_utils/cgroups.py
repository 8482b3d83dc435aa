# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host's cgroup v2: its mount, a cgroup given by path resolved and checked, a cgroup's id.

Plain stdlib: the boot-time restore imports it without Ansible. Every HostError says what is
wrong and what to do about it.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ctypes
import errno
import os
import re
import struct
from typing import Optional

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import host


def _unescape_mount_field(field):
    # /proc/mounts escapes space, tab, newline and backslash as \ooo
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)


def cgroup2_mount(mounts: str = "/proc/mounts") -> str:
    """The cgroup v2 mount point, else host.HostError."""
    try:
        with open(mounts) as handle:
            for line in handle:
                fields = line.split()
                if len(fields) >= 3 and fields[2] == "cgroup2":
                    return _unescape_mount_field(fields[1])
    except OSError as exc:
        raise host.HostError("cannot read %s to find the cgroup v2 mount: %s" % (mounts, exc))
    raise host.HostError(
        "no cgroup v2 (cgroup2) filesystem is mounted, and sock_ops programs attach to a "
        "cgroup v2 only: boot with systemd.unified_cgroup_hierarchy=1 (or =0 plus a hybrid "
        "cgroup2 mount), or mount one: mount -t cgroup2 none /sys/fs/cgroup/unified"
    )


def resolve_cgroup(path: Optional[str] = None, mount: Optional[str] = None) -> str:
    """The real path of a cgroup v2 directory, else host.HostError.

    path None or empty: the cgroup v2 root (the mount itself). A relative path is taken relative to
    the mount ('system.slice' -> '<mount>/system.slice'). '..' and symlinks are resolved first; the
    result must be a directory of the cgroup2 filesystem inside the cgroup v2 mount.
    """
    if mount is None:
        mount = cgroup2_mount()
    real_mount = os.path.realpath(mount)
    if not path:
        path = mount
    elif not os.path.isabs(path):
        path = os.path.join(mount, path)
    real = os.path.realpath(path)
    shown = path if real == path else "%s (resolves to %s)" % (path, real)
    if not os.path.exists(real):
        raise host.HostError(
            "cgroup %s does not exist: create it first (mkdir, or a systemd slice/scope) "
            "or give an existing cgroup v2 directory under %s" % (shown, mount)
        )
    if not os.path.isdir(real):
        raise host.HostError("cgroup %s is not a directory: give a cgroup v2 directory under %s" % (shown, mount))
    try:
        magic = host.fs_type(real)
    except OSError as exc:
        raise host.HostError("cannot statfs cgroup %s: %s" % (shown, exc))
    if magic == host.CGROUP_SUPER_MAGIC:
        raise host.HostError(
            "%s is a cgroup v1 directory, and sock_ops programs attach to a cgroup v2 only: "
            "give the matching directory under the cgroup v2 mount %s" % (shown, mount)
        )
    if magic != host.CGROUP2_SUPER_MAGIC:
        raise host.HostError(
            "%s is on a %s filesystem, not cgroup2: give a cgroup v2 directory under %s"
            % (shown, host.fs_name(magic), mount)
        )
    if not host.is_within(real, real_mount):
        raise host.HostError(
            "cgroup %s is outside the cgroup v2 mount %s: give a path under %s" % (shown, mount, mount)
        )
    return real


_AT_FDCWD = -100
_MAX_HANDLE_SZ = 128
_FILE_HANDLE_HEADER = struct.Struct("=Ii")  # struct file_handle: handle_bytes, handle_type, f_handle[]


def cgroup_id(path):
    """The cgroup's id as the kernel reports it (link info, BPF_PROG_QUERY, `bpftool cgroup`): its
    kernfs node id, which is the 8-byte file handle of the directory (name_to_handle_at, as libbpf's
    get_cgroup_id). Not st_ino: a 32-bit ino_t holds only the id's low half, and before 5.5 the id
    also carried the generation. OSError when path is missing or not a cgroup directory."""
    handle = ctypes.create_string_buffer(_FILE_HANDLE_HEADER.size + _MAX_HANDLE_SZ)
    _FILE_HANDLE_HEADER.pack_into(handle, 0, _MAX_HANDLE_SZ, 0)
    mount_id = ctypes.c_int()
    if host.libc().name_to_handle_at(_AT_FDCWD, os.fsencode(path), handle, ctypes.byref(mount_id), 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    size = _FILE_HANDLE_HEADER.unpack_from(handle, 0)[0]
    if size != 8:
        raise OSError(errno.EINVAL, "a %d-byte file handle, not the 8-byte id of a cgroup" % size, path)
    return struct.unpack_from("=Q", handle, _FILE_HANDLE_HEADER.size)[0]
