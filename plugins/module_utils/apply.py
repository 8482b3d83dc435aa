# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Carrying out a plan (instance.plan_present / plan_absent) on the kernel.

New objects are pinned under temporary names and renamed into place (atomic in bpffs) only once
attached; a failure undoes everything the call made. Plain stdlib, usable without Ansible."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import json
import os
import time

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import bpf_syscall as bpf
from ansible_collections.netbpf.tcp_rto.plugins.module_utils import fault
from ansible_collections.netbpf.tcp_rto.plugins.module_utils import rto_program as abi
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.instance import (
    ATTACH_LINK,
    ATTACH_MULTI,
    LINK_PIN,
    META_FORMAT,
    META_IPV6_MAPPED,
    META_MAP,
    META_VALUE_SIZE,
    NEW_PIN_PREFIX,
    PROG_PIN,
    ConfigError,
    InstanceError,
    attached_program_ids,
    instance_pin_names,
    ipv6_mapped_slots,
    maps_fingerprint,
    open_pin,
    read_meta,
    rule_entries,
    same_place,
)


class _Undo:
    """Kernel changes made so far, undone in reverse order when a later step fails."""

    def __init__(self):
        self.actions = []

    def push(self, action, *args):
        self.actions.append((action, args))

    def run(self):
        """-> the undo steps that failed, as text ([] when everything was undone)."""
        failed = []
        while self.actions:
            action, args = self.actions.pop()
            try:
                action(*args)
            except OSError as exc:  # bpf.BpfError included; the original error is reported first
                failed.append("%s: %s" % (action.__name__, exc))
        return failed


class ApplyFailed(InstanceError):
    """A step of apply_present failed; the message says whether the undo restored what the run
    changed (the kernel then holds what it held before the run) or what may be left."""

    def __init__(self, error, undo_failures):
        what = "a bpf(2) call failed: %s" % error if isinstance(error, bpf.BpfError) else str(error)
        if undo_failures:
            state = (
                "Undoing this run's changes failed too (%s): the instance may hold part of them; run the task "
                "again to repair it, or remove it with state: absent." % "; ".join(undo_failures)
            )
        else:
            state = "This run's changes were undone: the instance is as it was before the run."
        super().__init__("%s. %s" % (what.rstrip("."), state))
        self.error = error


def _make_dirs(path, undo):
    """mkdir -p that the undo removes again, level by level (pin_dir too when this made it)."""
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except OSError as exc:
            # Another instance's run (other lock) may make a shared level such as pin_dir meanwhile.
            if exc.errno != errno.EEXIST or not os.path.isdir(directory):
                raise
            continue
        undo.push(os.rmdir, directory)


def _unlink_quiet(path):
    try:
        os.unlink(path)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise


def _open_cgroup(cgroup):
    return os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)


def _attach_error(exc, cgroup):
    if exc.errno == errno.EPERM:
        return InstanceError(
            "the kernel refused to attach to %s (EPERM): a sock_ops program is attached there or on an "
            "ancestor cgroup without BPF_F_ALLOW_MULTI. tcp_rto never detaches programs it did not attach: "
            "re-attach that program with 'multi' or choose another cgroup." % cgroup
        )
    return InstanceError("attaching to %s failed: %s" % (cgroup, exc))


def load_btf(obj, opened):
    """The object's BTF in the kernel -> fd, or None: the object has none, or the kernel refuses it
    (BTF itself needs 4.18, the kinds clang emits for maps and functions 5.2 to 5.6: trying is the
    probe). Without it everything loads as before, only without typed dumps and source lines."""
    if obj.btf is None:
        return None
    try:
        fd = bpf.btf_load(obj.btf.data)
    except bpf.BpfError:
        return None
    opened.append(fd)
    return fd


