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

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import bpf_syscall as bpf
from ansible_collections.netbpf.tcp_rto.plugins.module_utils import rto_program as abi
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.instance import (
    ATTACH_LINK,
    ATTACH_MULTI,
    LINK_PIN,
    META_FORMAT,
    META_MAP,
    META_VALUE_SIZE,
    NEW_PIN_PREFIX,
    PROG_PIN,
    ConfigError,
    InstanceError,
    same_place,
)


class _Undo:
    """Kernel changes made so far, undone in reverse order when a later step fails."""

    def __init__(self):
        self.actions = []

    def push(self, action, *args):
        self.actions.append((action, args))

    def run(self):
        while self.actions:
            action, args = self.actions.pop()
            try:
                action(*args)
            except OSError:  # bpf.BpfError included
                pass  # best effort: the original error is what the user must see


def _make_dirs(path, undo):
    """mkdir -p that the undo removes again, level by level (pin_dir too when this made it)."""
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    for directory in reversed(missing):
        os.mkdir(directory, 0o700)
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


def _create_maps(obj, opened):
    fds = {}
    for name, spec in obj.maps.items():
        fds[name] = bpf.map_create(spec.type, spec.key_size, spec.value_size, spec.max_entries, spec.flags, name)
        opened.append(fds[name])
    return fds


def write_rules(rules_fd, hits_fd, desired_rules, current_rules=None):
    """Make the rules map hold desired_rules (hit slot = list position), touching only what
    differs; current_rules None means the maps are new. Upserts come before deletes so that a
    connection never falls through while a rule moves."""
    wanted = {
        abi.encode_rule_key(rule.dest): abi.encode_rule_value(rule.rto_jiffies, slot)
        for slot, rule in enumerate(desired_rules)
    }
    held = {
        abi.encode_rule_key(rule.dest): abi.encode_rule_value(rule.rto_jiffies, slot)
        for rule, slot in current_rules or ()
    }
    if current_rules is not None:
        held_slots = {slot: rule.dest for rule, slot in current_rules}
        zero = [abi.HIT_VALUE.pack(0)] * len(bpf.possible_cpus())
        for slot, rule in enumerate(desired_rules):
            if held_slots.get(slot) != rule.dest:  # this slot's counter now counts another rule
                bpf.percpu_update(hits_fd, abi.HIT_KEY.pack(slot), zero)
    for key, value in wanted.items():
        if held.get(key) != value:
            bpf.map_update(rules_fd, key, value)
    for key in set(held) - set(wanted):
        bpf.map_delete(rules_fd, key)


def write_config(config_fd, desired):
    value = abi.encode_config(desired.default_jiffies, abi.DIRECTIONS[desired.direction])
    bpf.map_update(config_fd, abi.CONFIG_KEY.pack(0), value)


def write_meta(meta_fd, desired):
    record = {
        "format": META_FORMAT,
        "cgroup": desired.cgroup,
        "attach_mode": desired.attach_mode,
        "object_sha256": desired.object.sha256,
        "hz": desired.hz,
    }
    raw = json.dumps(record, sort_keys=True).encode("utf-8")
    if len(raw) > META_VALUE_SIZE:
        raise ConfigError(
            "instance record is %d bytes, more than the %d the meta map holds (cgroup path too long?)"
            % (len(raw), META_VALUE_SIZE)
        )
    bpf.map_update(meta_fd, abi.CONFIG_KEY.pack(0), raw.ljust(META_VALUE_SIZE, b"\0"))


# The verifier's verdict is at the end of a log that can fill the 16 MiB buffer.
VERIFIER_LOG_TAIL_LINES = 30


def load_program(obj, map_fds):
    try:
        return bpf.prog_load(bpf.BPF_PROG_TYPE_SOCK_OPS, obj.instructions(map_fds), obj.license, abi.PROGRAM_NAME)
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
    """Pin under a temporary name; _commit_pins renames it over the old pin (atomic in bpffs)."""
    path = os.path.join(instance_dir, NEW_PIN_PREFIX + name)
    _unlink_quiet(path)
    bpf.obj_pin(fd, path)
    undo.push(_unlink_quiet, path)


def _commit_pins(instance_dir, names):
    for name in names:
        os.rename(os.path.join(instance_dir, NEW_PIN_PREFIX + name), os.path.join(instance_dir, name))


