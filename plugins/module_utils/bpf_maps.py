# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""bpf(2) on maps: create, look up, update, delete, iterate keys; per-CPU values.

Plain stdlib: the boot-time restore imports it without Ansible."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import bpf_syscall, uapi


def map_create(map_type, key_size, value_size, max_entries, flags=0, name="", btf_fd=None, btf_types=None):
    """btf_fd and btf_types (key type id, value type id) describe keys and values to the kernel."""
    key_type, value_type = btf_types or (None, None)
    return bpf_syscall.call(
        "BPF_MAP_CREATE",
        map_type=map_type,
        key_size=key_size,
        value_size=value_size,
        max_entries=max_entries,
        map_flags=flags,
        map_name=bpf_syscall.object_name(name),
        btf_fd=btf_fd,
        btf_key_type_id=key_type,
        btf_value_type_id=value_type,
    )[0]


def map_lookup(fd, key, value_size):
    """-> value bytes, or None when the key is absent."""
    value = bpf_syscall.buffer(value_size)
    try:
        bpf_syscall.call("BPF_MAP_LOOKUP_ELEM", map_fd=fd, key=bpf_syscall.buffer(key), value=value)
    except bpf_syscall.BpfError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
    return value.raw


def map_update(fd, key, value, flags=uapi.BPF_ANY):
    bpf_syscall.call(
        "BPF_MAP_UPDATE_ELEM", map_fd=fd, key=bpf_syscall.buffer(key), value=bpf_syscall.buffer(value), flags=flags
    )


def map_delete(fd, key):
    """-> True if deleted, False if the key was absent."""
    try:
        bpf_syscall.call("BPF_MAP_DELETE_ELEM", map_fd=fd, key=bpf_syscall.buffer(key))
    except bpf_syscall.BpfError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def map_keys(fd, key_size):
    """Every key, in the map's iteration order (BPF_MAP_GET_NEXT_KEY from a NULL key)."""
    keys, key = [], None
    while True:
        next_key = bpf_syscall.buffer(key_size)
        try:
            bpf_syscall.call("BPF_MAP_GET_NEXT_KEY", map_fd=fd, key=key, next_key=next_key)
        except bpf_syscall.BpfError as exc:
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


def percpu_update(fd, key, values, flags=uapi.BPF_ANY):
    """values: one bytes value per possible CPU, all of one size."""
    ncpus = len(possible_cpus())
    if len(values) != ncpus:
        raise ValueError("%d per-CPU values given, %d possible CPUs" % (len(values), ncpus))
    slot = _percpu_slot(len(values[0]))
    map_update(fd, key, b"".join(bytes(value).ljust(slot, b"\0") for value in values), flags)
