# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Other sock_ops programs that meet ours: where they are attached, whether they run before or
after ours, which of them keep the kernel from attaching ours, and which can explain a handshake
that did not start with the configured RTO. Read-only: foreign programs are never touched.

How the kernel runs them (kernel/bpf/cgroup.c compute_effective_progs, checked on 6.18 by
tests/integration/test_coexistence.py): a socket runs its own cgroup's programs in attach order,
then each ancestor's, up to the root; an ancestor attached without BPF_F_ALLOW_MULTI is left out
once a cgroup below it has programs. All share one reply (last writer wins), and one program
returning anything but 1 discards the reply of all. Our program keeps a positive reply that ran
before it. BPF_PROG_QUERY with BPF_F_QUERY_EFFECTIVE gives the array in the order it runs.
Plain stdlib, usable without Ansible."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import os

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import bpf_info, bpf_syscall, cgroups, host, uapi

MAX_CGROUPS = 10000  # descendants walked for programs; a host has hundreds
MAX_DESCENDANT_PROBES = 8  # descendants with foreign programs probed by verify


def attached_program_ids(cgroup, effective=False):
    """-> (attach_flags, [program ids]) of the sock_ops programs attached to cgroup itself (effective:
    those its sockets run, in the order they run them). OSError when cgroup is gone."""
    fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return bpf_syscall.prog_query(fd, uapi.BPF_CGROUP_SOCK_OPS, effective=effective)
    finally:
        os.close(fd)


def _query(cgroup, effective=False):
    """attached_program_ids, (0, []) when cgroup is gone."""
    try:
        return attached_program_ids(cgroup, effective)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return 0, []
        raise


def effective_ids(cgroup):
    """The programs a socket created in cgroup runs, in the order it runs them."""
    return _query(cgroup, effective=True)[1]


def _attach_word(flags):
    if flags & uapi.BPF_F_ALLOW_MULTI:
        return "multi"
    return "override" if flags & uapi.BPF_F_ALLOW_OVERRIDE else "exclusive"


def _sock_ops_links():
    """{(cgroup inode, program id)} of the cgroup sock_ops bpf_links on the host."""
    found = set()
    try:
        for info in bpf_info.link_infos():
            if info.type == uapi.BPF_LINK_TYPE_CGROUP and info.attach_type == uapi.BPF_CGROUP_SOCK_OPS:
                found.add((info.cgroup_id, info.prog_id))
    except bpf_syscall.BpfError as exc:
        # EINVAL before 5.8: no BPF_LINK_GET_NEXT_ID, nor cgroup links to list. EPERM without
        # CAP_SYS_ADMIN (CAP_BPF + CAP_NET_ADMIN is enough for the rest): links then read as multi.
        if exc.errno not in (errno.EINVAL, errno.EPERM):
            raise
    return found


def _program_names(prog_id):
    try:
        with bpf_syscall.closing_fd(bpf_info.prog_get_fd_by_id(prog_id)) as fd:
            info = bpf_info.prog_info(fd)
        return info.name, info.tag
    except bpf_syscall.BpfError:
        return "", ""  # unloaded meanwhile


def _ancestors(cgroup, root):
    """cgroup's ancestors up to and including the cgroup v2 root, nearest first."""
    found = []
    while cgroup != root and os.path.dirname(cgroup) != cgroup:
        cgroup = os.path.dirname(cgroup)
        found.append(cgroup)
    return found


def _walk_descendants(cgroup):
    """Every cgroup below cgroup (symlinks not followed), at most MAX_CGROUPS."""
    found, pending = [], [cgroup]
    while pending and len(found) < MAX_CGROUPS:
        directory = pending.pop()
        try:
            entries = sorted(os.listdir(directory))
        except OSError:
            continue  # removed meanwhile
        for entry in entries:
            path = os.path.join(directory, entry)
            if os.path.isdir(path) and not os.path.islink(path):
                found.append(path)
                pending.append(path)
    return found


def _position(prog_id, order, own_ids):
    """Whether prog_id runs before or after ours in order (None: ours is not in it)."""
    own = [index for index, other in enumerate(order) if other in own_ids]
    if not own or prog_id not in order:
        return None
    return "before" if order.index(prog_id) < own[0] else "after"