def _attach_multi(cgroup, prog_fd, replace_prog_fd=None):
    flags = bpf.BPF_F_ALLOW_MULTI | (bpf.BPF_F_REPLACE if replace_prog_fd is not None else 0)
    with bpf.closing_fd(_open_cgroup(cgroup)) as cgroup_fd:
        bpf.prog_attach(cgroup_fd, prog_fd, bpf.BPF_CGROUP_SOCK_OPS, flags, replace_prog_fd=replace_prog_fd)


def _detach_multi(cgroup, prog_fd):
    with bpf.closing_fd(_open_cgroup(cgroup)) as cgroup_fd:
        bpf.prog_detach(cgroup_fd, prog_fd, bpf.BPF_CGROUP_SOCK_OPS)


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


def detach(current):
    """Take the current program off its cgroup, the way it was attached."""
    if current.attach_mode == ATTACH_LINK and current.link_fd is not None:
        bpf.link_detach(current.link_fd)
    elif current.attach_mode == ATTACH_MULTI and current.prog_fd is not None:
        try:
            _detach_multi(current.cgroup, current.prog_fd)
        except bpf.BpfError as exc:
            if exc.errno != errno.ENOENT:
                raise


def apply_present(desired, current, plan, can_replace=True):
    """Carry out plan. New objects are pinned under temporary names and renamed into place only
    once attached; on failure everything this call made is undone and the error re-raised."""
    instance_dir = os.path.join(desired.pin_dir, desired.name)
    undo = _Undo()
    opened = []
    new_pins = []
    try:
        _make_dirs(instance_dir, undo)
        if plan.load_maps:
            map_fds = _create_maps(desired.object, opened)
            write_rules(map_fds[abi.RULES_MAP], map_fds[abi.HITS_MAP], desired.rules)
            new_pins.extend(map_fds)
        else:
            map_fds = {name: current.maps[name] for name in abi.MAP_CONTRACT}
            write_rules(map_fds[abi.RULES_MAP], map_fds[abi.HITS_MAP], desired.rules, current.rules)
        write_config(map_fds[abi.CONFIG_MAP], desired)
        meta_fd = current.maps.get(META_MAP)
        if meta_fd is None:
            meta_fd = bpf.map_create(abi.BPF_MAP_TYPE_ARRAY, abi.CONFIG_KEY.size, META_VALUE_SIZE, 1, 0, META_MAP)
            opened.append(meta_fd)
            new_pins.append(META_MAP)
        fds_to_pin = dict(map_fds, **{META_MAP: meta_fd})
        for name in new_pins:
            _pin_new(fds_to_pin[name], instance_dir, name, undo)
        prog_fd = current.prog_fd
        if plan.load_program:
            prog_fd = load_program(desired.object, map_fds)
            opened.append(prog_fd)
            _pin_new(prog_fd, instance_dir, PROG_PIN, undo)
            new_pins.append(PROG_PIN)
        detach_old = False
        if plan.attach:
            link_fd, detach_old = _attach(desired, prog_fd, current, can_replace, undo)
            if link_fd is not None:
                opened.append(link_fd)
                _pin_new(link_fd, instance_dir, LINK_PIN, undo)
                new_pins.append(LINK_PIN)
        write_meta(meta_fd, desired)
        _commit_pins(instance_dir, new_pins)
    except Exception:
        undo.run()
        raise
    finally:
        for fd in opened:
            os.close(fd)
    # Committed: the new state stands. What follows only removes what the old state left.
    if detach_old:
        detach(current)
    if desired.attach_mode == ATTACH_MULTI:
        _unlink_quiet(os.path.join(instance_dir, LINK_PIN))
    for entry in os.listdir(instance_dir):
        if entry.startswith(NEW_PIN_PREFIX):  # a killed earlier run's temporary pins
            _unlink_quiet(os.path.join(instance_dir, entry))


def apply_absent(current, pin_dir):
    if current.attached:
        detach(current)
    for entry in os.listdir(current.instance_dir):
        _unlink_quiet(os.path.join(current.instance_dir, entry))
    os.rmdir(current.instance_dir)
    try:
        os.rmdir(pin_dir)  # the collection's pin root, once no instance is left in it
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EBUSY):
            raise