def _create_maps(obj, opened, btf_fd):
    fds = {}
    for name, spec in obj.maps.items():
        args = (spec.type, spec.key_size, spec.value_size, spec.max_entries, spec.flags, name)
        types = obj.btf.map_types.get(name) if btf_fd is not None else None
        fd = None
        if types is not None:
            try:
                fd = bpf.map_create(*args, btf_fd=btf_fd, btf_types=types)
            except bpf.BpfError:
                pass  # a kernel that takes the BTF but not these types for this map: make it without
        if fd is None:
            fd = bpf.map_create(*args)
        opened.append(fd)
        fds[name] = fd
    return fds


def write_rules(rules_fd, hits_fd, desired_rules, current_rules, undo, stats_fd=None):
    """Write the entries of desired_rules that the rules map lacks or holds otherwise (hit slot =
    list position); current_rules None means the maps are new, else undo records how to restore
    the live maps. -> the keys to remove with delete_rules() once the default is written too:
    writes, then the default, then deletes, so that a connection never falls through to the kernel
    default while a rule moves or gives way to the default. Changed values go before new keys: the
    map is then below its capacity for each change (kernels without a 6.13 fix refuse any update to a full
    LPM trie), which instance.rules_in_place_obstacle() checks the plan for. stats_fd: the
    telemetry map, whose slots reset with their hit counters."""
    fresh = current_rules is None
    wanted = rule_entries([(rule, slot) for slot, rule in enumerate(desired_rules)])
    held = rule_entries(current_rules or [])
    if not fresh:
        held_slots = {slot: rule.dest for rule, slot in current_rules}
        zero = [abi.HIT_VALUE.pack(0)] * len(bpf.possible_cpus())
        for slot, rule in enumerate(desired_rules):
            if held_slots.get(slot) != rule.dest:  # this slot's counter now counts another rule
                key = abi.HIT_KEY.pack(slot)
                undo.push(bpf.percpu_update, hits_fd, key, bpf.percpu_lookup(hits_fd, key, abi.HIT_VALUE.size))
                bpf.percpu_update(hits_fd, key, zero)
                if stats_fd is not None:
                    _reset_stats(stats_fd, key, undo)
                fault.point("hit_counter_reset")
    changed = [key for key in wanted if key in held and held[key] != wanted[key]]
    added = [key for key in wanted if key not in held]
    for key in changed + added:
        if not fresh:
            undo.push(_restore_rule, rules_fd, key, held.get(key))
        bpf.map_update(rules_fd, key, wanted[key])
        fault.point("first_rule_written" if fresh else "first_rule_updated")
    return [(key, held[key]) for key in held if key not in wanted]


def _reset_stats(stats_fd, key, undo):
    """Zero a slot's telemetry (issue 13) on every CPU; undo puts the old counts back."""
    undo.push(bpf.percpu_update, stats_fd, key, bpf.percpu_lookup(stats_fd, key, abi.STATS_VALUE.size))
    bpf.percpu_update(stats_fd, key, [bytes(abi.STATS_VALUE.size)] * len(bpf.possible_cpus()))


def _restore_rule(rules_fd, key, value):
    """Put back what the rules map held for key (None: nothing)."""
    if value is None:
        bpf.map_delete(rules_fd, key)
    else:
        bpf.map_update(rules_fd, key, value)


def delete_rules(rules_fd, stale, undo):
    """Remove the (key, value) entries write_rules() returned; undo puts them back."""
    for key, value in stale:
        undo.push(bpf.map_update, rules_fd, key, value)
        bpf.map_delete(rules_fd, key)
        fault.point("first_rule_deleted")


def write_config(config_fd, desired, undo=None):
    """The default and the direction; undo (for the live map) records the value it held."""
    key = abi.CONFIG_KEY.pack(0)
    if undo is not None:
        undo.push(bpf.map_update, config_fd, key, bpf.map_lookup(config_fd, key, abi.CONFIG_VALUE.size))
    bpf.map_update(
        config_fd,
        key,
        abi.encode_config(desired.default_jiffies, abi.DIRECTIONS[desired.direction], desired.default_syn_retries),
    )