def survey(cgroup, cgroup_root, own_ids, instance_ids=()):
    """Foreign sock_ops programs that run (or could run) for sockets in cgroup's subtree.

    -> [{id, name, tag, cgroup, relation (same | ancestor | descendant), attach (exclusive |
    override | multi | link), attach_flags, runs}] where runs says where the program runs
    relative to ours for sockets in the cgroup it is attached to (same, descendant) or in
    cgroup (ancestor): before, after, not (left out of the effective array), or null when ours
    is not attached. instance_ids: programs of other tcp_rto instances, not foreign."""
    skip = set(own_ids) | set(instance_ids)
    links = _sock_ops_links()
    own_effective = effective_ids(cgroup)
    found = []
    places = [(cgroup, "same")] + [(path, "ancestor") for path in _ancestors(cgroup, cgroup_root)]
    places += [(path, "descendant") for path in _walk_descendants(cgroup)]
    for path, relation in places:
        flags, ids = _query(path)
        if not ids:
            continue
        order = own_effective if relation != "descendant" else effective_ids(path)
        cgroup_id = cgroups.cgroup_id(path)
        for prog_id in ids:
            if prog_id in skip:
                continue
            runs = _position(prog_id, order, own_ids)
            if runs is None and any(own in order for own in own_ids):
                runs = "not"
            name, tag = _program_names(prog_id)
            found.append(
                dict(
                    id=prog_id,
                    name=name,
                    tag=tag,
                    cgroup=path,
                    relation=relation,
                    attach="link" if (cgroup_id, prog_id) in links else _attach_word(flags),
                    attach_flags=flags,
                    runs=runs,
                )
            )
    return found


def attach_blockers(cgroup, cgroup_root):
    """Foreign programs because of which the kernel refuses a BPF_F_ALLOW_MULTI attach (or a
    bpf_link) on cgroup (kernel/bpf/cgroup.c hierarchy_allows_attach and the flags check):
    programs on cgroup itself attached without multi, and the nearest ancestor with a program
    attached exclusive (an override or multi ancestor allows it)."""
    blockers = []
    flags, ids = _query(cgroup)
    if ids and not flags & uapi.BPF_F_ALLOW_MULTI:
        blockers.extend((prog_id, cgroup, flags) for prog_id in ids)
    for ancestor in _ancestors(cgroup, cgroup_root):
        flags, ids = _query(ancestor)
        if flags & uapi.BPF_F_ALLOW_MULTI:
            break
        if ids:
            if not flags & uapi.BPF_F_ALLOW_OVERRIDE:
                blockers.extend((prog_id, ancestor, flags) for prog_id in ids)
            break
    return [
        dict(id=prog_id, name=_program_names(prog_id)[0], cgroup=path, attach=_attach_word(flags))
        for prog_id, path, flags in blockers
    ]


def describe_blockers(cgroup, blockers):
    return (
        "the kernel does not allow another sock_ops program on %s: %s. tcp_rto never detaches programs it "
        "did not attach and changed nothing: have their owner attach them with 'multi' (BPF_F_ALLOW_MULTI) "
        "or as a bpf_link, or choose another cgroup."
        % (
            cgroup,
            "; ".join(
                "program %d (%s) is attached %s to %s"
                % (
                    blocker["id"],
                    blocker["name"] or "no name",
                    blocker["attach"],
                    "it" if blocker["cgroup"] == cgroup else "the ancestor " + blocker["cgroup"],
                )
                for blocker in blockers
            ),
        )
    )


def descendants_to_probe(programs):
    """Descendant cgroups with foreign programs of their own, where verify checks the value too."""
    cgroups = []
    for program in programs:
        if program["relation"] == "descendant" and program["cgroup"] not in cgroups:
            cgroups.append(program["cgroup"])
    return cgroups[:MAX_DESCENDANT_PROBES]


def conflicts(failed_checks, programs, cgroup, own_ids, default_ms):
    """Foreign programs that can explain the failed verification checks: those in the effective
    array of the probed cgroup, with why. -> [{id, name, cgroup, relation, attach, runs, sockets_in, why}]"""
    found = []
    for check in failed_checks:
        probed = check.get("cgroup", cgroup)
        order = effective_ids(probed)
        got_default = check["observed_ms"] == default_ms
        for program in programs:
            if program["id"] not in order or not host.is_within(probed, program["cgroup"]):
                continue
            runs = _position(program["id"], order, own_ids)
            if runs == "after":
                why = (
                    "runs after ours for sockets in %s: returning 0, or setting the reply to 0 or less, gives "
                    "them the kernel default" % probed
                    if got_default
                    else "runs after ours for sockets in %s and overwrites the reply ours set" % probed
                )
            elif got_default:
                why = "runs for sockets in %s: returning 0 discards the reply of every program, ours included" % probed
            else:
                why = (
                    "runs before ours for sockets in %s and sets the reply: ours leaves a positive reply set "
                    "before it alone (so that a closer cgroup's value wins)" % probed
                )
            entry = {key: program[key] for key in ("id", "name", "cgroup", "relation", "attach")}
            entry.update(runs=runs, sockets_in=probed, why=why)
            if entry not in found:
                found.append(entry)
    return found


def foreign_programs(cgroup, own_ids):
    """Other sock_ops programs attached to cgroup: reported, never touched."""
    flags, ids = attached_program_ids(cgroup)
    found = []
    for prog_id in ids:
        if prog_id in own_ids:
            continue
        entry = {"id": prog_id, "attach_flags": flags}
        name, tag = _program_names(prog_id)
        if name or tag:
            entry.update(name=name, tag=tag)
        found.append(entry)
    return found
