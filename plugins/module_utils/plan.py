# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The plan from what the kernel holds (current.Current) to what the parameters ask for
(desired.Desired), or to nothing (state absent): every change a run makes, decided before it
makes any. apply.py carries it out. Plain stdlib."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import collections
import os
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import (
    bpf_info,
    bpf_syscall,
    cgroups,
    coexistence,
    pins,
    rto_program,
)
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.current import Current
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.desired import ATTACH_LINK, Desired, Rule

# The cgroup tree a removal searches for an attachment the instance record no longer names is
# searched this far at most (a host has hundreds to a few thousand cgroups).
MAX_CGROUPS_SEARCHED = 100000


class InstanceError(Exception):
    """The kernel or another program stands in the way; the message says what to do."""


# How plan.attach puts the program on the cgroup.
ATTACH_NEW = "new"  # a new attachment: BPF_PROG_ATTACH with BPF_F_ALLOW_MULTI, or a new bpf_link
ATTACH_UPDATE_LINK = "update_link"  # BPF_LINK_UPDATE of the pinned link: atomic
ATTACH_REPLACE = "replace"  # BPF_PROG_ATTACH with BPF_F_REPLACE of the current program: atomic


class Plan(NamedTuple):
    """Every change a run makes, decided before it makes any: apply.py only carries it out, and
    check mode reports steps, the same list a real run reports."""

    steps: List[str]  # for people; empty: nothing to do
    mount_bpffs: bool = False  # bpffs is mounted at /sys/fs/bpf first
    load_maps: bool = False  # new maps and program from the object
    load_program: bool = False  # a program on the maps (new ones, or a second copy to move it)
    attach: Optional[str] = None  # ATTACH_NEW, ATTACH_UPDATE_LINK or ATTACH_REPLACE
    detach_old: bool = False  # the current program comes off its cgroup (after the new one is on)
    link_detach: bool = True  # a link comes off with BPF_LINK_DETACH (5.9), else by unpinning it
    new_meta: bool = False  # a new meta map holds the record; else the live one is rewritten
    carried_maps: Tuple[str, ...] = ()  # with load_maps: pinned maps the new program uses as they are
    detach_interrupted: Tuple[str, ...] = ()  # cgroups the program of a killed run (new_prog) is on
    detach_unrecorded: Tuple[Tuple[str, int], ...] = ()  # (cgroup, program id) a search found
    warnings: Tuple[str, ...] = ()


def rule_entries(rules_and_slots: List[Tuple[Rule, int]]) -> Dict[bytes, bytes]:
    """[(Rule, hit slot)] -> {rules map key: value}, as the map holds them."""
    return {
        rto_program.encode_rule_key(rule.dest): rto_program.encode_rule_value(
            rule.rto_jiffies, slot, rule.syn_retries, rule.auto
        )
        for rule, slot in rules_and_slots
    }


def rules_in_place_obstacle(held_rules: List[Tuple[Rule, int]], desired_rules: List[Rule]) -> Optional[str]:
    """Why the live rules map cannot be rewritten to desired_rules, or None when it can. The new
    entries go in before the old ones go out (no connection falls to the kernel default
    meanwhile), so old and new must fit the map together; and kernels without the 6.13 fix "bpf:
    Handle in-place update for full LPM trie correctly" (some stable kernels have it backported,
    not every vendor kernel) refuse any update, a value change too, to a full LPM trie."""
    held = rule_entries(held_rules)
    wanted = rule_entries([(rule, slot) for slot, rule in enumerate(desired_rules)])
    together = len(set(held) | set(wanted))
    if together > rto_program.MAX_RULES:
        return "%d old and %d new rules make %d entries together, more than the %d the map holds" % (
            len(held),
            len(wanted),
            together,
            rto_program.MAX_RULES,
        )
    if len(held) >= rto_program.MAX_RULES and any(key in held and held[key] != value for key, value in wanted.items()):
        return (
            "the map is full (%d entries), and kernels without the 6.13 fix refuse to change a value in a full map"
            % len(held)
        )
    return None


def same_place(desired: Desired, current: Current) -> bool:
    """Whether the current program is attached exactly where desired wants it."""
    return current.attached and (current.cgroup, current.attach_mode) == (desired.cgroup, desired.attach_mode)