def write_meta(meta_fd, desired, undo=None):
    """The instance record; undo (for the live map) records the one it held."""
    record = {
        "format": META_FORMAT,
        "cgroup": desired.cgroup,
        "attach_mode": desired.attach_mode,
        "object_sha256": desired.object.sha256,
        "hz": desired.hz,
        "maps_sha256": maps_fingerprint(
            desired.rules, desired.default_jiffies, abi.DIRECTIONS[desired.direction], desired.default_syn_retries
        ),
        META_IPV6_MAPPED: ipv6_mapped_slots(desired.rules),
    }
    raw = json.dumps(record, sort_keys=True).encode("utf-8")
    if len(raw) > META_VALUE_SIZE:
        raise ConfigError(
            "instance record is %d bytes, more than the %d the meta map holds (cgroup path too long?)"
            % (len(raw), META_VALUE_SIZE)
        )
    key = abi.CONFIG_KEY.pack(0)
    if undo is not None:
        undo.push(bpf.map_update, meta_fd, key, bpf.map_lookup(meta_fd, key, META_VALUE_SIZE))
    bpf.map_update(meta_fd, key, raw.ljust(META_VALUE_SIZE, b"\0"))


# The verifier's verdict is at the end of a log that can fill the 16 MiB buffer.
VERIFIER_LOG_TAIL_LINES = 30


def load_program(obj, map_fds, btf_fd=None):
    insns = obj.instructions(map_fds)
    if btf_fd is not None:
        try:
            return bpf.prog_load(
                bpf.BPF_PROG_TYPE_SOCK_OPS,
                insns,
                obj.license,
                abi.PROGRAM_NAME,
                btf_fd=btf_fd,
                func_info=obj.btf.func_info,
                line_info=obj.btf.line_info,
                verifier_log=False,
            )
        except bpf.BpfError:
            pass  # the kernel may refuse the func or line info: load without; a bad program fails again below
    try:
        return bpf.prog_load(bpf.BPF_PROG_TYPE_SOCK_OPS, insns, obj.license, abi.PROGRAM_NAME)
    except bpf.BpfError as exc:
        lines = (exc.log or "(none)").rstrip("\n").split("\n")
        shown = (
            "Verifier log"
            if len(lines) <= VERIFIER_LOG_TAIL_LINES
            else ("Last %d of %d lines of the verifier log" % (VERIFIER_LOG_TAIL_LINES, len(lines)))
        )
        raise InstanceError(
            "the kernel refused the program (%s): fix the program's source. %s:\n%s"
            % (exc, shown, "\n".join(lines[-VERIFIER_LOG_TAIL_LINES:]))
        )


def _pin_new(fd, instance_dir, name, undo):
    """Pin under a temporary name; _commit renames it over the old pin (atomic in bpffs)."""
    path = os.path.join(instance_dir, NEW_PIN_PREFIX + name)
    _unlink_quiet(path)
    bpf.obj_pin(fd, path)
    undo.push(_unlink_quiet, path)


def _commit(instance_dir, names, current, desired, undo):
    """Rename the new pins over the old ones. Moving to BPF_PROG_ATTACH, the old link's pin goes
    first: this run still holds the link's fd, and should it be killed from here on, the link
    detaches with that last fd instead of staying pinned beside the new attachment."""
    link_pin = os.path.join(instance_dir, LINK_PIN)
    if desired.attach_mode == ATTACH_MULTI and current.link_fd is not None:
        _unlink_quiet(link_pin)
        undo.push(bpf.obj_pin, current.link_fd, link_pin)
        fault.point("stale_link_unpinned")
    for name in names:
        path = os.path.join(instance_dir, name)
        os.rename(os.path.join(instance_dir, NEW_PIN_PREFIX + name), path)
        undo.push(_restore_pin, path, _pinned_fd(current, name))
        fault.point("first_pin_renamed")
    fault.point("pins_renamed")


def _pinned_fd(current, name):
    """current's fd of the object its pin name held, or None when nothing was pinned there."""
    if name == LINK_PIN:
        return current.link_fd
    if name == PROG_PIN:
        return None if PROG_PIN in current.missing_pins else current.prog_fd
    return current.maps.get(name)


