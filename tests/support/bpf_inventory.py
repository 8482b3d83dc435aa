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


def bpftool(*args):
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
        for entry in bpftool("cgroup", "show", path)
    )


def snapshot(cgroups=()):
    """A comparable dict: programs and maps by id -> (type, name), links by id -> (type, prog id),
    and for each given cgroup path its attached (id, attach type, attach flags, name)."""
    return {
        "progs": {prog["id"]: (prog["type"], prog.get("name", "")) for prog in bpftool("prog", "show")},
        "maps": {bpf_map["id"]: (bpf_map["type"], bpf_map.get("name", "")) for bpf_map in bpftool("map", "show")},
        "links": {link["id"]: (link["type"], link.get("prog_id")) for link in bpftool("link", "show")},
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


def unaccounted(before, cgroups, own_bpffs):
    """Objects that exist now but not in before, except those something else accounts for: a pin
    outside own_bpffs, an open fd of a live process, an attachment to a cgroup not in cgroups (and
    the program of such a link, the maps of such a program). What remains is what the caller's
    own runs left (their pins under own_bpffs, their attachments to cgroups): machine-wide
    comparisons stay exact while other processes load and free BPF objects meanwhile.
    -> {"progs", "maps", "links": set of ids}."""
    own_bpffs = own_bpffs.rstrip("/") + "/"
    progs = {prog["id"]: prog for prog in bpftool("-f", "prog", "show")}
    maps = {bpf_map["id"]: bpf_map for bpf_map in bpftool("-f", "map", "show")}
    links = {link["id"]: link for link in bpftool("-f", "link", "show")}
    elsewhere = {
        program["id"]
        for entry in bpftool("cgroup", "tree")
        if entry["cgroup"] not in cgroups
        for program in entry.get("programs", [])
    }

    def held(entry):
        return bool(entry.get("pids")) or any(not path.startswith(own_bpffs) for path in entry.get("pinned", []))

    held_links = {link_id for link_id, link in links.items() if held(link)}
    held_progs = (
        {prog_id for prog_id, prog in progs.items() if held(prog)}
        | elsewhere
        | {links[link_id].get("prog_id") for link_id in held_links}
    )
    held_maps = {map_id for map_id, bpf_map in maps.items() if held(bpf_map)} | {
        map_id for prog_id in held_progs if prog_id in progs for map_id in progs[prog_id].get("map_ids", [])
    }
    return {
        "progs": set(progs) - set(before["progs"]) - held_progs,
        "maps": set(maps) - set(before["maps"]) - held_maps,
        "links": set(links) - set(before["links"]) - held_links,
    }


def cgroup_program_ids(cgroup):
    """Program ids attached to cgroup itself as bpftool sees them."""
    # bpftool 7.1 names the attach type cgroup_sock_ops, older ones sock_ops
    return [
        entry["id"]
        for entry in bpftool("cgroup", "show", cgroup)
        if entry.get("attach_type") in ("sock_ops", "cgroup_sock_ops")
    ]


def config_as_bpftool_shows(**values):
    """The config map's value as bpftool prints it with the object's BTF: every field of struct
    config_value (files/bpf/tcp_initial_rto.bpf.c), 0 unless given."""
    from ansible_collections.netbpf.tcp_rto.plugins.module_utils import rto_program

    fields = ["default_rto_jiffies", "directions", "default_syn_retries", "default_flags"]
    fields += [name if name == "hz" else "auto_" + name for name in rto_program.AUTO_CONFIG_FIELDS]
    return dict(dict.fromkeys(fields, 0), **values)


def instance_pins(link=True, prefix=""):
    """The pins in an applied instance's directory, sorted (prefix "new_": those of a run killed
    before it renamed them into place); link: attached with a bpf_link."""
    from ansible_collections.netbpf.tcp_rto.plugins.module_utils import pins, rto_program

    names = [pins.PROG_PIN, pins.META_MAP, *rto_program.MAP_CONTRACT] + ([pins.LINK_PIN] if link else [])
    return sorted(prefix + name for name in names)
