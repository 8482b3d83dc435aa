"""The machine's BPF objects as bpftool sees them, for "kernel objects before == after" checks.

bpftool reads the kernel independently of plugins/module_utils/bpf_syscall.py, so a leak that our
own code cannot see (a program left attached, a map still referenced) still shows here.

    before = bpf_inventory.steady([cgroup])  # not counting what earlier tests are still freeing
    ...                                      # load, pin, attach, then clean up
    assert bpf_inventory.settle(before, [cgroup]) == before

The kernel frees some objects a little after the call that drops them returns: the maps a
program used go after an RCU grace period (seen here: 15-25 ms after closing the last fds).
Hence steady() and settle() rather than one snapshot. The state is machine-wide: another process
loading BPF objects meanwhile changes it too.
"""

import json
import os
import subprocess
import time


def _bpftool(*args):
    """`bpftool -j ARGS` as parsed JSON; bpftool prints nothing at all for an empty cgroup."""
    result = subprocess.run(
        ["bpftool", "-j", *list(args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,
        check=True,
    )
    return json.loads(result.stdout) if result.stdout.strip() else []


def _cgroup(path):
    """Programs attached to one cgroup (sorted), or None when the cgroup does not exist."""
    if not os.path.isdir(path):
        return None
    return sorted(
        (entry["id"], str(entry.get("attach_type", "")), str(entry.get("attach_flags", "")), entry.get("name", ""))
        for entry in _bpftool("cgroup", "show", path)
    )


def snapshot(cgroups=()):
    """A comparable dict: programs and maps by id -> (type, name), links by id -> (type, prog id),
    and for each given cgroup path its attached (id, attach type, attach flags, name)."""
    return {
        "progs": {prog["id"]: (prog["type"], prog.get("name", "")) for prog in _bpftool("prog", "show")},
        "maps": {bpf_map["id"]: (bpf_map["type"], bpf_map.get("name", "")) for bpf_map in _bpftool("map", "show")},
        "links": {link["id"]: (link["type"], link.get("prog_id")) for link in _bpftool("link", "show")},
        "cgroups": {path: _cgroup(path) for path in cgroups},
    }


def steady(cgroups=(), quiet=0.25, timeout=10.0):
    """A snapshot that stayed the same for `quiet` seconds (or the last one after timeout)."""
    deadline = time.monotonic() + timeout
    previous = snapshot(cgroups)
    while True:
        time.sleep(quiet)
        current = snapshot(cgroups)
        if current == previous or time.monotonic() >= deadline:
            return current
        previous = current


def settle(expected, cgroups=(), timeout=5.0):
    """Poll snapshot(cgroups) until it equals expected or timeout seconds pass; return the last."""
    deadline = time.monotonic() + timeout
    while True:
        current = snapshot(cgroups)
        if current == expected or time.monotonic() >= deadline:
            return current
        time.sleep(0.05)