def _restore_pin(path, fd):
    """Pin fd at path again in place of what a commit renamed there (fd None: no pin)."""
    _unlink_quiet(path)
    if fd is not None:
        bpf.obj_pin(fd, path)


def _interrupted_program(instance_dir, cgroups):
    """The program of a run killed between its BPF_PROG_ATTACH and its commit: its new_prog pin, as
    (prog fd, [cgroups it is attached to]) or None. Such an attachment belongs to the cgroup and
    outlives the run; the record the run pinned beside it (new_meta) names its cgroup."""
    prog_fd = open_pin(os.path.join(instance_dir, NEW_PIN_PREFIX + PROG_PIN))
    if prog_fd is None:
        return None
    meta_fd = open_pin(os.path.join(instance_dir, NEW_PIN_PREFIX + META_MAP))
    if meta_fd is not None:
        try:
            meta, _problem = read_meta(meta_fd)
        finally:
            os.close(meta_fd)
        if meta:
            cgroups = [meta["cgroup"], *cgroups]
    prog_id = bpf.prog_info(prog_fd).id
    places = []
    for cgroup in cgroups:
        if cgroup and cgroup not in places and os.path.isdir(cgroup) and prog_id in attached_program_ids(cgroup)[1]:
            places.append(cgroup)
    if not places:
        os.close(prog_fd)
        return None
    return prog_fd, places


def _detach_interrupted(interrupted):
    """Detach and close what _interrupted_program found (a link attachment of it is no concern:
    the link goes with its new_link pin)."""
    prog_fd, cgroups = interrupted
    try:
        for cgroup in cgroups:
            _detach_multi_quiet(cgroup, prog_fd)
    finally:
        os.close(prog_fd)


def _attach_multi(cgroup, prog_fd, replace_prog_fd=None):
    flags = bpf.BPF_F_ALLOW_MULTI | (bpf.BPF_F_REPLACE if replace_prog_fd is not None else 0)
    with bpf.closing_fd(_open_cgroup(cgroup)) as cgroup_fd:
        bpf.prog_attach(cgroup_fd, prog_fd, bpf.BPF_CGROUP_SOCK_OPS, flags, replace_prog_fd=replace_prog_fd)


def _detach_multi(cgroup, prog_fd):
    with bpf.closing_fd(_open_cgroup(cgroup)) as cgroup_fd:
        bpf.prog_detach(cgroup_fd, prog_fd, bpf.BPF_CGROUP_SOCK_OPS)


def _detach_multi_quiet(cgroup, prog_fd):
    """_detach_multi, at peace with a program that is not (or no longer) attached there."""
    try:
        _detach_multi(cgroup, prog_fd)
    except bpf.BpfError as exc:
        if exc.errno != errno.ENOENT:
            raise


def _attach(desired, prog_fd, current, can_replace, undo):
    """Attach prog_fd where desired says. Returns (new link fd or None, whether the old program
    still has to be detached)."""
    replace = same_place(desired, current)
    try:
        if desired.attach_mode == ATTACH_LINK:
            if replace:
                bpf.link_update(current.link_fd, prog_fd, current.prog_fd)
                undo.push(bpf.link_update, current.link_fd, current.prog_fd, prog_fd)
                return None, False
            with bpf.closing_fd(_open_cgroup(desired.cgroup)) as cgroup_fd:
                link_fd = bpf.link_create(prog_fd, cgroup_fd, bpf.BPF_CGROUP_SOCK_OPS)
            # No undo entry: the caller closes link_fd, and an unpinned link detaches with its last fd.
            return link_fd, current.attached
        if replace and can_replace:
            _attach_multi(desired.cgroup, prog_fd, replace_prog_fd=current.prog_fd)
            undo.push(_attach_multi, desired.cgroup, current.prog_fd, prog_fd)
            return None, False
        # Without BPF_F_REPLACE both run for a moment: the old one first (attach order) and the
        # new one leaves its positive reply alone, so no connection sees the kernel default.
        _attach_multi(desired.cgroup, prog_fd)
        undo.push(_detach_multi, desired.cgroup, prog_fd)
        return None, current.attached
    except bpf.BpfError as exc:
        raise _attach_error(exc, desired.cgroup)