def plan_present(
    desired: Desired,
    current: Current,
    can_replace: bool = True,
    link_detach: bool = True,
    mount_bpffs: bool = False,
    others: List[str] = (),
    blockers: List[Dict[str, Any]] = (),
) -> Plan:
    """The plan from current to desired on a kernel with BPF_F_REPLACE (can_replace) and
    BPF_LINK_DETACH (link_detach). others: other instances on desired's cgroup; blockers:
    coexistence.attach_blockers() of it. InstanceError when either stands in the way."""
    if others:
        raise InstanceError(
            "cgroup %s already has the tcp_rto instance %s: one instance per cgroup. "
            "Change that instance's rules, or remove it first." % (desired.cgroup, others[0])
        )
    steps = ["mount bpffs on /sys/fs/bpf"] if mount_bpffs else []
    if current.leftovers:
        steps.append("remove what an interrupted run left (%s)" % ", ".join(current.leftovers))
    if current.of_earlier_object:
        steps.append(
            "upgrade the instance from an earlier object (its program has no maps %s)"
            % ", ".join(current.maps_of_newer_object)
        )
    elif current.exists and (not current.program_intact or current.meta_problem):
        steps.append(
            "repair incomplete instance (%s)"
            % (
                current.meta_problem
                or (current.missing_pins and "missing pins: " + ", ".join(current.missing_pins))
                or "pins missing"
            )
        )
    load_maps = not (current.program_intact and current.meta["object_sha256"] == desired.object.sha256)
    table_size = desired.table_size()
    if not load_maps and current.learned_info and current.learned_info.max_entries != table_size:
        steps.append(
            "resize the learned table from %d to %d entries (what it learned starts afresh)"
            % (current.learned_info.max_entries, table_size)
        )
        load_maps = True
    if not load_maps:
        obstacle = rules_in_place_obstacle(current.rules, desired.rules)
        if obstacle:
            steps.append("rules do not fit the live rules map (%s): new maps and program instead" % obstacle)
            load_maps = True
    carried = current.carried_maps(table_size) if load_maps else ()
    if load_maps:
        steps.append(
            "create maps and load program from object %s%s"
            % (
                desired.object.sha256[:12],
                " (keeping the map%s %s)" % ("s" if len(carried) > 1 else "", ", ".join(carried)) if carried else "",
            )
        )
    else:
        if [rule for rule, _slot in current.rules] != desired.rules:
            steps.append("update rules")
        if (
            current.default_jiffies,
            current.directions,
            current.default_syn_retries,
            current.default_auto,
            current.auto_config,
        ) != (
            desired.default_jiffies,
            rto_program.DIRECTIONS[desired.direction],
            desired.default_syn_retries,
            desired.default_auto,
            desired.auto_config(),
        ):
            steps.append("update default and direction")
    in_place = same_place(desired, current)
    # A program attaches to a cgroup once, so moving it (other cgroup or other attach mode) takes
    # a second program on the same maps, attached before the first goes: no connection sees the
    # kernel default in between.
    load_program = load_maps or (current.attached and not in_place)
    if load_program and not load_maps:
        steps.append("load a second copy of the program on the same maps")
    attach = None
    if load_program or not current.attached:
        if in_place and desired.attach_mode == ATTACH_LINK:
            attach = ATTACH_UPDATE_LINK
        elif in_place and can_replace:
            attach = ATTACH_REPLACE
        else:
            attach = ATTACH_NEW
    if attach in (ATTACH_NEW, ATTACH_REPLACE) and blockers:  # a link update does not attach anew
        raise InstanceError(coexistence.describe_blockers(desired.cgroup, blockers))
    if attach in (ATTACH_UPDATE_LINK, ATTACH_REPLACE):
        steps.append("replace the attached program atomically (%s)" % desired.attach_mode)
    elif attach:
        steps.append("attach to %s (%s)" % (desired.cgroup, desired.attach_mode))
    detach_old = attach == ATTACH_NEW and current.attached
    if detach_old:
        steps.append("detach from %s (%s)" % (current.cgroup, current.attach_mode))
    steps.extend(_interrupted_steps(current))
    return Plan(
        steps=steps,
        mount_bpffs=mount_bpffs,
        load_maps=load_maps,
        load_program=load_program,
        attach=attach,
        detach_old=detach_old,
        link_detach=link_detach,
        # A record of its own for a new attachment, so that a killed run's new_meta names its cgroup.
        new_meta=pins.META_MAP in current.missing_pins or attach is not None or current.meta_problem is not None,
        carried_maps=carried,
        detach_interrupted=tuple(current.interrupted_cgroups),
    )


def _interrupted_steps(current: Current, unrecorded: List[Tuple[str, int]] = ()) -> List[str]:
    return [
        "detach program %d of an interrupted run from %s (multi)" % (current.interrupted_prog_id, cgroup)
        for cgroup in current.interrupted_cgroups
        if (cgroup, current.interrupted_prog_id) not in unrecorded
    ]


