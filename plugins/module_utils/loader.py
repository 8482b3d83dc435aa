# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Making the instance's kernel objects from the BPF object: its BTF, the maps and what they hold
(rules, default and direction, the meta record), the program. The live maps are written so that no
connection falls to the kernel default meanwhile, each change pushed on the caller's undo. Plain stdlib."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import (
    bpf_maps,
    bpf_syscall,
    fault,
    pins,
    rto_program,
    uapi,
)
from ansible_collections.netbpf.tcp_rto.plugins.module_utils.plan import InstanceError, rule_entries


def load_btf(obj, opened):
    """The object's BTF in the kernel -> fd, or None: the object has none, or the kernel refuses it
    (BTF itself needs 4.18, the kinds clang emits for maps and functions 5.2 to 5.6: trying is the
    probe). Without it everything loads as before, only without typed dumps and source lines."""
    if obj.btf is None:
        return None
    try:
        fd = bpf_syscall.btf_load(obj.btf.data)
    except bpf_syscall.BpfError:
        return None
    opened.append(fd)
    return fd


def create_maps(obj, opened, btf_fd, sizes=None, carried=None):
    """The object's maps -> {name: fd}. sizes: {name: max_entries} in place of the object's (the
    learned table's auto_table_size); carried: {name: fd} of live maps the new program uses as they
    are (rto_program.CARRIED_MAPS of an upgrade), not made anew."""
    fds = dict(carried or {})
    for name, spec in obj.maps.items():
        if name in fds:
            continue
        max_entries = (sizes or {}).get(name, spec.max_entries)
        args = (spec.type, spec.key_size, spec.value_size, max_entries, spec.flags, name)
        types = obj.btf.map_types.get(name) if btf_fd is not None else None
        fd = None
        if types is not None:
            try:
                fd = bpf_maps.map_create(*args, btf_fd=btf_fd, btf_types=types)
            except bpf_syscall.BpfError:
                pass  # a kernel that takes the BTF but not these types for this map: make it without
        if fd is None:
            fd = bpf_maps.map_create(*args)
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
    LPM trie), which plan.rules_in_place_obstacle() checks the plan for. stats_fd: the telemetry
    map, whose slots reset with their hit counters."""
    fresh = current_rules is None
    wanted = rule_entries([(rule, slot) for slot, rule in enumerate(desired_rules)])
    held = rule_entries(current_rules or [])
    if not fresh:
        held_slots = {slot: rule.dest for rule, slot in current_rules}
        zero = [rto_program.HIT_VALUE.pack(0)] * len(bpf_maps.possible_cpus())
        for slot, rule in enumerate(desired_rules):
            if held_slots.get(slot) != rule.dest:  # this slot's counter now counts another rule
                key = rto_program.HIT_KEY.pack(slot)
                undo.push(
                    bpf_maps.percpu_update,
                    hits_fd,
                    key,
                    bpf_maps.percpu_lookup(hits_fd, key, rto_program.HIT_VALUE.size),
                )
                bpf_maps.percpu_update(hits_fd, key, zero)
                if stats_fd is not None:
                    _reset_stats(stats_fd, key, undo)
                fault.point("hit_counter_reset")
    changed = [key for key in wanted if key in held and held[key] != wanted[key]]
    added = [key for key in wanted if key not in held]
    for key in changed + added:
        if not fresh:
            undo.push(_restore_rule, rules_fd, key, held.get(key))
        bpf_maps.map_update(rules_fd, key, wanted[key])
        fault.point("first_rule_written" if fresh else "first_rule_updated")
    return [(key, held[key]) for key in held if key not in wanted]


def _reset_stats(stats_fd, key, undo):
    """Zero a slot's telemetry (issue 13) on every CPU; undo puts the old counts back."""
    undo.push(
        bpf_maps.percpu_update,
        stats_fd,
        key,
        bpf_maps.percpu_lookup(stats_fd, key, rto_program.STATS_VALUE.size),
    )
    bpf_maps.percpu_update(stats_fd, key, [bytes(rto_program.STATS_VALUE.size)] * len(bpf_maps.possible_cpus()))


def _restore_rule(rules_fd, key, value):
    """Put back what the rules map held for key (None: nothing)."""
    if value is None:
        bpf_maps.map_delete(rules_fd, key)
    else:
        bpf_maps.map_update(rules_fd, key, value)


def delete_rules(rules_fd, stale, undo):
    """Remove the (key, value) entries write_rules() returned; undo puts them back."""
    for key, value in stale:
        undo.push(bpf_maps.map_update, rules_fd, key, value)
        bpf_maps.map_delete(rules_fd, key)
        fault.point("first_rule_deleted")


def write_config(config_fd, desired, undo=None):
    """The default and the direction; undo (for the live map) records the value it held."""
    key = rto_program.CONFIG_KEY.pack(0)
    if undo is not None:
        undo.push(
            bpf_maps.map_update,
            config_fd,
            key,
            bpf_maps.map_lookup(config_fd, key, rto_program.CONFIG_VALUE.size),
        )
    bpf_maps.map_update(
        config_fd,
        key,
        rto_program.encode_config(
            desired.default_jiffies,
            rto_program.DIRECTIONS[desired.direction],
            desired.default_syn_retries,
            desired.default_auto,
            desired.auto_config(),
        ),
    )


def write_meta(meta_fd, desired, undo=None):
    """The instance record; undo (for the live map) records the one it held."""
    value = pins.meta_value(desired)
    key = rto_program.CONFIG_KEY.pack(0)
    if undo is not None:
        undo.push(bpf_maps.map_update, meta_fd, key, bpf_maps.map_lookup(meta_fd, key, pins.META_VALUE_SIZE))
    bpf_maps.map_update(meta_fd, key, value)


# The verifier's verdict is at the end of a log that can fill the 16 MiB buffer.
VERIFIER_LOG_TAIL_LINES = 30


def load_program(obj, map_fds, btf_fd=None):
    insns = obj.instructions(map_fds)
    if btf_fd is not None:
        try:
            return bpf_syscall.prog_load(
                uapi.BPF_PROG_TYPE_SOCK_OPS,
                insns,
                obj.license,
                rto_program.PROGRAM_NAME,
                btf_fd=btf_fd,
                func_info=obj.btf.func_info,
                line_info=obj.btf.line_info,
                verifier_log=False,
            )
        except bpf_syscall.BpfError:
            pass  # the kernel may refuse the func or line info: load without; a bad program fails again below
    try:
        return bpf_syscall.prog_load(uapi.BPF_PROG_TYPE_SOCK_OPS, insns, obj.license, rto_program.PROGRAM_NAME)
    except bpf_syscall.BpfError as exc:
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