def detach(current, link_detach=True):
    """Take the current program off its cgroup, the way it was attached. link_detach False (no
    BPF_LINK_DETACH before 5.9, see features.py): the link goes with its pin and this run's fd."""
    if current.attach_mode == ATTACH_LINK and current.link_fd is not None:
        if link_detach:
            bpf.link_detach(current.link_fd)
        else:
            _release_link(current)
    elif current.attach_mode == ATTACH_MULTI and current.prog_fd is not None:
        _detach_multi_quiet(current.cgroup, current.prog_fd)


# A removed pin drops its reference only after an RCU grace period on some kernels (seen on 5.10;
# 6.18 drops it at once), so a released link detaches a moment later.
LINK_RELEASE_WAIT_SECONDS = 5.0


def _release_link(current):
    """Unpin the link and close this run's fd of it: the link detaches once nothing holds it."""
    _unlink_quiet(os.path.join(current.instance_dir, LINK_PIN))
    os.close(current.link_fd)
    current.link_fd = None
    deadline = time.monotonic() + LINK_RELEASE_WAIT_SECONDS
    while current.prog_info.id in attached_program_ids(current.cgroup)[1]:
        if time.monotonic() < deadline:
            time.sleep(0.01)
            continue
        raise InstanceError(
            "program %d stays attached to %s after tcp_rto unpinned and closed its bpf_link: another "
            "process holds the link open, and this kernel has no BPF_LINK_DETACH (Linux 5.9) to detach "
            "it regardless. Find that process with 'bpftool link show' and 'lsof', end it, and run again."
            % (current.prog_info.id, current.cgroup)
        )


def _new_meta(desired, opened, new_pins):
    """A new meta map holding desired's record. Written before anything is attached, so that the
    new_meta pin of a killed run names the cgroup its program went to."""
    meta_fd = bpf.map_create(abi.BPF_MAP_TYPE_ARRAY, abi.CONFIG_KEY.size, META_VALUE_SIZE, 1, 0, META_MAP)
    opened.append(meta_fd)
    write_meta(meta_fd, desired)
    new_pins.append(META_MAP)
    fault.point("meta_created")
    return meta_fd


