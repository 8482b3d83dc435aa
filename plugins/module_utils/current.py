# Copyright: netbpf.tcp_rto contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the kernel holds for an instance, read from its pins, with the heuristics that adopt a
program or an attachment whose pin or record was deleted. Read-only. Plain stdlib."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
from typing import List

from ansible_collections.netbpf.tcp_rto.plugins.module_utils import (
    bpf_info,
    bpf_maps,
    bpf_syscall,
    cgroups,
    coexistence,
    desired,
    learned,
    pins,
    rto_program,
    telemetry,
)


class Current:
    """What the kernel holds for one instance, read from its pins. Owns the fds it opened.

    expected_cgroup (the desired one) lets it find its program when a pin was deleted: a program
    still attached but unpinned is adopted (prog_adopted) so that the repair replaces it instead
    of leaving it attached next to a new one.

    link_info False (a kernel before 5.8, see features.py): the link's info is not read; a pinned
    link counts as attaching the program while BPF_PROG_QUERY finds it on the recorded cgroup."""

    def __init__(self, instance_dir, expected_cgroup=None, link_info=True):
        self.instance_dir = instance_dir
        self.expected_cgroup = expected_cgroup
        self.reads_link_info = link_info
        self.missing_pins = []
        self.maps_of_newer_object = []  # contract maps the instance's program never had: an earlier object's
        self.prog_adopted = False
        self.meta_adopted = False
        self.exists = os.path.isdir(instance_dir)
        self.maps = {}
        self.map_ids = {}
        self.prog_fd = self.link_fd = None
        self.prog_info = self.link_info = None
        self.meta = None
        self.meta_problem = None
        self.rules = []  # [(Rule, hit_slot)]
        self.default_jiffies = None
        self.default_syn_retries = None
        self.default_auto = False
        self.auto_config = None  # rto_program.AUTO_CONFIG_FIELDS values, None: no auto rule or default
        self.learned_info = None  # bpf_info.MapInfo of the pinned learned map (its size: auto_table_size)
        self.directions = None
        self.attached = False
        self.leftovers = []  # new_<name> pins of a run killed before it renamed them into place
        self.own_entries = []  # entries of instance_dir that are the instance's pins
        self.unknown_entries = []  # entries of instance_dir the module did not make: never touched
        # The program of a run killed between its BPF_PROG_ATTACH and its commit (its new_prog pin),
        # and the cgroups it is attached to: such an attachment belongs to the cgroup and outlives the run.
        self.interrupted_prog_fd = self.interrupted_prog_id = None
        self.interrupted_cgroups = []
        if self.exists:
            self._read()

    def _read(self):
        entries = os.listdir(self.instance_dir)
        own = set(pins.instance_pin_names())
        self.own_entries = sorted(entry for entry in entries if entry in own)
        self.unknown_entries = sorted(entry for entry in entries if entry not in own)
        self.leftovers = [entry for entry in self.own_entries if entry.startswith(pins.NEW_PIN_PREFIX)]
        for name in [*list(rto_program.MAP_CONTRACT), pins.META_MAP]:
            fd = pins.open_pin(os.path.join(self.instance_dir, name))
            if fd is not None:
                self.maps[name] = fd
                self.map_ids[name] = bpf_info.map_info(fd).id
        self.prog_fd = pins.open_pin(os.path.join(self.instance_dir, pins.PROG_PIN))
        if self.prog_fd is not None:
            self.prog_info = bpf_info.prog_info(self.prog_fd)
        self.link_fd = pins.open_pin(os.path.join(self.instance_dir, pins.LINK_PIN))
        if self.link_fd is not None and self.reads_link_info:
            self.link_info = bpf_info.link_info(self.link_fd)
        self._read_meta()
        self.missing_pins = [
            name for name in [pins.PROG_PIN, *list(rto_program.MAP_CONTRACT), pins.META_MAP] if not self._pinned(name)
        ]
        if self._program_uses_exactly_the_pinned_maps():
            self.maps_of_newer_object = [name for name in self.missing_pins if name in rto_program.MAP_CONTRACT]
            self.missing_pins = [name for name in self.missing_pins if name not in self.maps_of_newer_object]
        if self.prog_fd is None:
            self._adopt_unpinned_program()
        if self.meta is None and self.prog_info is not None:
            self._adopt_attachment()
        self._read_maps()
        self.attached = self._is_attached()
        self._read_interrupted()

    def _program_uses_exactly_the_pinned_maps(self):
        """The pinned program's maps are all pinned, and no others: a contract map without a pin was
        never the program's (an instance an earlier release applied), not a pin deleted since."""
        if self.prog_info is None or self.meta is None:
            return False
        pinned = {self.map_ids[name] for name in rto_program.MAP_CONTRACT if name in self.map_ids}
        return bool(pinned) and set(self.prog_info.map_ids) == pinned

    def _pinned(self, name):
        if name == pins.PROG_PIN:
            return self.prog_fd is not None
        return name in self.maps

    def _adopt_unpinned_program(self):
        """The program of a deleted prog pin, found through the link or, attached with multi, by the
        pinned maps it uses."""
        prog_id = None
        if self.link_info is not None and self.link_info.prog_id:
            prog_id = self.link_info.prog_id
        elif self.cgroup and os.path.isdir(self.cgroup):
            own_maps = {self.map_ids[name] for name in rto_program.MAP_CONTRACT if name in self.map_ids}
            for candidate in coexistence.attached_program_ids(self.cgroup)[1]:
                try:
                    with bpf_syscall.closing_fd(bpf_info.prog_get_fd_by_id(candidate)) as fd:
                        if own_maps and own_maps <= set(bpf_info.prog_info(fd).map_ids):
                            prog_id = candidate
                            break
                except bpf_syscall.BpfError:
                    continue
        if prog_id is not None:
            try:
                self.prog_fd = bpf_info.prog_get_fd_by_id(prog_id)
            except bpf_syscall.BpfError:
                return
            self.prog_info = bpf_info.prog_info(self.prog_fd)
            self.prog_adopted = True

    def _adopt_attachment(self):
        """Without the meta record, the program counts as attached where it is found on the expected
        cgroup, so that the repair replaces it in place."""
        cgroup = self.expected_cgroup
        if not cgroup or not os.path.isdir(cgroup):
            return
        mode = None
        if self.link_info is not None and self.link_info.cgroup_id == cgroups.cgroup_id(cgroup):
            mode = desired.ATTACH_LINK
        elif self.prog_info.id in coexistence.attached_program_ids(cgroup)[1]:
            mode = (
                desired.ATTACH_LINK if self.link_fd is not None and not self.reads_link_info else desired.ATTACH_MULTI
            )
        if mode:
            self.meta = {"format": pins.META_FORMAT, "cgroup": cgroup, "attach_mode": mode, "object_sha256": None}
            self.meta_adopted = True

    def _read_meta(self):
        self.meta, self.meta_problem = pins.read_meta(self.maps.get(pins.META_MAP))

    def _read_maps(self):
        if rto_program.CONFIG_MAP in self.maps:
            value = bpf_maps.map_lookup(
                self.maps[rto_program.CONFIG_MAP], rto_program.CONFIG_KEY.pack(0), rto_program.CONFIG_VALUE.size
            )
            (
                self.default_jiffies,
                self.directions,
                self.default_syn_retries,
                self.default_auto,
                self.auto_config,
            ) = rto_program.decode_config(value)
        if rto_program.LEARNED_MAP in self.maps:
            self.learned_info = bpf_info.map_info(self.maps[rto_program.LEARNED_MAP])
        if rto_program.RULES_MAP in self.maps:
            fd = self.maps[rto_program.RULES_MAP]
            mapped_slots = pins.mapped_slots((self.meta or {}).get(pins.META_IPV6_MAPPED))
            for key in bpf_maps.map_keys(fd, rto_program.RULE_KEY.size):
                value = bpf_maps.map_lookup(fd, key, rto_program.RULE_VALUE.size)
                if value is not None:
                    jiffies, slot, syn_retries, auto = rto_program.decode_rule_value(value)
                    dest = rto_program.decode_rule_key(key, mapped_as_ipv6=slot in mapped_slots)
                    self.rules.append((desired.Rule(dest, jiffies, syn_retries, auto), slot))
            self.rules.sort(key=lambda pair: pair[1])

    def _read_interrupted(self):
        """The new_prog pin's program where it is attached: on the cgroup the record pinned beside it
        (new_meta) names, the recorded one, or the expected one."""
        prog_fd = pins.open_pin(os.path.join(self.instance_dir, pins.NEW_PIN_PREFIX + pins.PROG_PIN))
        if prog_fd is None:
            return
        meta = pins.read_meta_pin(os.path.join(self.instance_dir, pins.NEW_PIN_PREFIX + pins.META_MAP))
        prog_id = bpf_info.prog_info(prog_fd).id
        for cgroup in [meta["cgroup"] if meta else None, self.cgroup, self.expected_cgroup]:
            if (
                cgroup
                and cgroup not in self.interrupted_cgroups
                and os.path.isdir(cgroup)
                and prog_id in coexistence.attached_program_ids(cgroup)[1]
            ):
                self.interrupted_cgroups.append(cgroup)
        if self.interrupted_cgroups:
            self.interrupted_prog_fd, self.interrupted_prog_id = prog_fd, prog_id
        else:
            os.close(prog_fd)

    @property
    def of_earlier_object(self):
        """Intact as an earlier object made it, which lacked maps the contract now has: its next
        apply is an upgrade (new maps and program), not a repair."""
        return bool(self.maps_of_newer_object) and not self.missing_pins and self.meta_problem is None

    @property
    def program_intact(self):
        """Program, maps and meta all pinned, and the program uses exactly the pinned maps."""
        if self.prog_info is None or self.meta is None or self.missing_pins or self.maps_of_newer_object:
            return False
        if any(name not in self.maps for name in rto_program.MAP_CONTRACT):
            return False
        return set(self.prog_info.map_ids) == {self.map_ids[name] for name in rto_program.MAP_CONTRACT}

    def carried_maps(self, table_size):
        """The pinned maps (rto_program.CARRIED_MAPS) a new program can use as they are: those with
        the contract's layout, the learned map with table_size entries."""
        if self.meta is None or self.meta_problem is not None:
            return ()
        carried = []
        for name in rto_program.CARRIED_MAPS:
            if name not in self.maps:
                continue
            info = self.learned_info if name == rto_program.LEARNED_MAP else bpf_info.map_info(self.maps[name])
            map_type, key_size, value_size, max_entries, _flags = rto_program.MAP_CONTRACT[name]
            if name == rto_program.LEARNED_MAP:
                max_entries = table_size
            if (info.type, info.key_size, info.value_size, info.max_entries) == (
                map_type,
                key_size,
                value_size,
                max_entries,
            ):
                carried.append(name)
        return tuple(carried)

    @property
    def cgroup(self):
        return self.meta["cgroup"] if self.meta else None

    @property
    def attach_mode(self):
        return self.meta["attach_mode"] if self.meta else None

    def _is_attached(self):
        if self.prog_info is None or self.meta is None or not os.path.isdir(self.cgroup):
            return False
        if self.attach_mode == desired.ATTACH_LINK and self.reads_link_info:
            return (
                self.link_info is not None
                and self.link_info.prog_id == self.prog_info.id
                and self.link_info.cgroup_id == cgroups.cgroup_id(self.cgroup)
            )
        if self.attach_mode == desired.ATTACH_LINK and self.link_fd is None:
            return False
        return self.prog_info.id in coexistence.attached_program_ids(self.cgroup)[1]

    def hits(self):
        """Per rule slot (and DEFAULT_HIT_SLOT): connections answered, summed over CPUs."""
        fd = self.maps.get(rto_program.HITS_MAP)
        if fd is None:
            return {}
        slots = [slot for _rule, slot in self.rules] + [rto_program.DEFAULT_HIT_SLOT]
        return {
            slot: sum(
                rto_program.HIT_VALUE.unpack(value)[0]
                for value in bpf_maps.percpu_lookup(fd, rto_program.HIT_KEY.pack(slot), rto_program.HIT_VALUE.size)
            )
            for slot in slots
        }

    def telemetry(self):
        """Per rule slot (and DEFAULT_HIT_SLOT): telemetry.slot_telemetry() of each; {} when the
        instance has no stats map (applied by a release before telemetry, until its next apply)."""
        fd = self.maps.get(rto_program.STATS_MAP)
        if fd is None:
            return {}
        return telemetry.read_slots(fd, [slot for _rule, slot in self.rules] + [rto_program.DEFAULT_HIT_SLOT])

    def learned_hosts(self, limit=learned.SHOWN):
        """learned.top_hosts() of the instance's learned map; [] when no rule or default is auto or
        the instance has no learned map (applied by an earlier object)."""
        fd = self.maps.get(rto_program.LEARNED_MAP)
        held_rules = [rule for rule, _slot in self.rules]
        bound = learned.upper_bound(held_rules, self.default_jiffies, self.default_auto)
        if fd is None or not self.auto_config or bound is None:
            return []
        return learned.top_hosts(fd, self.auto_config, bound, limit)

    def close(self):
        for fd in [*list(self.maps.values()), self.prog_fd, self.link_fd, self.interrupted_prog_fd]:
            if fd is not None:
                os.close(fd)
        self.maps, self.prog_fd, self.link_fd, self.interrupted_prog_fd = {}, None, None, None


def instances_on_cgroup(pin_dir: str, cgroup: str, exclude: str) -> List[str]:
    """Names of other instances under pin_dir attached to cgroup (one instance per cgroup)."""
    found = []
    if not os.path.isdir(pin_dir):
        return found
    for name in sorted(os.listdir(pin_dir)):
        path = os.path.join(pin_dir, name)
        if name == exclude or not os.path.isdir(path):
            continue
        meta = pins.read_meta_pin(os.path.join(path, pins.META_MAP))  # the record alone says where it is attached
        if meta and meta["cgroup"] == cgroup:
            found.append(name)
    return found