def _cgroup_tree(root: str, limit: int) -> Tuple[List[str], bool]:
    """root and the cgroups below it, breadth first, at most limit -> (paths, whether that was all)."""
    found, queue = [], collections.deque([root])
    while queue:
        if len(found) >= limit:
            return found, False
        cgroup = queue.popleft()
        found.append(cgroup)
        try:
            queue.extend(sorted(entry.path for entry in os.scandir(cgroup) if entry.is_dir(follow_symlinks=False)))
        except OSError:
            continue  # removed meanwhile
    return found, True


def unrecorded_attachments(
    current: Current, cgroup_root: Optional[str], limit: int = MAX_CGROUPS_SEARCHED
) -> Tuple[List[Tuple[str, int]], bool]:
    """Where the instance's programs are attached when its meta record, which names the cgroup, is
    missing or unreadable: a search of the cgroup tree. A legacy (BPF_PROG_ATTACH) attachment
    belongs to the cgroup and would outlive the pins. The instance's programs are the pinned ones
    (prog, new_prog) or, with neither pinned, those that use the instance's pinned maps; never any
    other. -> ([(cgroup, program id)], whether the whole tree was searched)."""
    if not current.exists or current.meta is not None or cgroup_root is None:
        return [], True
    own_ids = set()
    for name in (pins.PROG_PIN, pins.NEW_PIN_PREFIX + pins.PROG_PIN):
        fd = pins.open_pin(os.path.join(current.instance_dir, name))
        if fd is not None:
            with bpf_syscall.closing_fd(fd):
                own_ids.add(bpf_info.prog_info(fd).id)
    own_maps = (
        set() if own_ids else {current.map_ids[name] for name in rto_program.MAP_CONTRACT if name in current.map_ids}
    )
    if not (own_ids or own_maps):
        return [], True
    cgroups, complete = _cgroup_tree(cgroup_root, limit)
    found = []
    for cgroup in cgroups:
        try:
            attached = coexistence.attached_program_ids(cgroup)[1]
        except OSError:  # bpf_syscall.BpfError included: removed meanwhile
            continue
        found.extend(
            (cgroup, prog_id)
            for prog_id in attached
            if (prog_id in own_ids or _uses(prog_id, own_maps)) and not _through_link(current, cgroup, prog_id)
        )
    return found, complete


def _through_link(current: Current, cgroup: str, prog_id: int) -> bool:
    """Whether the instance's pinned bpf_link is what attaches prog_id to cgroup (it goes with its pin)."""
    info = current.link_info
    return info is not None and info.prog_id == prog_id and info.cgroup_id == cgroups.cgroup_id(cgroup)


def _uses(prog_id: int, map_ids: set) -> bool:
    """Whether program prog_id uses all of map_ids (none given: False)."""
    if not map_ids:
        return False
    try:
        with bpf_syscall.closing_fd(bpf_info.prog_get_fd_by_id(prog_id)) as fd:
            return map_ids <= set(bpf_info.prog_info(fd).map_ids)
    except bpf_syscall.BpfError:
        return False  # unloaded meanwhile


def plan_absent(
    current: Current,
    unrecorded: List[Tuple[str, int]] = (),
    searched_all: bool = True,
    link_detach: bool = True,
    mount_bpffs: bool = False,
) -> Plan:
    """unrecorded, searched_all: unrecorded_attachments() of current."""
    steps = ["mount bpffs on /sys/fs/bpf"] if mount_bpffs else []
    warnings = [unknown_entries_warning(current)]
    if not searched_all:
        warnings.append(
            "the instance record (meta pin) of %s is missing or unreadable, and only the first %d cgroups "
            "were searched for its programs: check with 'bpftool cgroup tree' that none is left attached"
            % (os.path.basename(current.instance_dir), MAX_CGROUPS_SEARCHED)
        )
    if current.exists:
        if current.attached:
            steps.append("detach from %s (%s)" % (current.cgroup, current.attach_mode))
        steps.extend(_interrupted_steps(current, unrecorded))
        for cgroup, prog_id in unrecorded:
            steps.append("detach program %d from %s (multi, found by a search of the cgroup tree)" % (prog_id, cgroup))
        if current.own_entries or not current.unknown_entries:
            steps.append("remove pins of %s" % current.instance_dir)
    return Plan(
        steps=steps,
        mount_bpffs=mount_bpffs,
        detach_old=current.attached,
        link_detach=link_detach,
        detach_interrupted=tuple(current.interrupted_cgroups),
        detach_unrecorded=tuple(unrecorded),
        warnings=tuple(warning for warning in warnings if warning),
    )


def unknown_entries_warning(current: Current) -> Optional[str]:
    if not current.unknown_entries:
        return None
    return (
        "%s holds entries that are not pins of the instance %s (%s): they and the directory were left as "
        "they are; remove them if nothing else uses them"
        % (current.instance_dir, os.path.basename(current.instance_dir), ", ".join(current.unknown_entries))
    )