def apply_present(desired, current, plan, can_replace=True, link_detach=True):
    """Carry out plan. New objects are pinned under temporary names and renamed into place only
    once attached; on failure everything this call made is undone and the error re-raised. What a
    killed earlier run left (new_ pins, a program it attached) goes once the new state stands.
    can_replace: BPF_F_REPLACE (5.6); link_detach: BPF_LINK_DETACH (5.9), see detach()."""
    instance_dir = os.path.join(desired.pin_dir, desired.name)
    undo = _Undo()
    opened = []
    new_pins = []
    interrupted = None
    try:
        if current.exists:
            interrupted = _interrupted_program(instance_dir, [current.cgroup, desired.cgroup])
        _make_dirs(instance_dir, undo)
        fault.point("instance_dir_made")
        btf_fd = load_btf(desired.object, opened) if plan.load_maps or plan.load_program else None
        if plan.load_maps:
            map_fds = _create_maps(desired.object, opened, btf_fd)
            fault.point("maps_created")
            stale_rules = write_rules(map_fds[abi.RULES_MAP], map_fds[abi.HITS_MAP], desired.rules, None, undo)
            new_pins.extend(map_fds)
            write_config(map_fds[abi.CONFIG_MAP], desired)
        else:
            map_fds = {name: current.maps[name] for name in abi.MAP_CONTRACT}
            stale_rules = write_rules(
                map_fds[abi.RULES_MAP],
                map_fds[abi.HITS_MAP],
                desired.rules,
                current.rules,
                undo,
                stats_fd=map_fds[abi.STATS_MAP],
            )
            write_config(map_fds[abi.CONFIG_MAP], desired, undo)
        fault.point("maps_filled" if plan.load_maps else "config_updated")
        delete_rules(map_fds[abi.RULES_MAP], stale_rules, undo)
        meta_fd = current.maps.get(META_MAP)
        fresh_meta = meta_fd is None or plan.attach or current.meta_problem is not None
        if fresh_meta:
            meta_fd = _new_meta(desired, opened, new_pins)
        fds_to_pin = dict(map_fds, **{META_MAP: meta_fd})
        for name in new_pins:
            _pin_new(fds_to_pin[name], instance_dir, name, undo)
            fault.point("first_map_pinned")
        if new_pins:
            fault.point("maps_pinned")
        prog_fd = current.prog_fd
        if plan.load_program:
            prog_fd = load_program(desired.object, map_fds, btf_fd)
            opened.append(prog_fd)
            fault.point("program_loaded")
            _pin_new(prog_fd, instance_dir, PROG_PIN, undo)
            new_pins.append(PROG_PIN)
            fault.point("program_pinned")
        detach_old = False
        if plan.attach:
            link_fd, detach_old = _attach(desired, prog_fd, current, can_replace, undo)
            fault.point("attached")
            if link_fd is not None:
                opened.append(link_fd)
                _pin_new(link_fd, instance_dir, LINK_PIN, undo)
                new_pins.append(LINK_PIN)
                fault.point("link_pinned")
        if detach_old and current.attach_mode == ATTACH_MULTI:
            # Before the commit: once its pin is renamed over, nothing would name it any more.
            detach(current)
            undo.push(_attach_multi, current.cgroup, current.prog_fd)
            detach_old = False
            fault.point("old_program_detached")
        if not fresh_meta:
            write_meta(meta_fd, desired, undo)
        _commit(instance_dir, new_pins, current, desired, undo)
    except Exception as exc:
        undo_failures = undo.run()
        if interrupted is not None:
            os.close(interrupted[0])
        if isinstance(exc, (OSError, InstanceError, ConfigError)):  # bpf.BpfError is an OSError
            raise ApplyFailed(exc, undo_failures)
        raise
    finally:
        for fd in opened:
            os.close(fd)
    # Committed: the new state stands. What follows only removes what the old state left.
    if detach_old:
        detach(current, link_detach)  # a bpf_link: its pin is gone already, this run holds its last fd
    if interrupted is not None:
        _detach_interrupted(interrupted)
        fault.point("orphans_detached")
    for entry in instance_pin_names():
        if entry.startswith(NEW_PIN_PREFIX):  # a killed earlier run's temporary pins
            _unlink_quiet(os.path.join(instance_dir, entry))


def apply_absent(current, pin_dir, unrecorded=(), link_detach=True):
    """Detach and unpin the instance: its recorded attachment, a killed run's, and unrecorded (the
    instance.unrecorded_attachments() found without the record). Only the instance's own pins go;
    the directory goes with them unless it holds something else. link_detach: see detach()."""
    try:
        interrupted = _interrupted_program(current.instance_dir, [current.cgroup])
        if current.attached:
            detach(current, link_detach)
        if interrupted is not None:
            _detach_interrupted(interrupted)
        for cgroup, prog_id in unrecorded:
            with bpf.closing_fd(bpf.prog_get_fd_by_id(prog_id)) as prog_fd:
                _detach_multi_quiet(cgroup, prog_fd)
        fault.point("absent_detached")
        for entry in current.own_entries:
            _unlink_quiet(os.path.join(current.instance_dir, entry))
            fault.point("absent_first_pin_removed")
        fault.point("absent_pins_removed")
        if current.unknown_entries:
            return
        os.rmdir(current.instance_dir)
    except OSError as exc:  # bpf.BpfError included
        raise InstanceError(
            "removing the instance stopped part-way (%s): what is left stays pinned under %s; run the task "
            "with state: absent again"
            % ("a bpf(2) call failed: %s" % exc if isinstance(exc, bpf.BpfError) else exc, current.instance_dir)
        )
    try:
        os.rmdir(pin_dir)  # the collection's pin root, once no instance is left in it
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EBUSY):
            raise
