# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Carrying out a plan (plan.plan_present / plan_absent) on the kernel: the plan decides, this
does, in an order that keeps every connection on a configured RTO.

New objects are pinned under temporary names and renamed into place (atomic in bpffs) only once
attached; a failure undoes everything the call made. Plain stdlib, usable without Ansible."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import os

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import (
    attach,
    bpf_info,
    bpf_maps,
    bpf_syscall,
    fault,
    host,
    loader,
    pins,
    rto_program,
    uapi,
)
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.desired import ATTACH_LINK, ATTACH_MULTI, ConfigError
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.pins import LINK_PIN, META_MAP, NEW_PIN_PREFIX, PROG_PIN
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.plan import (
    ATTACH_REPLACE,
    ATTACH_UPDATE_LINK,
    InstanceError,
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
            except OSError as exc:  # bpf_syscall.BpfError included; the original error is reported first
                failed.append("%s: %s" % (action.__name__, exc))
        return failed


class ApplyFailed(InstanceError):
    """A step of apply_present failed; the message says whether the undo restored what the run
    changed (the kernel then holds what it held before the run) or what may be left."""

    def __init__(self, error, undo_failures):
        what = "a bpf(2) call failed: %s" % error if isinstance(error, bpf_syscall.BpfError) else str(error)
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


def _pin_new(fd, instance_dir, name, undo):
    """Pin under a temporary name; _commit renames it over the old pin (atomic in bpffs)."""
    path = os.path.join(instance_dir, NEW_PIN_PREFIX + name)
    pins.remove_pin(path)
    bpf_syscall.obj_pin(fd, path)
    undo.push(pins.remove_pin, path)


def _commit(instance_dir, names, current, desired, undo):
    """Rename the new pins over the old ones. Moving to BPF_PROG_ATTACH, the old link's pin goes
    first: this run still holds the link's fd, and should it be killed from here on, the link
    detaches with that last fd instead of staying pinned beside the new attachment."""
    link_pin = os.path.join(instance_dir, LINK_PIN)
    if desired.attach_mode == ATTACH_MULTI and current.link_fd is not None:
        pins.remove_pin(link_pin)
        undo.push(bpf_syscall.obj_pin, current.link_fd, link_pin)
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
    pins.remove_pin(path)
    if fd is not None:
        bpf_syscall.obj_pin(fd, path)


def carry_out(plan, desired, current, pin_dir, mount_bpffs=True):
    """Everything plan says, for state present (desired) or absent (desired None)."""
    if plan.mount_bpffs:
        host.ensure_bpffs(pin_dir, mount=mount_bpffs)
    if desired is not None:
        apply_present(desired, current, plan)
    elif plan.steps:
        apply_absent(current, pin_dir, plan)


def _attach(plan, desired, prog_fd, current, undo):
    """Attach prog_fd the way plan says. -> the new link's fd, or None."""
    try:
        if plan.attach == ATTACH_UPDATE_LINK:
            bpf_syscall.link_update(current.link_fd, prog_fd, current.prog_fd)
            undo.push(bpf_syscall.link_update, current.link_fd, current.prog_fd, prog_fd)
        elif plan.attach == ATTACH_REPLACE:
            attach.attach_multi(desired.cgroup, prog_fd, replace_prog_fd=current.prog_fd)
            undo.push(attach.attach_multi, desired.cgroup, current.prog_fd, prog_fd)
        elif desired.attach_mode == ATTACH_LINK:
            with bpf_syscall.closing_fd(os.open(desired.cgroup, os.O_RDONLY | os.O_DIRECTORY)) as cgroup_fd:
                # No undo entry: the caller closes the fd, and an unpinned link detaches with its last fd.
                return bpf_syscall.link_create(prog_fd, cgroup_fd, uapi.BPF_CGROUP_SOCK_OPS)
        else:
            # Beside the old program for a moment (plan.detach_old): the old one runs first (attach
            # order) and the new one leaves its positive reply alone, so no connection sees the
            # kernel default.
            attach.attach_multi(desired.cgroup, prog_fd)
            undo.push(attach.detach_multi, desired.cgroup, prog_fd)
        return None
    except bpf_syscall.BpfError as exc:
        raise attach.attach_error(exc, desired.cgroup)


def _new_meta(desired, opened, new_pins):
    """A new meta map holding desired's record. Written before anything is attached, so that the
    new_meta pin of a killed run names the cgroup its program went to."""
    meta_fd = bpf_maps.map_create(
        uapi.BPF_MAP_TYPE_ARRAY, rto_program.CONFIG_KEY.size, pins.META_VALUE_SIZE, 1, 0, META_MAP
    )
    opened.append(meta_fd)
    loader.write_meta(meta_fd, desired)
    new_pins.append(META_MAP)
    fault.point("meta_created")
    return meta_fd


def apply_present(desired, current, plan):
    """Carry out plan. New objects are pinned under temporary names and renamed into place only
    once attached; on failure everything this call made is undone and the error re-raised. What a
    killed earlier run left (new_ pins, a program it attached) goes once the new state stands."""
    instance_dir = os.path.join(desired.pin_dir, desired.name)
    undo = _Undo()
    opened = []
    new_pins = []
    detach_old_after_commit = plan.detach_old
    try:
        _make_dirs(instance_dir, undo)
        fault.point("instance_dir_made")
        btf_fd = loader.load_btf(desired.object, opened) if plan.load_maps or plan.load_program else None
        if plan.load_maps:
            carried = {name: current.maps[name] for name in plan.carried_maps}
            map_fds = loader.create_maps(
                desired.object, opened, btf_fd, {rto_program.LEARNED_MAP: desired.table_size()}, carried
            )
            fault.point("maps_created")
            stale_rules = loader.write_rules(
                map_fds[rto_program.RULES_MAP], map_fds[rto_program.HITS_MAP], desired.rules, None, undo
            )
            new_pins.extend(name for name in map_fds if name not in carried)
            loader.write_config(map_fds[rto_program.CONFIG_MAP], desired)
        else:
            map_fds = {name: current.maps[name] for name in rto_program.MAP_CONTRACT}
            stale_rules = loader.write_rules(
                map_fds[rto_program.RULES_MAP],
                map_fds[rto_program.HITS_MAP],
                desired.rules,
                current.rules,
                undo,
                stats_fd=map_fds[rto_program.STATS_MAP],
            )
            loader.write_config(map_fds[rto_program.CONFIG_MAP], desired, undo)
        fault.point("maps_filled" if plan.load_maps else "config_updated")
        loader.delete_rules(map_fds[rto_program.RULES_MAP], stale_rules, undo)
        meta_fd = _new_meta(desired, opened, new_pins) if plan.new_meta else current.maps[META_MAP]
        fds_to_pin = dict(map_fds, **{META_MAP: meta_fd})
        for name in new_pins:
            _pin_new(fds_to_pin[name], instance_dir, name, undo)
            fault.point("first_map_pinned")
        if new_pins:
            fault.point("maps_pinned")
        prog_fd = current.prog_fd
        if plan.load_program:
            prog_fd = loader.load_program(desired.object, map_fds, btf_fd)
            opened.append(prog_fd)
            fault.point("program_loaded")
            _pin_new(prog_fd, instance_dir, PROG_PIN, undo)
            new_pins.append(PROG_PIN)
            fault.point("program_pinned")
        if plan.attach:
            link_fd = _attach(plan, desired, prog_fd, current, undo)
            fault.point("attached")
            if link_fd is not None:
                opened.append(link_fd)
                _pin_new(link_fd, instance_dir, LINK_PIN, undo)
                new_pins.append(LINK_PIN)
                fault.point("link_pinned")
        if plan.detach_old and current.attach_mode == ATTACH_MULTI:
            # Before the commit: once its pin is renamed over, nothing would name it any more.
            attach.detach(current)
            undo.push(attach.attach_multi, current.cgroup, current.prog_fd)
            detach_old_after_commit = False
            fault.point("old_program_detached")
        if not plan.new_meta:
            loader.write_meta(meta_fd, desired, undo)
        _commit(instance_dir, new_pins, current, desired, undo)
    except Exception as exc:
        undo_failures = undo.run()
        if isinstance(exc, (OSError, InstanceError, ConfigError)):  # bpf_syscall.BpfError is an OSError
            raise ApplyFailed(exc, undo_failures)
        raise
    finally:
        for fd in opened:
            os.close(fd)
    # Committed: the new state stands. What follows only removes what the old state left.
    if detach_old_after_commit:
        attach.detach(current, plan.link_detach)  # a bpf_link: its pin is gone already, this run holds its last fd
    if plan.detach_interrupted:
        _detach_interrupted(current, plan.detach_interrupted)
        fault.point("orphans_detached")
    for entry in pins.instance_pin_names():
        if entry.startswith(NEW_PIN_PREFIX):  # a killed earlier run's temporary pins
            pins.remove_pin(os.path.join(instance_dir, entry))


def _detach_interrupted(current, cgroups):
    """Take the program of a run killed between its BPF_PROG_ATTACH and its commit (its new_prog
    pin) off cgroups (a link attachment of it is no concern: the link goes with its new_link pin)."""
    for cgroup in cgroups:
        attach.detach_multi_quiet(cgroup, current.interrupted_prog_fd)


def apply_absent(current, pin_dir, plan):
    """Detach and unpin the instance as plan says: its recorded attachment, a killed run's, and
    those a search found without the record (plan.detach_unrecorded). Only the instance's own
    pins go; the directory goes with them unless it holds something else."""
    try:
        if plan.detach_old:
            attach.detach(current, plan.link_detach)
        if plan.detach_interrupted:
            _detach_interrupted(current, plan.detach_interrupted)
        for cgroup, prog_id in plan.detach_unrecorded:
            with bpf_syscall.closing_fd(bpf_info.prog_get_fd_by_id(prog_id)) as prog_fd:
                attach.detach_multi_quiet(cgroup, prog_fd)
        fault.point("absent_detached")
        for entry in current.own_entries:
            pins.remove_pin(os.path.join(current.instance_dir, entry))
            fault.point("absent_first_pin_removed")
        fault.point("absent_pins_removed")
        if current.unknown_entries:
            return
        os.rmdir(current.instance_dir)
    except OSError as exc:  # bpf_syscall.BpfError included
        raise InstanceError(
            "removing the instance stopped part-way (%s): what is left stays pinned under %s; run the task "
            "with state: absent again"
            % (
                "a bpf(2) call failed: %s" % exc if isinstance(exc, bpf_syscall.BpfError) else exc,
                current.instance_dir,
            )
        )
    try:
        os.rmdir(pin_dir)  # the collection's pin root, once no instance is left in it
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EBUSY):
            raise
